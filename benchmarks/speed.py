"""Speed benchmark: step time, peak memory and achieved GFLOP/s per method and IPC, or ours vs a baseline.

    python benchmarks/speed.py --methods dc dsa dm --ipc 1 10 --dataset mnist --steps 3
    python benchmarks/speed.py --methods dm --ipc 10 --procs 2 --no-flops      # two ranks under torchrun
    python benchmarks/speed.py --methods dc --ipc 50 --set outer_loop=1 --set real_chunk=64   # memory guard
    python benchmarks/speed.py --methods dc dsa --ipc 1 10 --steps 3 --baseline <old checkout>  # side by side

**Alone** (no ``--baseline``): each (method, IPC) runs in its own process; peak memory is the peak RSS during the
steps (sampled every 2 ms) minus the RSS once the data and the method's one-off set-up are loaded, i.e. what the
distillation steps add. FLOPs of one step are counted with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matmuls, forward and backward), and the achieved GFLOP/s are set against this machine's matmul
rate, measured in the same process just before the steps (a 2048 x 2048 matmul in float32, and in bfloat16 where
autocast uses it: ``runtime.bf16_fast``), so "% of matmul" says how much of the machine a step uses.

**Side by side** (``--baseline PATH``): our step and the baseline's step are timed *in one run, alternating*
(round ``r`` runs ours then the baseline's for even ``r``, the other order for odd ``r``, after ``--warmup``
untimed steps each), each in its own worker process, so both see the same machine load; the table prints both medians and
the ratio baseline / ours (> 1: ours is faster). ``PATH`` is either

* a **directory**: a checkout of distill_apps (for example the previous commit: ``git worktree add <old checkout>
  HEAD~1``); it is run through ``benchmarks/baselines/distill_apps_step.py`` with ``PATH`` first on
  ``sys.path``, with ``--baseline-set`` options (default: the ``--set`` ones); or
* a **Python file** that offers the step to time (for example an adapter around a reference implementation's
  checkout; its folder is put on ``sys.path``)::

      def setup(method: str, dataset: str, ipc: int, model: str, options: dict, **kw) -> object:
          ...  # load data, build networks/optimisers: NOT timed; returns any state object
      def step(state) -> None:
          ...  # one outer iteration of the method: timed (perf_counter around the call)

  ``benchmarks/baselines/distill_apps_step.py`` is such a file (it is what our side runs).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ADAPTER = HERE / "baselines" / "distill_apps_step.py"


def _status_mb(key: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``RssFile``, ...) in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


_POLLER = """
import os, sys, time
path, page, peak = f"/proc/{sys.argv[1]}/statm", os.sysconf("SC_PAGE_SIZE"), 0
stop = sys.argv[2]
while not os.path.exists(stop):
    with open(path) as fh:
        peak = max(peak, int(fh.read().split()[1]) * page)
    time.sleep(0.002)
print(peak / 2**20, flush=True)
"""


class PeakRSS:
    """Peak resident memory of this process while the block runs, polled from /proc every 2 ms by a separate
    process (the kernel's VmHWM includes the dataset load, resetting it through clear_refs slowed later steps
    15x here, and a polling thread in this process slows GIL-bound steps)."""

    def __enter__(self) -> "PeakRSS":
        """Start polling this process's resident memory from a separate process."""
        import tempfile

        self.base = _status_mb("VmRSS")
        self._stop = Path(tempfile.mkdtemp()) / "stop"
        self._proc = subprocess.Popen([sys.executable, "-c", _POLLER, str(os.getpid()), str(self._stop)],
                                      stdout=subprocess.PIPE, text=True)
        time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        """Stop polling and record the peak."""
        self._stop.touch()
        out, _ = self._proc.communicate(timeout=30)
        self.peak = max(float(out.strip() or "nan"), _status_mb("VmRSS"))


