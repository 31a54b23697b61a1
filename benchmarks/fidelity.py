"""Fidelity benchmark: distil (method x dataset x IPC), evaluate with the field's protocol, compare with papers.

    python benchmarks/fidelity.py --methods random herding kcenter dc dsa dm --datasets mnist --ipc 1 10 \
        --budget quick --runs 3 --out benchmarks/results/fidelity_mnist_quick.json

``--budget quick`` uses each method's CPU-minutes preset (and 300 evaluation epochs); ``--budget paper`` the
paper's iteration count and the full protocol (1000 epochs with DSA augmentation). ``--steps`` overrides both.
Results are appended to the JSON file after every cell (a killed run keeps what it measured) and rendered as a
markdown table next to the papers' figures.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import distill_apps as da
from distill_apps.options import add_set_argument, make_parser, method_options

# Published test accuracy (%) with ConvNet-3; (method, dataset, ipc) -> figure. Sources: DC (Zhao et al. 2021,
# Table 1: random/herding/k-center/DC), DSA (Zhao & Bilen 2021), DM (Zhao & Bilen 2023), IDC (Kim et al. 2022),
# MTT (Cazenavette et al. 2022), TESLA (Cui et al. 2023), KIP (Nguyen et al. 2021), FRePO (Zhou et al. 2022),
# DD (Wang et al. 2018), CAFE (Wang et al. 2022), HaBa (Liu et al. 2022), LinBa (Deng & Russakovsky 2022).
PAPER = {
    ("random", "mnist", 1): 64.9, ("random", "mnist", 10): 95.1, ("random", "mnist", 50): 97.9,
    ("herding", "mnist", 1): 89.2, ("herding", "mnist", 10): 93.7, ("herding", "mnist", 50): 94.8,
    ("kcenter", "mnist", 1): 89.3, ("kcenter", "mnist", 10): 84.4, ("kcenter", "mnist", 50): 97.4,
    ("dc", "mnist", 1): 91.7, ("dc", "mnist", 10): 97.4, ("dc", "mnist", 50): 98.8,
    ("dsa", "mnist", 1): 88.7, ("dsa", "mnist", 10): 97.8, ("dsa", "mnist", 50): 99.2,
    ("dm", "mnist", 1): 89.7, ("dm", "mnist", 10): 97.5, ("dm", "mnist", 50): 98.6,
    ("idc", "mnist", 1): 94.2, ("idc", "mnist", 10): 98.4,
    ("random", "cifar10", 1): 14.4, ("random", "cifar10", 10): 26.0, ("dc", "cifar10", 1): 28.3,
    ("dc", "cifar10", 10): 44.9, ("dsa", "cifar10", 1): 28.8, ("dsa", "cifar10", 10): 52.1,
    ("dm", "cifar10", 1): 26.0, ("dm", "cifar10", 10): 48.9, ("mtt", "cifar10", 1): 46.3,
    ("mtt", "cifar10", 10): 65.3, ("tesla", "cifar10", 1): 48.5, ("tesla", "cifar10", 10): 66.4,
    ("kip", "cifar10", 1): 49.9, ("kip", "cifar10", 10): 62.7, ("frepo", "cifar10", 1): 46.8,
    ("frepo", "cifar10", 10): 65.5, ("dd", "cifar10", 10): 36.8, ("cafe", "cifar10", 1): 30.3,
    ("cafe", "cifar10", 10): 46.3, ("haba", "cifar10", 1): 48.3, ("haba", "cifar10", 10): 69.9,
    ("linba", "cifar10", 1): 66.4, ("linba", "cifar10", 10): 71.2,
}


def run_cell(method: str, dataset: da.RealData, ipc: int, a: argparse.Namespace) -> list[dict]:
    """Distil once, evaluate under every requested protocol; one row per protocol."""
    t0 = time.perf_counter()
    s = da.distill(method, dataset, ipc, steps=a.steps, budget=a.budget, seed=a.seed, device=a.device,
                   progress=not a.quiet, time_limit=a.time_limit, config=a.configs.get(method) or None)
    t_distill = time.perf_counter() - t0
    epochs = a.epochs if a.epochs is not None else (300 if a.budget == "quick" else None)
    rows = []
    for protocol in a.protocols:
        if protocol == "schedule" and "inner_lrs" not in s.meta:
            continue  # DD's own protocol applies to summaries with a learned schedule only
        res = da.evaluate(s, dataset, runs=a.runs, epochs=epochs, device=a.device, model=a.model, protocol=protocol)
        rows.append({"method": method, "dataset": dataset.name, "ipc": ipc, "budget": a.budget,
                     "steps": s.meta["steps"], "time_limit": a.time_limit, "distill_seconds": round(t_distill, 1),
                     "eval_seconds": round(res.seconds, 1), "accuracy_mean": 100 * res.accuracy_mean,
                     "accuracy_std": 100 * res.accuracy_std, "accuracies": [100 * v for v in res.accuracies],
                     "runs": res.runs, "epochs": res.epochs, "augment": res.augment, "protocol": res.protocol,
                     "model": res.model, "storage_floats": s.storage_floats(),
                     "paper": PAPER.get((method, dataset.name, ipc))})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| method | dataset | IPC | steps | protocol | ours (%) | paper (%) | distill s | eval |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = "-" if r["paper"] is None else f"{r['paper']:.1f}"
        ev = f"{r['runs']} runs" + (f" × {r['epochs']} ep" if r.get("protocol", "train") == "train" else "")
        lines.append(f"| {r['method']} | {r['dataset']} | {r['ipc']} | {r['steps']} | {r.get('protocol', 'train')} | "
                     f"{r['accuracy_mean']:.1f} ± {r['accuracy_std']:.1f} | {paper} | {r['distill_seconds']} | "
                     f"{ev}{' +DSA' if r['augment'] else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = make_parser("python benchmarks/fidelity.py", __doc__)
    ap.add_argument("--methods", nargs="+", default=["random", "herding", "kcenter", "dc", "dsa", "dm"],
                    help="methods to distil with")
    ap.add_argument("--datasets", nargs="+", default=["digits"], help="registered image datasets")
    ap.add_argument("--ipc", nargs="+", type=int, default=[1, 10], help="images per class")
    ap.add_argument("--budget", choices=("quick", "paper"), default="quick", help="distillation/evaluation preset")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (default: the --budget preset)")
    ap.add_argument("--runs", type=int, default=3, help="evaluation runs")
    ap.add_argument("--epochs", type=int, default=None, help="evaluation epochs (default: 300 quick, paper's)")
    ap.add_argument("--model", default="convnet", help="evaluation network")
    ap.add_argument("--seed", type=int, default=0, help="seed of distillation and evaluation")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--data-root", default=None, help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop each distillation after this many seconds (a CPU budget); the row records the steps")
    ap.add_argument("--protocols", nargs="+", default=["train"], help="train, krr (kernel methods), schedule (DD)")
    add_set_argument(ap)
    ap.add_argument("--out", default="benchmarks/results/fidelity.json", help="results JSON (appended cell by cell)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    a.configs = method_options(a.set, a.methods)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = json.loads(out.read_text()) if out.exists() else []
    done = {(r["method"], r["dataset"], r["ipc"]) for r in rows}
    for name in a.datasets:
        real = da.load_dataset(name, a.data_root)
        for ipc in a.ipc:
            for m in a.methods:
                if (m, real.name, ipc) in done:
                    continue
                for row in run_cell(m, real, ipc, a):
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                out.write_text(json.dumps(rows, indent=1))
                out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
