"""The engine's loop: determinism, exact resume, refused checkpoints, NaN handling, disk-full and SIGTERM safety."""
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import distill_apps as da
from distill_apps import safe_io
from distill_apps.errors import CheckpointMismatchError, DistillError, NonFiniteError, SummaryFormatError

SMALL = dict(model="convnet-d2-w16", progress=False)


def test_same_seed_same_summary_bit_for_bit(digits):
    a = da.distill("dm", digits, 2, steps=3, seed=7, **SMALL)
    b = da.distill("dm", digits, 2, steps=3, seed=7, **SMALL)
    c = da.distill("dm", digits, 2, steps=3, seed=8, **SMALL)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


@pytest.mark.parametrize("method,ipc", [("dm", 2), ("dc", 1)])
def test_resume_equals_uninterrupted(digits, tmp_path, method, ipc):
    full = da.distill(method, digits, ipc, steps=6, seed=1, **SMALL)
    path = tmp_path / "run.ckpt"
    da.distill(method, digits, ipc, steps=6, seed=1, checkpoint=path, checkpoint_every=1, time_limit=0, **SMALL)
    assert path.exists()  # stopped after one step with a checkpoint
    for stop in (3, 6):  # resume twice, as after two crashes
        out = da.distill(method, digits, ipc, steps=stop, seed=1, checkpoint=path, checkpoint_every=1, resume=True,
                         **SMALL)
    assert out.meta["steps"] == 6
    assert torch.equal(out.x, full.x)


def test_mismatched_and_corrupt_checkpoints_refused(digits, tmp_path):
    path = tmp_path / "run.ckpt"
    da.distill("dm", digits, 2, steps=2, seed=1, checkpoint=path, checkpoint_every=1, **SMALL)
    with pytest.raises(CheckpointMismatchError, match="method"):
        da.distill("dc", digits, 2, steps=3, seed=1, checkpoint=path, checkpoint_every=1, resume=True, **SMALL)
    with pytest.raises(CheckpointMismatchError, match="seed"):
        da.distill("dm", digits, 2, steps=3, seed=2, checkpoint=path, checkpoint_every=1, resume=True, **SMALL)
    with pytest.raises(CheckpointMismatchError, match="config_fingerprint"):
        da.distill("dm", digits, 2, steps=3, seed=1, checkpoint=path, checkpoint_every=1, resume=True,
                   config={"lr_img": 0.5}, **SMALL)
    # the last two checkpoints are kept: a damaged newest one falls back to the previous, with a warning
    prev = path.with_name(path.name + ".prev")
    assert prev.exists()
    for p in (path, prev):
        raw = bytearray(p.read_bytes())
        raw[-3] ^= 0xFF
        p.write_bytes(bytes(raw))
    with pytest.raises(SummaryFormatError, match="checksum"):  # both damaged: refused
        da.distill("dm", digits, 2, steps=3, seed=1, checkpoint=path, checkpoint_every=1, resume=True, **SMALL)


def test_nan_gradients_skipped_then_stopped(digits, monkeypatch):
    from distill_apps.methods import distribution

    calls = {"n": 0}
    real_loss = distribution.mean_embedding_distance

    def sometimes_nan(er, es):
        calls["n"] += 1
        loss = real_loss(er, es)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(distribution, "mean_embedding_distance", sometimes_nan)
    s = da.distill("dm", digits, 2, steps=4, **SMALL)
    assert s.meta["skipped_steps"] == 1 and torch.isfinite(s.x).all()

    monkeypatch.setattr(distribution, "mean_embedding_distance", lambda er, es: real_loss(er, es) * float("inf"))
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        da.distill("dm", digits, 2, steps=40, **SMALL)


def test_disk_full_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "s.safetensors"
    target.write_bytes(b"old")
    import safetensors.torch as st

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(DistillError, match="No space left"):
        safe_io.write(target, {"a": torch.zeros(2)}, {}, "summary", 1)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temp file left behind


def test_sigterm_during_checkpoint_write_leaves_valid_file(tmp_path):
    """A process killed while writing checkpoints in a loop never leaves a half-written file under the name."""
    path = tmp_path / "c.safetensors"
    code = textwrap.dedent(f"""
        import torch, sys
        from distill_apps import safe_io
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        i = 0
        while True:
            safe_io.write({str(path)!r}, {{"w": torch.full((2_000_000,), float(i))}}, {{"i": i}}, "checkpoint", 1)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    import time

    deadline = time.time() + 60
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    tensors, header = safe_io.read(path, "checkpoint", 1)
    assert torch.all(tensors["w"] == header["i"])


def test_unknown_method_and_bad_config(digits):
    with pytest.raises(DistillError, match="Known methods"):
        da.distill("nosuch", digits, 1)
    with pytest.raises(DistillError, match="Known options"):
        da.distill("dm", digits, 1, config={"bogus": 1})
    with pytest.raises(DistillError, match="only"):
        da.distill("dm", digits, 1000)
