"""DD / KIP / RFAD / FRePO at a small CPU budget, evaluated under both protocols (train and krr).

    OMP_NUM_THREADS=1 python benchmarks/meta_accuracy.py --dataset digits --ipc 1 10 --budget quick

Writes ``benchmarks/results/meta_accuracy_<dataset>.json`` (one row per method x IPC x protocol). The
"train" protocol trains ConvNet-3 from scratch (``--epochs``, ``--runs``); "krr" is kernel ridge regression with
the kernel the method distilled with (DD: the random-feature ConvNet NNGP). Numbers at this budget are far
below the papers' (which run thousands of steps on GPUs): they check the plumbing, not the state of the art.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import distill_apps as da
from distill_apps.options import make_parser


def main(argv: list[str] | None = None) -> int:
    """Command line: DD, KIP, RFAD and FRePO at each IPC, evaluated with the train and KRR protocols, JSON."""
    ap = make_parser("python benchmarks/meta_accuracy.py", __doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", help="a registered image dataset")
    ap.add_argument("--methods", nargs="+", default=["dd", "kip", "rfad", "frepo"], help="methods to run")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10], help="images per class")
    ap.add_argument("--budget", default="quick", choices=["quick", "paper"], help="distillation preset")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (default: the --budget preset)")
    ap.add_argument("--runs", type=int, default=2, help="evaluation runs")
    ap.add_argument("--epochs", type=int, default=300, help="evaluation epochs")
    ap.add_argument("--out", default=None, help="results JSON (default results/meta_accuracy_<dataset>.json)")
    args = ap.parse_args(argv)
    real = da.load_dataset(args.dataset)
    out = Path(args.out or Path(__file__).parent / "results" / f"meta_accuracy_{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for ipc in args.ipc:
        for method in args.methods:
            t0 = time.perf_counter()
            s = da.distill(method, real, ipc=ipc, steps=args.steps, budget=args.budget, progress=False)
            secs = time.perf_counter() - t0
            for protocol in ("train", "krr"):
                kw = {"epochs": args.epochs} if protocol == "train" else {}
                r = da.evaluate(s, real, protocol=protocol, runs=args.runs, **kw)
                row = {"method": method, "ipc": ipc, "steps": s.meta["steps"], "distill_seconds": secs,
                       **r.as_dict()}
                rows.append(row)
                print(f"{method:5s} ipc {ipc:2d} steps {s.meta['steps']:4d} ({secs:6.1f} s)  {r}  {r.extra}",
                      flush=True)
            out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