def matmul_gflops(dtype_name: str = "float32", n: int = 2048, repeats: int = 3) -> float:
    """This machine's rate for an ``n x n`` matmul (best of ``repeats``), in GFLOP/s, as the step will see it
    (same process, same thread count, same moment)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def measure(method: str, dataset: str, ipc: int, steps: int, model: str, data_root: str | None,
            compile_: bool = False, config: dict | None = None, count_flops: bool = True) -> dict:
    """Time ``steps`` distillation steps (and count their FLOPs) for one method, dataset and IPC, with peak memory."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import distill_apps as da
    from distill_apps.engine import make_distiller
    from distill_apps.runtime import generator

    real = da.load_dataset(dataset, data_root)
    cfg = dict(config or {}, **({"compile": True} if compile_ else {}))
    d = make_distiller(method, real, ipc, config=cfg or None, device="cpu", model=model)
    state = d.init(generator("init", 0))  # (MTT: trains or loads its experts here, outside the measurement)
    from distill_apps.runtime import bf16_fast

    bf16 = bool(d.cfg.amp) and os.environ.get("DISTILL_APPS_FP32") != "1" and bf16_fast(d.device.type)
    rates = {"float32": matmul_gflops("float32")}
    if bf16:
        rates["bfloat16"] = matmul_gflops("bfloat16")
    with PeakRSS() as mem:
        d.step(state, generator("step", 0, 0))  # warm-up
        flops = float("nan")
        if count_flops:
            with FlopCounterMode(display=False) as fc:
                d.step(state, generator("step", 0, 1))
            flops = fc.get_total_flops()
        times = []
        for t in range(steps):
            t0 = time.perf_counter()
            d.step(state, generator("step", 0, 2 + t))
            times.append(time.perf_counter() - t0)
    base, peak = mem.base, mem.peak
    med = statistics.median(times)
    peak_rate = rates["bfloat16" if bf16 else "float32"]
    return {"method": method, "dataset": dataset, "ipc": ipc, "model": model, "step_s_median": round(med, 3),
            "step_s_all": [round(x, 3) for x in times], "gflop_per_step": round(flops / 1e9, 2),
            "gflops_per_s": round(flops / 1e9 / med, 1), "matmul_gflops": {k: round(v, 1) for k, v in rates.items()},
            "matmul_dtype": "bfloat16" if bf16 else "float32",
            "percent_of_matmul": round(100 * flops / 1e9 / med / peak_rate, 1),
            "peak_rss_mb": round(peak, 1), "peak_above_data_mb": round(peak - base, 1),
            "threads": torch.get_num_threads(), "world_size": d.world_size, "config": config or {},
            "mallopt": os.environ.get("DISTILL_APPS_NO_MALLOPT") != "1", "compile": compile_}


def run_one(method: str, ipc: int, a: argparse.Namespace, config: dict, procs: int = 1) -> dict:
    """One measurement in a fresh process (``procs=2``: two ranks under torchrun, one thread each)."""
    args = [__file__, "--one", method, str(ipc), "--dataset", a.dataset, "--model", a.model, "--steps",
            str(a.steps)] + (["--data-root", a.data_root] if a.data_root else []) \
        + (["--compile"] if a.compile else []) + (["--no-flops"] if a.no_flops or procs > 1 else []) \
        + [f"--set={k}={json.dumps(v)}" for k, v in config.items()]
    env = dict(os.environ)
    if procs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // procs))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
               "127.0.0.1", "--master_port", str(29400 + os.getpid() % 500)] + args
    else:
        cmd = [sys.executable] + args
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    row = rows[0]
    if procs > 1:  # the slowest rank sets the pace; memory is per process
        row["step_s_median"] = max(r["step_s_median"] for r in rows)
        row["peak_above_data_mb_per_rank"] = [r["peak_above_data_mb"] for r in rows]
    return row


