"""Speed benchmark: step time, peak memory and achieved GFLOP/s per method and IPC.

    python benchmarks/speed.py --methods dc dsa dm --ipc 1 10 --dataset mnist --steps 3
    python benchmarks/speed.py --methods dm --ipc 10 --procs 2 --no-flops       # two ranks under torchrun
    python benchmarks/speed.py --methods dc --ipc 50 --set outer_loop=1 --set real_chunk=64   # memory guard

Each (method, IPC) runs in its own process; peak memory is the peak RSS during the steps (sampled every 2 ms)
minus the RSS once the data and the method's one-off set-up are loaded, i.e. what the distillation steps add. FLOPs of one
step are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, forward and
backward). The reference implementation's step times on the same 2-core machine are quoted from the project
brief (VICO-UoE/DatasetCondensation with a one-line fix for current PyTorch): DM 2.2 s/step at MNIST IPC 10,
DC 5.7 s/step at MNIST IPC 1.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REFERENCE = {("dm", "mnist", 10): 2.2, ("dc", "mnist", 1): 5.7}


def _status_mb(key: str) -> float:
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
        import tempfile

        self.base = _status_mb("VmRSS")
        self._stop = Path(tempfile.mkdtemp()) / "stop"
        self._proc = subprocess.Popen([sys.executable, "-c", _POLLER, str(os.getpid()), str(self._stop)],
                                      stdout=subprocess.PIPE, text=True)
        time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.touch()
        out, _ = self._proc.communicate(timeout=30)
        self.peak = max(float(out.strip() or "nan"), _status_mb("VmRSS"))


def measure(method: str, dataset: str, ipc: int, steps: int, model: str, data_root: str | None,
            compile_: bool = False, config: dict | None = None, count_flops: bool = True) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import distill_apps as da
    from distill_apps.engine import make_distiller
    from distill_apps.runtime import generator

    real = da.load_dataset(dataset, data_root)
    cfg = dict(config or {}, **({"compile": True} if compile_ else {}))
    d = make_distiller(method, real, ipc, config=cfg or None, device="cpu", model=model)
    state = d.init(generator("init", 0))  # (MTT: trains or loads its experts here, outside the measurement)
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
    return {"method": method, "dataset": dataset, "ipc": ipc, "model": model, "step_s_median": round(med, 3),
            "step_s_all": [round(x, 3) for x in times], "gflop_per_step": round(flops / 1e9, 2),
            "gflops_per_s": round(flops / 1e9 / med, 1), "peak_rss_mb": round(peak, 1),
            "peak_above_data_mb": round(peak - base, 1), "threads": torch.get_num_threads(),
            "world_size": d.world_size, "config": config or {},
            "mallopt": os.environ.get("DISTILL_APPS_NO_MALLOPT") != "1", "compile": compile_,
            "reference_step_s": REFERENCE.get((method, dataset, ipc))}


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


def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument("--out", default="benchmarks/results/speed.json", help="results JSON (and .md)")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "IPC"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    configs = method_options(a.set, [a.one[0]] if a.one else a.methods)
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
             "| method | IPC | step (s) | reference (s) | GFLOP/step | GFLOP/s | peak RSS above data (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = r["reference_step_s"] if r["reference_step_s"] is not None else "-"
        lines.append(f"| {r['method']} | {r['ipc']} | {r['step_s_median']} | {ref} | {r['gflop_per_step']} | "
                     f"{r['gflops_per_s']} | {r.get('peak_above_data_mb_per_rank', r['peak_above_data_mb'])} |")
    Path(a.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
