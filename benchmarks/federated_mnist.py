"""MNIST, 10 clients, Dirichlet alpha 0.1 and 1.0: one-shot distilled vs distilled + FedAvg vs FedAvg.

A small CPU budget (see BUDGET); runs the ``federated`` recipe in Flower's simulation engine once per alpha and
writes ``benchmarks/results/federated_mnist.json``.

    DISTILL_APPS_DATA=/path/to/datasets python benchmarks/federated_mnist.py [--alphas 0.1 1.0] [--rounds 3]
"""
from __future__ import annotations

import argparse
import io
import json
import contextlib
import time
from pathlib import Path

BUDGET = ["--dataset", "mnist", "--clients", "10", "--ipc", "10", "--method", "dm", "--steps", "30",
          "--method-options", '{"batch_real": 64}', "--model", "convnet-d2-w32", "--local-steps", "20",
          "--server-epochs", "50"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "federated_mnist.json"))
    a = ap.parse_args()
    from distill_apps.recipes import federated_distilled as recipe

    results = {"budget": BUDGET + ["--rounds", str(a.rounds)], "runs": []}
    if Path(a.out).exists():  # keep the runs of other alphas measured earlier with the same budget
        old = json.loads(Path(a.out).read_text())
        if old.get("budget") == results["budget"]:
            results["runs"] = [r for r in old["runs"] if r.get("alpha") not in a.alphas]
    for alpha in a.alphas:
        argv = BUDGET + ["--alpha", str(alpha), "--rounds", str(a.rounds), "--out",
                         f"out/federated_mnist_alpha{alpha}", "--json"]
        buf = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            recipe.main(argv)
        run = json.loads(buf.getvalue())
        run["seconds"] = round(time.perf_counter() - t0, 1)
        run["command"] = "distill-apps recipe federated " + " ".join(
            f"'{x}'" if x.startswith("{") else x for x in argv)
        results["runs"].append(run)
        print(json.dumps({"alpha": alpha, "seconds": run["seconds"],
                          **{k: (v["accuracy"], v["bytes_total"]) for k, v in run["strategies"].items()}}))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