# ---------------------------------------------------------------------- side by side
def worker_main(script: str, spec: dict) -> int:
    """A step server: ``setup(**spec)`` once, then one timed ``step`` per ``step`` line on stdin."""
    path = Path(script).resolve()
    sys.path.insert(0, str(path.parent))
    mod_spec = importlib.util.spec_from_file_location(f"speed_baseline_{path.stem}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    state = mod.setup(**spec)
    info = {k: v for k, v in state.items() if k in ("version", "path")} if isinstance(state, dict) else {}
    print(json.dumps({"ready": True, "info": info}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        mod.step(state)
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
    return 0


class Worker:
    """One side of a paired measurement, in its own process (``code`` first on its ``sys.path``)."""

    def __init__(self, script: Path, spec: dict, code: str | None) -> None:
        """Start a worker process running ``script`` with ``spec`` (``code`` first on its ``sys.path``)."""
        env = dict(os.environ)
        if code:
            env["PYTHONPATH"] = os.path.abspath(code) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(script), "--spec", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read().get("info", {})

    def _read(self) -> dict:
        """The worker's next JSON line (other output passes through)."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"speed worker exited (code {self.proc.wait()}); see its stderr above")
            if line.startswith("{"):
                return json.loads(line)

    def step(self) -> float:
        """Ask the worker for one timed step; returns its seconds."""
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self._read()["seconds"])

    def close(self) -> None:
        """Close the worker's input and wait for it to exit."""
        try:
            self.proc.stdin.close()
        finally:
            self.proc.wait(timeout=120)


def paired(method: str, ipc: int, a: argparse.Namespace, ours_cfg: dict, base_cfg: dict) -> dict:
    """Ours vs the baseline, alternating steps in one run (see the module docstring)."""
    spec = {"method": method, "dataset": a.dataset, "ipc": ipc, "model": a.model}
    base = Path(a.baseline)
    base_script, base_code = (ADAPTER, str(base)) if base.is_dir() else (base, None)
    ours = Worker(ADAPTER, {**spec, "options": ours_cfg}, str(HERE.parent))
    theirs = Worker(base_script, {**spec, "options": base_cfg}, base_code)
    try:
        for _ in range(a.warmup):  # lazy initialisation, allocator growth
            ours.step(), theirs.step()
        t_ours, t_base = [], []
        for r in range(a.steps):
            pair = [(ours, t_ours), (theirs, t_base)]
            for w, out in (pair if r % 2 == 0 else pair[::-1]):
                out.append(w.step())
    finally:
        ours.close()
        theirs.close()
    mo, mb = statistics.median(t_ours), statistics.median(t_base)
    return {"method": method, "dataset": a.dataset, "ipc": ipc, "model": a.model, "ours_s_median": round(mo, 3),
            "baseline_s_median": round(mb, 3), "ratio_baseline_over_ours": round(mb / mo, 3),
            "ours_s_all": [round(x, 3) for x in t_ours], "baseline_s_all": [round(x, 3) for x in t_base],
            "ours_options": ours_cfg, "baseline_options": base_cfg, "baseline": str(base),
            "ours_path": ours.info.get("path"), "baseline_path": theirs.info.get("path"),
            "threads": os.environ.get("OMP_NUM_THREADS")}


def main(argv: list[str] | None = None) -> int:
    """Command line: per-step time, FLOPs and memory per method and IPC, optionally side by side with a baseline."""
    from distill_apps.options import add_set_argument, make_parser, method_options

    ap = make_parser("python benchmarks/speed.py", __doc__)
    ap.add_argument("--methods", nargs="+", default=["dc", "dsa", "dm"], help="methods to measure")
    ap.add_argument("--ipc", nargs="+", type=int, default=[1, 10], help="images per class")
    ap.add_argument("--dataset", default="mnist", help="a registered image dataset")
    ap.add_argument("--model", default="convnet", help="distillation network")
    ap.add_argument("--steps", type=int, default=3, help="timed distillation steps")
    ap.add_argument("--data-root", default=None, help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the embedding pass (cfg.compile)")
    add_set_argument(ap)
    ap.add_argument("--procs", type=int, default=1, help="processes (torchrun, gloo) per measurement")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting step")
    ap.add_argument("--baseline", default=None, metavar="PATH",
                    help="time a baseline side by side: a distill_apps checkout (directory) or a step script (.py)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per side before the timed ones (--baseline)")
    ap.add_argument("--baseline-set", action="append", default=None, metavar="[METHOD.]KEY=VALUE",
                    help="options for the baseline checkout, in --set's syntax (default: the --set ones)")
    ap.add_argument("--out", default="benchmarks/results/speed.json", help="results JSON (and .md)")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "IPC"), help=argparse.SUPPRESS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker_main(a.worker, json.loads(a.spec))
    configs = method_options(a.set, [a.one[0]] if a.one else a.methods)
    if a.baseline:
        base_cfgs = method_options(a.baseline_set, a.methods) if a.baseline_set is not None else configs
        rows = []
        for m in a.methods:
            for ipc in a.ipc:
                rows.append(paired(m, ipc, a, configs[m], base_cfgs[m]))
                print(json.dumps(rows[-1]), flush=True)
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                Path(a.out).write_text(json.dumps(rows, indent=1))
        lines = [f"ours: {HERE.parent} {a.set or ''}; baseline: {a.baseline} {a.baseline_set or a.set or ''}; alternating steps in "
                 f"one run, {a.steps} timed each after {a.warmup} warm-up; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
                 "", "| method | IPC | ours (s/step) | baseline (s/step) | baseline / ours |", "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['ipc']} | {r['ours_s_median']} | {r['baseline_s_median']} | "
                  f"{r['ratio_baseline_over_ours']} |" for r in rows]
        Path(a.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    if a.one:
        row = measure(a.one[0], a.dataset, int(a.one[1]), a.steps, a.model, a.data_root, a.compile,
                      configs[a.one[0]], not a.no_flops)
        print(json.dumps(row), flush=True)
        return 0
    rows = []
    for m in a.methods:
        for ipc in a.ipc:
            row = run_one(m, ipc, a, configs[m], a.procs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    lines = [f"compile: {a.compile}; processes: {a.procs}; options: {a.set or '-'}", "",
             "| method | IPC | step (s) | GFLOP/step | GFLOP/s | matmul GFLOP/s (dtype) | % of matmul | "
             "peak RSS above data (MB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = r.get("matmul_gflops", {}).get(r.get("matmul_dtype"), "-")
        lines.append(f"| {r['method']} | {r['ipc']} | {r['step_s_median']} | {r['gflop_per_step']} | "
                     f"{r['gflops_per_s']} | {rate} ({r.get('matmul_dtype', '-')}) | {r.get('percent_of_matmul', '-')} | "
                     f"{r.get('peak_above_data_mb_per_rank', r['peak_above_data_mb'])} |")
    Path(a.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
