"""Reliability: kill -9 and resume, 2-process torch.distributed against 1 process, the memory guard."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import distill_apps as da
from distill_apps import safe_io
from distill_apps.errors import MemoryBudgetError
from distill_apps.summary import SyntheticSet

ARGS = ["--method", "dm", "--ipc", "2", "--steps", "14", "--model", "convnet-d2-w16", "--seed", "5", "--no-eval",
        "--no-progress", "--checkpoint-every", "1"]


def _cli(out, *extra):
    return [sys.executable, "-m", "distill_apps.cli", "distill", *ARGS, "--out", str(out), *extra]


# a child that SIGKILLs itself at an exact point: inside the os.replace of its N-th checkpoint write (the temp file
# written and fsynced, not yet renamed) or inside the optimiser update of step N (after the checkpoint of step N
# exists), so the trials land mid-write and mid-step every time, with no sleeps
_KILLER = textwrap.dedent("""
    import os, signal, sys
    from distill_apps import engine
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "write":
        real, seen = os.replace, [0]
        def replace(src, dst, *a, **k):
            if str(src).endswith(".tmp") and str(dst).endswith(".ckpt"):
                seen[0] += 1
                if seen[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst, *a, **k)
        os.replace = replace
    else:
        real_update = engine.Distiller.update
        def update(self, state, loss, opt="syn"):
            if state.step == n:
                out = sys.argv[sys.argv.index("--out") + 1]
                assert os.path.exists(out.rsplit(".", 1)[0] + ".ckpt")  # the checkpoint of step n is there
                os.kill(os.getpid(), signal.SIGKILL)
            return real_update(self, state, loss, opt)
        engine.Distiller.update = update
    from distill_apps.cli import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.slow
