"""Accuracy of dcc / idc / mtt / tesla (and a random-subset baseline) at a small CPU budget.

Each method distils the dataset at each IPC with the budget below, then ``distill_apps.evaluate`` trains fresh
ConvNet-3 models on the summary (``--runs`` runs, ``--epochs`` epochs, DSA where the method evaluates with it,
the learned lr for MTT/TESLA) and tests on the real test split. Writes
``benchmarks/results/gradient_trajectory_accuracy_<dataset>.json`` and prints a table.

    python benchmarks/gradient_trajectory_accuracy.py --dataset digits --ipc 1 10 --runs 3 --epochs 300

The budgets are far below the papers' (e.g. MTT: 5000 iterations and 100 experts of 50 epochs); they say what
the implementations do in CPU minutes, not what the methods reach.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import distill_apps as da
from distill_apps.options import add_set_argument, make_parser, method_options, split_list


def budgets(expert_dir: str) -> dict[str, tuple[dict[int, int], dict]]:
    """method -> (steps by ipc, config overrides)."""
    traj = {"num_experts": 5, "expert_train_epochs": 22, "expert_batch": 32, "syn_steps": 20,
            "expert_dir": expert_dir}
    return {
        "random": ({1: 0, 10: 0}, {}),
        "dcc": ({1: 50, 10: 10}, {}),
        "idc": ({1: 4, 10: 4}, {}),
        "mtt": ({1: 100, 10: 100}, dict(traj)),
        "tesla": ({1: 100, 10: 100}, dict(traj)),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: DCC, IDC, MTT and TESLA (and random) on one dataset at each IPC, evaluated and written as JSON."""
    ap = make_parser("python benchmarks/gradient_trajectory_accuracy.py", __doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits", help="a registered image dataset")
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10], help="images per class")
    ap.add_argument("--methods", nargs="+", default=["random", "dcc", "idc", "mtt", "tesla"], help="methods to run")
    add_set_argument(ap)
    ap.add_argument("--runs", type=int, default=3, help="evaluation runs")
    ap.add_argument("--epochs", type=int, default=300, help="evaluation epochs")
    ap.add_argument("--model", default="convnet", help="network for distillation and evaluation")
    ap.add_argument("--expert-dir", default=os.path.join(tempfile.gettempdir(), "distill_apps_bench_experts"),
                    help="expert trajectory cache (default: under the system temp folder)")
    ap.add_argument("--out", default="", help="results JSON (default results/gradient_trajectory_accuracy_<data>)")
    a = ap.parse_args(argv)
    real = da.load_dataset(a.dataset)
    table = budgets(a.expert_dir)
    overrides = method_options(a.set, split_list(a.methods, "--methods"))
    rows = []
    for method in a.methods:
        steps_by_ipc, cfg = table[method]
        cfg = {**cfg, **overrides[method]}
        for ipc in a.ipc:
            t0 = time.perf_counter()
            s = da.distill(method, real, ipc=ipc, steps=steps_by_ipc[ipc], model=a.model, config=cfg, progress=False)
            t_distill = time.perf_counter() - t0
            res = da.evaluate(s, real, model=a.model, runs=a.runs, epochs=a.epochs)
            row = {"method": method, "ipc": ipc, "steps": steps_by_ipc[ipc], "config": cfg,
                   "accuracy_mean": res.accuracy_mean, "accuracy_std": res.accuracy_std,
                   "accuracies": res.accuracies, "eval_augment": res.augment, "eval_lr": res.lr,
                   "storage_floats": s.storage_floats(), "distill_seconds": t_distill, "eval_seconds": res.seconds}
            rows.append(row)
            print(f"{method:7s} ipc {ipc:3d}  {100 * res.accuracy_mean:6.2f} +- {100 * res.accuracy_std:5.2f} %  "
                  f"(steps {row['steps']}, distill {t_distill:.0f} s, eval {res.seconds:.0f} s, aug {res.augment}, "
                  f"lr {res.lr:.4g})", flush=True)
    out = Path(a.out or Path(__file__).parent / "results" / f"gradient_trajectory_accuracy_{a.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": a.dataset, "model": a.model, "runs": a.runs, "epochs": a.epochs,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
