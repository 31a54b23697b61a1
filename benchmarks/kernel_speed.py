"""RFAD vs KIP: wall-clock time of one outer step at the same support size (and FLOPs, which load cannot skew).

    OMP_NUM_THREADS=1 python benchmarks/kernel_speed.py --dataset digits --ipc 1 10 --repeats 3

Writes ``benchmarks/results/kernel_speed.json``. Both methods use their default configs unless ``--set`` changes
them (e.g. ``--set kip.kernel_model=convnet-d2 --set rfad.n_models=4 --set batch_real=64``); the time is the
median of ``--repeats`` steps after one warm-up step.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import distill_apps as da
from distill_apps.engine import make_distiller
from distill_apps.options import add_set_argument, make_parser, method_options
from distill_apps.runtime import generator


def measure(method: str, real, ipc: int, cfg: dict, repeats: int) -> dict:
    """Seconds and GFLOP per step of a kernel method (after one warm-up step)."""
    d = make_distiller(method, real, ipc, cfg, "cpu", "convnet")
    st = d.init(generator("init", 0))
    d.step(st, generator("step", 0, 0))  # warm-up (torch.func tracing, allocator)
    times = []
    for t in range(repeats):
        t0 = time.perf_counter()
        d.step(st, generator("step", 0, t + 1))
        times.append(time.perf_counter() - t0)
    with FlopCounterMode(display=False) as fc:
        d.step(st, generator("step", 0, repeats + 1))
    return {"method": method, "ipc": ipc, "support": ipc * real.num_classes, "config": cfg,
            "step_seconds_median": statistics.median(times), "step_seconds": times,
            "gflops_per_step_matmul_conv": fc.get_total_flops() / 1e9}


def main(argv: list[str] | None = None) -> int:
    """Command line: time KIP and RFAD steps at each support size, written as JSON."""
    ap = make_parser("python benchmarks/kernel_speed.py", __doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", help="a registered image dataset")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10], help="images per class (support size / classes)")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    add_set_argument(ap)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kernel_speed.json"),
                    help="results JSON")
    args = ap.parse_args(argv)
    real = da.load_dataset(args.dataset)
    configs = method_options(args.set, ["kip", "rfad"])
    rows = []
    for ipc in args.ipc:
        for method, cfg in configs.items():
            r = measure(method, real, ipc, cfg, args.repeats)
            print(f"{method:5s} {args.dataset} support {r['support']:4d}: {r['step_seconds_median']:.3f} s/step, "
                  f"{r['gflops_per_step_matmul_conv']:.2f} GFLOP/step", flush=True)
            rows.append(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"dataset": args.dataset, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "note": "FLOPs count matmul/conv only (torch FlopCounterMode); Cholesky solves are not included"}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