def test_kill9_mid_write_mid_step_and_on_checkpoint_then_resume_is_bit_identical(tmp_path):
    ref = tmp_path / "ref.safetensors"
    subprocess.run(_cli(ref), check=True, timeout=300, capture_output=True)
    out = tmp_path / "run.safetensors"
    ckpt = out.with_suffix(".ckpt")
    # 1. killed inside the rename of its 3rd checkpoint: step 2 stays the newest, the temp file is left behind
    r = subprocess.run([sys.executable, "-c", _KILLER, "write", "3", *_cli(out, "--resume")[3:]], timeout=300,
                       capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert safe_io.read(ckpt, "checkpoint", 1)[1]["step"] == 2
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".run.ckpt.") and p.name.endswith(".tmp")]
    assert len(left) == 1
    # 2. resumed, then killed inside the update of step 6 (steps 3..6 checkpointed)
    r = subprocess.run([sys.executable, "-c", _KILLER, "step", "6", *_cli(out, "--resume")[3:]], timeout=300,
                       capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert not left[0].exists()  # the dead writer's temp file was removed by the next write
    assert safe_io.read(ckpt, "checkpoint", 1)[1]["step"] == 6
    # 3. resumed, killed from outside as soon as a new checkpoint appears (synchronised on the file, no sleep)
    def stamp():
        try:
            return ckpt.stat().st_mtime_ns
        except FileNotFoundError:  # between the two renames of a save
            return None

    before = stamp()
    proc = subprocess.Popen(_cli(out, "--resume"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and stamp() == before and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert safe_io.read(ckpt, "checkpoint", 1)[1]["step"] >= 7
    # 4. finished: the same summary, bit for bit, as the uninterrupted run
    subprocess.run(_cli(out, "--resume"), check=True, timeout=300, capture_output=True)
    a, b = SyntheticSet.load(ref), SyntheticSet.load(out)
    assert b.meta["steps"] == 14 and torch.equal(a.x, b.x)


def _torchrun(method, ipc, out, steps, config=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(29500 + random.Random(str(out)).randrange(2000)), "-m", "distill_apps.cli",
           "distill", "--method", method, "--ipc", str(ipc), "--steps", str(steps), "--model", "convnet-d2-w16",
           "--seed", "2", "--no-eval", "--no-progress", "--device", "cpu", "--out", str(out)]
    for k, v in (config or {}).items():
        cmd += ["--set", f"{k}={v}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("method,ipc", [("dm", 2), ("dc", 2), ("mtt", 2)])
def test_two_processes_match_one(tmp_path, digits, method, ipc):
    """DC/DM shard classes across ranks; MTT splits every student step's minibatch (all-reduce in the unroll)."""
    steps = 4
    config = None
    if method == "mtt":  # experts trained once by the single run, then read from disk by both ranks
        config = {"num_experts": 1, "expert_train_epochs": 2, "max_start_epoch": 1, "syn_steps": 3,
                  "expert_dir": str(tmp_path / "experts"), "lr_img": 100.0, "dsa": False}
    # the ranks run with one thread each (OMP_NUM_THREADS=1): pin the reference to one thread too, since a
    # 2-thread reduction order alone moves DC's result by ~6e-4 (the tolerance below is for rank sharding)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = da.distill(method, digits, ipc, steps=steps, seed=2, model="convnet-d2-w16", device="cpu",
                            progress=False, config=config)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / f"{method}.safetensors"
    _torchrun(method, ipc, out, steps, config)
    multi = SyntheticSet.load(out)
    assert not torch.equal(single.x, da.distill(method, digits, ipc, steps=0, seed=2, progress=False,
                                                model="convnet-d2-w16", config=config).x)
    torch.testing.assert_close(multi.x, single.x, atol=1e-4, rtol=1e-4)
    if method == "mtt":
        assert multi.lr == pytest.approx(single.lr, rel=1e-4)


def test_memory_guard_stops_with_advice_and_checkpoint(digits, tmp_path):
    ck = tmp_path / "g.ckpt"
    with pytest.raises(MemoryBudgetError, match="lower --ipc"):
        da.distill("dm", digits, 2, steps=5, model="convnet-d2-w16", progress=False, max_memory_gb=0.001,
                   checkpoint=ck, checkpoint_every=100)
    assert ck.exists()  # the state is saved before stopping, so the run can resume elsewhere


def test_out_of_memory_becomes_clear_error(digits, monkeypatch):
    from distill_apps.methods import distribution

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB")

    monkeypatch.setattr(distribution, "mean_embedding_distance", boom)
    with pytest.raises(MemoryBudgetError, match="batch_real"):
        da.distill("dm", digits, 2, steps=2, model="convnet-d2-w16", progress=False)


# ---------------------------------------------------------------------- issue 22: faults a hostile user found
MODEL = "convnet-d2-w16"


@pytest.fixture
def small_fs(tmp_path):
    """``make(size, ro=False)``: a real size-limited file system (tmpfs); skips where mounting is not allowed."""
    import shutil

    mounts = []

    def make(size: str = "256k", ro: bool = False):
        if shutil.which("mount") is None:
            pytest.skip("no mount command: the real full-disk/read-only cases need a small tmpfs")
        d = tmp_path / f"fs{len(mounts)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if ro else ""), "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'needs root'}); the real "
                        "full-disk and read-only cases need one")
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _fill(folder):
    """Fill the file system of ``folder`` to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_real_full_disk_keeps_old_files_and_rescues_the_result(small_fs, tmp_path, monkeypatch, digits):
    from distill_apps import outputs
    from distill_apps.errors import DistillError

    fs = small_fs("256k")
    target = fs / "s.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(DistillError, match="disk is full"):  # safetensors raises SafetensorError here, not OSError
        safe_io.write(target, {"a": torch.zeros(200_000)}, {}, "summary", 1)
    assert target.read_bytes() == b"old" and sorted(p.name for p in fs.iterdir()) == ["s.safetensors"]

    # a run whose disk fills up: the checkpoint write fails cleanly, the last good one stays, resume finishes
    full = da.distill("dm", digits, 2, steps=4, seed=2, model=MODEL, progress=False)
    ck = fs / "run.ckpt"

    def fill_after_two(step, metrics, state):  # callbacks run before the step's checkpoint is saved
        if step == 2:
            _fill(fs)

    with pytest.raises(DistillError, match="disk is full"):
        da.distill("dm", digits, 2, steps=4, seed=2, model=MODEL, progress=False, checkpoint=ck, checkpoint_every=1,
                   callbacks=(fill_after_two,))
    assert safe_io.read(ck, "checkpoint", 1)[1]["step"] == 1  # step 2's save found the disk full
    assert not [p for p in fs.iterdir() if p.name.endswith(".tmp")]
    (fs / "filler").unlink()
    done = da.distill("dm", digits, 2, steps=4, seed=2, model=MODEL, progress=False, checkpoint=ck,
                      checkpoint_every=1, resume=True)
    assert torch.equal(done.x, full.x)

    # the final write fails: the summary goes to a fallback path that the message names, with how to finish
    monkeypatch.setenv("DISTILL_APPS_CACHE", str(tmp_path / "cache"))
    _fill(fs)
    with pytest.raises(DistillError) as err:
        outputs.save_or_rescue(done, fs / "big.safetensors", ck)
    msg = str(err.value)
    assert "disk is full" in msg and "--resume" in msg and not (fs / "big.safetensors").exists()
    rescued = next((tmp_path / "cache" / "rescued").iterdir())
    assert str(rescued) in msg and torch.equal(SyntheticSet.load(rescued).x, done.x)


def test_output_checked_before_distilling(small_fs, tmp_path, monkeypatch, capsys):
    from distill_apps import engine
    from distill_apps.cli import main

    monkeypatch.setattr(engine, "distill", lambda *a, **k: pytest.fail("distillation started"))
    base = ["distill", "--method", "dm", "--ipc", "2", "--steps", "1", "--model", MODEL, "--no-eval", "--no-progress"]
    ro = small_fs("64k", ro=True)
    assert main([*base, "--out", str(ro / "s.safetensors")]) == 2
    assert "not writable" in capsys.readouterr().err
    tiny = small_fs("64k")
    assert main([*base, "--out", str(tiny / "s.safetensors")]) == 2
    assert "MiB free" in capsys.readouterr().err
    for out, needle in ((tmp_path / "x.png", "PNG grid"), (tmp_path / "y.ckpt", "checkpoint"), (tmp_path, "folder")):
        assert main([*base, "--out", str(out)]) == 2
        assert needle in capsys.readouterr().err
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(b"a file the user made")
    assert main([*base, "--out", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_bytes() == b"a file the user made"


def test_checkpoints_never_overwritten_without_resume_and_two_are_kept(digits, tmp_path, recwarn):
    from distill_apps import checkpoint as ck_mod
    from distill_apps.errors import ConfigError, DistillWarning

    ck = tmp_path / "run.ckpt"
    prev = ck_mod.previous_path(ck)
    run = dict(model=MODEL, progress=False, checkpoint=ck, checkpoint_every=1, seed=1)
    da.distill("dm", digits, 1, steps=3, **run)
    assert safe_io.read(ck, "checkpoint", 1)[1]["step"] == 3 and safe_io.read(prev, "checkpoint", 1)[1]["step"] == 2
    before = ck.read_bytes()
    with pytest.raises(ConfigError, match="--resume.*--overwrite"):
        da.distill("dm", digits, 1, steps=1, **run)
    with pytest.raises(ConfigError, match="--resume.*--overwrite"):  # another run at the same path: same rule
        da.distill("dc", digits, 1, steps=1, **run)
    assert ck.read_bytes() == before
    da.distill("dm", digits, 1, steps=1, overwrite=True, **run)  # asked for: replaced, the old .prev removed
    assert safe_io.read(ck, "checkpoint", 1)[1]["step"] == 1 and not prev.exists()

    fresh = tmp_path / "none.ckpt"
    with pytest.warns(DistillWarning, match="starts from step 0"):
        da.distill("dm", digits, 1, steps=1, **{**run, "checkpoint": fresh}, resume=True)
    with pytest.raises(ConfigError, match="require"):
        da.distill("dm", digits, 1, steps=1, **{**run, "checkpoint": tmp_path / "absent.ckpt"}, resume="require")


def test_damaged_newest_checkpoint_falls_back_to_the_previous(digits, tmp_path):
    from distill_apps.errors import DistillWarning

    full = da.distill("dm", digits, 2, steps=4, seed=6, model=MODEL, progress=False)
    ck = tmp_path / "run.ckpt"
    da.distill("dm", digits, 2, steps=3, seed=6, model=MODEL, progress=False, checkpoint=ck, checkpoint_every=1)
    raw = bytearray(ck.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    ck.write_bytes(bytes(raw))
    with pytest.warns(DistillWarning, match="damaged.*previous one.*step 2"):
        out = da.distill("dm", digits, 2, steps=4, seed=6, model=MODEL, progress=False, checkpoint=ck,
                         checkpoint_every=1, resume=True)
    assert torch.equal(out.x, full.x) and ck.with_name("run.ckpt.damaged").exists()


def test_stale_temp_files_of_ours_are_removed_and_others_kept(tmp_path):
    target = tmp_path / "s.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    host = safe_io._host_tag()
    stale = tmp_path / f".s.safetensors.da-{host}-{pid}-0123abcd.tmp"
    live = tmp_path / f".s.safetensors.da-{host}-1-0123abcd.tmp"  # pid 1 runs: a write in progress, kept
    other_target = tmp_path / f".t.safetensors.da-{host}-{pid}-0123abcd.tmp"
    user = tmp_path / ".s.safetensors.notes.tmp"  # not our pattern
    legacy = tmp_path / ".s.safetensors.ab12cd_4.tmp"  # an older version's temp name: no pid, stale by age only
    for p in (stale, live, other_target, user, legacy):
        p.write_bytes(b"x")
    safe_io.write(target, {"a": torch.zeros(2)}, {}, "summary", 1)
    assert not stale.exists() and live.exists() and other_target.exists() and user.exists() and legacy.exists()
    old = time.time() - 2 * safe_io.STALE_AFTER_S
    for p in (live, legacy, user):
        os.utime(p, (old, old))  # a day-old one of ours is stale whatever its pid
    safe_io.write(target, {"a": torch.zeros(2)}, {}, "summary", 1)
    assert not live.exists() and not legacy.exists() and user.exists()


def test_files_are_written_readable_by_group_and_others(digits, tmp_path):
    old = os.umask(0o022)
    try:
        s = da.distill("dm", digits, 1, steps=1, model=MODEL, progress=False, checkpoint=tmp_path / "r.ckpt",
                       checkpoint_every=1)
        paths = [s.save(tmp_path / "s.safetensors"), s.image_grid(tmp_path / "s.png"),
                 safe_io.write_json(tmp_path / "r.json", {"a": 1}), tmp_path / "r.ckpt"]
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in paths} == {"0o644"}


def test_cpu_out_of_memory_exits_2_with_advice_and_a_checkpoint(tmp_path):
    """A CPU allocation failure (a RuntimeError from the allocator) under an address-space limit."""
    out = tmp_path / "oom.safetensors"
    code = textwrap.dedent("""
        import resource, sys
        from distill_apps.cli import main
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (768 << 20), resource.RLIM_INFINITY))
        sys.exit(main(sys.argv[1:]))
    """)
    # a ConvNet of width 8192 needs a 2.4 GB weight, built inside the first step; the limit leaves 768 MB
    r = subprocess.run([sys.executable, "-c", code, "distill", "--method", "dm", "--ipc", "1", "--steps", "2",
                        "--model", "convnet-d2-w8192", "--checkpoint-every", "1", "--no-eval", "--no-progress",
                        "--out", str(out)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "ran out of memory" in r.stderr and "can't allocate memory" in r.stderr
    assert "lower --ipc" in r.stderr and "--resume" in r.stderr
    tensors, header = safe_io.read(out.with_suffix(".ckpt"), "checkpoint", 1)
    assert header["step"] == 0 and torch.isfinite(tensors["param/x"]).all()


def _counting_memory(monkeypatch, trip_at=None):
    """Replace the memory reading: count the checks; report 1 PB from check ``trip_at`` on."""
    from distill_apps import memory

    calls = {"n": 0}

    def fake(device):
        calls["n"] += 1
        return 1e6 if trip_at is not None and calls["n"] >= trip_at else 0.0

    monkeypatch.setattr(memory, "current_gb", fake)
    return calls


TRAJ = {"num_experts": 1, "expert_train_epochs": 2, "max_start_epoch": 1, "syn_steps": 3, "dsa": False}


@pytest.mark.parametrize("method,config,inside", [
    ("dm", {}, 2), ("dc", {}, 10), ("dsa", {}, 10),  # DM: both embedding passes; DC/DSA: after every class
    ("mtt", TRAJ, 3), ("tesla", TRAJ, 6),  # every unroll step (TESLA: both passes)
])
def test_long_steps_check_memory_inside(digits, tmp_path, monkeypatch, method, config, inside):
    if method in ("mtt", "tesla"):
        config = {**config, "expert_dir": str(tmp_path / "experts")}
    d = da.engine.make_distiller(method, digits, 1, config, device="cpu", model=MODEL)
    calls = _counting_memory(monkeypatch)
    da.engine.run(d, 1, progress=False, max_memory_gb=1e5)
    assert calls["n"] == inside + 1  # + the check after the step


def test_memory_limit_inside_a_step_saves_the_last_completed_step_and_resume_is_exact(digits, tmp_path, monkeypatch):
    cfg = {"outer_loop": 2, "inner_loop": 1, "batch_real": 4}  # two image updates per step
    full = da.distill("dc", digits, 1, steps=2, seed=4, model=MODEL, progress=False, config=cfg)
    ck = tmp_path / "run.ckpt"
    per_step = 2 * 10 + 1  # about one check per class and outer loop, one after the step (the batched real
    # gradients add checks of their own, so which class trips varies; any check inside step 1 will do)
    _counting_memory(monkeypatch, trip_at=per_step + 15)  # step 1, after its first image update
    with pytest.raises(MemoryBudgetError, match=r"inside step 1 \(class \d+\).*saved in"):
        da.distill("dc", digits, 1, steps=2, seed=4, model=MODEL, progress=False, config=cfg, checkpoint=ck,
                   max_memory_gb=1.0)
    assert safe_io.read(ck, "checkpoint", 1)[1]["step"] == 1  # the state before the half-done step
    monkeypatch.undo()
    out = da.distill("dc", digits, 1, steps=2, seed=4, model=MODEL, progress=False, config=cfg, checkpoint=ck,
                     resume=True)
    assert torch.equal(out.x, full.x)


def test_guard_compares_memory_in_use_not_the_peak(digits):
    from distill_apps import memory

    memory.release_free_memory()
    base = memory.current_rss_gb()
    spike = torch.ones(400 * 2**20 // 4)  # 400 MB, touched
    assert memory.current_rss_gb() > base + 0.3
    del spike
    assert memory.peak_rss_gb() > base + 0.3  # the peak remembers the spike forever
    limit = base + 0.2
    assert memory.MemoryGuard(limit, torch.device("cpu")).over() is None  # memory in use is back under the limit
    s = da.distill("dm", digits, 1, steps=2, model=MODEL, progress=False, max_memory_gb=limit)
    assert s.meta["steps"] == 2
