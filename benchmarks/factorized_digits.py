"""CAFE, IT-GAN, LinBa, HaBa, KFS on digits at IPC 1 and 10 (equal stored floats), small CPU budget.

    OMP_NUM_THREADS=1 python benchmarks/factorized_digits.py [--ipc 1 10] [--methods ...] [--runs 2]

Writes ``benchmarks/results/factorized_digits.json``. Budget per method is in STEPS/CONFIGS below; evaluation
is the standard train-from-scratch protocol with ``MODEL`` (DSA where the method distils with it).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import distill_apps as da
from distill_apps.options import make_parser
from distill_apps.evaluate import evaluate

MODEL = "convnet-d2-w32"
STEPS = {"random": 0, "cafe": 20, "itgan": 200, "linba": 40, "kfs": 200, "haba": 40}
CONFIGS = {
    "linba": {"unroll_steps": 40},
    "haba": {"num_experts": 4, "expert_train_epochs": 12, "max_start_epoch": 8, "syn_steps": 20, "lr_img": 100.0},
    "cafe": {"batch_real": 64},
}


def main() -> None:
    """Command line: distil digits with each factorised method at the same storage, evaluate, write JSON."""
    ap = make_parser("python benchmarks/factorized_digits.py", __doc__.splitlines()[0])
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10], help="images-worth of storage per class")
    ap.add_argument("--methods", nargs="+", default=list(STEPS), help="methods to run")
    ap.add_argument("--runs", type=int, default=2, help="evaluation runs")
    ap.add_argument("--epochs", type=int, default=300, help="evaluation epochs")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "factorized_digits.json"),
                    help="results JSON")
    a = ap.parse_args()
    real = da.load_dataset("digits")
    out = Path(a.out)
    rows = json.loads(out.read_text()) if out.is_file() else []
    for ipc in a.ipc:
        for m in a.methods:
            t0 = time.perf_counter()
            s = da.distill(m, real, ipc, steps=STEPS[m], model=MODEL, config=CONFIGS.get(m), progress=False)
            t_distill = time.perf_counter() - t0
            res = evaluate(s, real, model=MODEL, runs=a.runs, epochs=a.epochs, device="cpu")
            row = {"method": m, "ipc": ipc, "steps": STEPS[m], "config": CONFIGS.get(m, {}), "model": MODEL,
                   "stored_floats": s.storage_floats(), "budget_floats": ipc * 10 * 64,
                   "decoded_images": len(s.materialize().y), "acc_mean": res.accuracy_mean,
                   "acc_std": res.accuracy_std, "eval_epochs": res.epochs, "eval_augment": res.augment,
                   "runs": a.runs, "distill_seconds": round(t_distill, 1)}
            print(json.dumps(row), flush=True)
            rows = [r for r in rows if not (r["method"] == m and r["ipc"] == ipc)] + [row]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
