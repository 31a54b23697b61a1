"""Time to accuracy: each image method run for growing wall-clock budgets, test accuracy against distillation time,
with the time to train its teacher (SRe2L, RDED, soft-label random subset) or expert trajectories (MTT, TESLA,
HaBa) counted and shown separately.

    OMP_NUM_THREADS=1 python benchmarks/time_to_accuracy.py --dataset mnist --ipc 10 \
        --methods random dm dsa mtt sre2l rded --budgets 30 120 480 --out benchmarks/results/time_to_accuracy_mnist.json

Budgets are CPU seconds of the (single-threaded, ``OMP_NUM_THREADS=1``) process, not wall-clock seconds: on a
shared machine the wall clock measures the other jobs too. Each iterative method is calibrated once (CPU time of
its set-up and of one step, from runs of 1 and 3 or 11 steps) and run for the number of steps that fits each budget,
so schedules (SRe2L's cosine) end where the budget ends; the row records the CPU and wall seconds the run
actually took. RDED, which does not iterate, grows its candidate pool instead (``--rded-mipc``); random subsets
are one point. Students: each method's own protocol (``train``
with the method's augmentation for hard-label methods; ``softlabel`` for the teacher-based ones, and for the
random subset once more), ``--epochs`` epochs, ``--runs`` runs. Teachers and experts are trained once before the
budgets (cached) and their training CPU time is stored with each row (``prep_seconds``); a cached artefact keeps
the time measured when it was made (teachers record it; experts: the time this script measured into its JSON).

Writes the rows to ``--out`` (JSON) and their plot next to it (``.png``), both after every point; a rerun skips
the points already there, so an interrupted run resumes. ``benchmarks/budget_table.py`` turns the JSON into the
README's "which method for which budget" table. Any dataset ``load_dataset`` reads works (e.g.
``imagefolder:cifar10-jpg``).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import distill_apps as da
from distill_apps.compare import copy_label

TEACHER_METHODS = ("sre2l", "rded")
EXPERT_METHODS = ("mtt", "tesla", "haba")


def _expert_prep(real, method: str, model: str, seed: int, cfg: dict[str, Any], rows: list[dict]
                 ) -> tuple[float | None, str]:
    """Train (or find) the experts ``method`` will read; returns (their training seconds when known, folder)."""
    from distill_apps.config import make_config
    from distill_apps.engine import METHODS
    from distill_apps.experts import ExpertConfig, get_or_train_experts

    c = make_config(METHODS.get(method).Config, cfg, method)
    ec = ExpertConfig(num_experts=c.num_experts, epochs=c.expert_train_epochs, lr=c.expert_lr,
                      batch_size=c.expert_batch, augment="dsa" if c.dsa else None)
    buf = get_or_train_experts(real, model, config=ec, seed=seed, cache_dir=c.expert_dir or None, eager=False,
                               progress=False)
    if not buf.missing():
        known = [r["prep_seconds"] for r in rows if r.get("prep_key") == str(buf.folder) and r.get("prep_seconds")]
        return (known[0] if known else None), str(buf.folder)
    t0 = time.process_time()
    get_or_train_experts(real, model, config=ec, seed=seed, cache_dir=c.expert_dir or None, eager=True)
    return time.process_time() - t0, str(buf.folder)


def calibrate(method: str, real, ipc: int, cfg: dict[str, Any], seed: int, model: str) -> tuple[float, float]:
    """CPU seconds of ``method``'s set-up and of one step, from a run of 1 step and one of 3 (11 when a step is
    cheap, so timer noise does not swamp the difference); no set-up is assumed when the difference is not positive.
    """
    def run(n: int) -> float:
        c0 = time.process_time()
        da.distill(method, real, ipc, steps=n, config=cfg or None, seed=seed, model=model, progress=False)
        return time.process_time() - c0

    t1 = run(1)
    n = 3 if t1 > 10 else 11
    tn = run(n)
    per = (tn - t1) / (n - 1)
    if per <= 0:
        return 0.0, tn / n
    return max(t1 - per, 0.0), per


def plot(rows: list[dict], path: Path, title: str) -> Path:
    """Plot accuracy against wall-clock seconds, one line per method and protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['method']} ({r['protocol']})", []).append(r)
    for i, (name, rs) in enumerate(sorted(groups.items())):
        rs = sorted(rs, key=lambda r: r["distill_seconds"])
        color = f"C{i % 10}"
        xs = [max(r["distill_seconds"], 0.1) for r in rs]
        ys = [100 * r["accuracy"] for r in rs]
        ax.plot(xs, ys, "o-", color=color, label=name)
        if any(r.get("prep_seconds") for r in rs):
            xt = [x + (r.get("prep_seconds") or 0) for x, r in zip(xs, rs)]
            ax.plot(xt, ys, "o--", color=color, mfc="none", alpha=0.7,
                    label=f"{name} + {rs[0]['prep_kind']} training")
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds (filled: distillation only; hollow, dashed: + teacher / expert training)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: each method at growing CPU-time budgets, evaluated; JSON and plot written after each cell."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--methods", nargs="+", default=["random", "dm", "dsa", "mtt", "sre2l", "rded"])
    ap.add_argument("--budgets", type=float, nargs="+", default=[30, 120, 480], help="distillation CPU seconds")
    ap.add_argument("--rded-mipc", type=int, nargs="+", default=[30, 100, 300], help="RDED candidate pools")
    ap.add_argument("--teacher-model", default="convnet-bn")
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--expert-set", action="append", default=[], metavar="KEY=VALUE",
                    help="options for the expert methods (e.g. num_experts=2 expert_train_epochs=3)")
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--epochs", type=int, default=300, help="student epochs")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/time_to_accuracy.json")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from teacher_methods import machine

    real = da.load_dataset(a.dataset, a.data_root)
    out = Path(a.out)
    rows: list[dict] = json.loads(out.read_text()) if out.exists() else []
    expert_cfg = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.expert_set)}
    teacher, teacher_cpu = None, None
    if any(m in TEACHER_METHODS for m in a.methods) or "random" in a.methods:
        teacher = da.train_teacher(real, a.teacher_model, epochs=a.teacher_epochs, seed=a.seed,
                                   progress=not a.quiet)
        teacher_cpu = teacher.train_cpu_seconds if teacher.train_cpu_seconds is not None else teacher.train_seconds

    def record(row: dict) -> None:
        """Replace or add one result row and rewrite the JSON."""
        nonlocal rows
        key = ("method", "protocol", "dataset", "ipc", "budget")
        rows = [r for r in rows if tuple(r.get(k) for k in key) != tuple(row.get(k) for k in key)]
        rows.append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
        plot([r for r in rows if r["dataset"] == real.name and r["ipc"] == a.ipc], out.with_suffix(".png"),
             f"{copy_label(real.name)}, IPC {a.ipc}: accuracy against CPU time ({a.model} students)")
        print(json.dumps({k: row[k] for k in ("method", "protocol", "budget", "steps", "distill_seconds",
                                              "prep_seconds", "accuracy")}), flush=True)

    for method in a.methods:
        protocols = ["train", "softlabel"] if method == "random" else (
            ["softlabel"] if method in TEACHER_METHODS else ["train"])
        cfg: dict[str, Any] = {}
        prep, prep_kind, prep_key = None, None, None
        if method in TEACHER_METHODS:
            cfg["teacher"] = str(teacher.path)
            prep, prep_kind, prep_key = teacher_cpu, "teacher", str(teacher.path)
        if method in EXPERT_METHODS:
            cfg.update(expert_cfg)
            (prep, prep_key), prep_kind = _expert_prep(real, method, a.model, a.seed, cfg, rows), "expert"
        points: list[tuple[Any, dict[str, Any]]]
        if method == "random":
            points = [(0, {})]
        elif method == "rded":
            points = [(m, {"mipc": m}) for m in a.rded_mipc]
        else:
            points = [(b, {}) for b in a.budgets]
        have = {(r["method"], r["protocol"], r["budget"]) for r in rows
                if (r["dataset"], r["ipc"]) == (real.name, a.ipc)}
        points = [(b, e) for b, e in points if any((method, p, b) not in have for p in protocols)]  # resume
        setup = per_step = None
        if points and method not in ("random", "rded"):
            setup, per_step = calibrate(method, real, a.ipc, cfg, a.seed, a.model)
        for budget, extra in points:
            c = {**cfg, **extra}
            steps = None if per_step is None else max(1, int((float(budget) - setup) / per_step))
            t0, c0 = time.perf_counter(), time.process_time()
            s = da.distill(method, real, a.ipc, steps=steps, seed=a.seed, model=a.model, config=c or None,
                           progress=not a.quiet)
            t_distill, c_distill = time.perf_counter() - t0, time.process_time() - c0
            for protocol in protocols:
                kw = {"teacher": teacher} if protocol == "softlabel" else {}
                res = da.evaluate(s, real, protocol=protocol, model=a.model, runs=a.runs, epochs=a.epochs,
                                  seed=a.seed, **kw)
                soft_prep = protocol == "softlabel" and method == "random"
                record({"method": method, "protocol": protocol, "dataset": real.name, "ipc": a.ipc,
                        "budget": budget, "steps": s.meta.get("steps"), "distill_seconds": round(c_distill, 1),
                        "distill_wall_seconds": round(t_distill, 1), "load_average": os.getloadavg(),
                        "prep_seconds": teacher_cpu if soft_prep else prep,
                        "prep_kind": "teacher" if soft_prep else prep_kind,
                        "prep_key": str(teacher.path) if soft_prep else prep_key,
                        "accuracy": res.accuracy_mean, "accuracy_std": res.accuracy_std,
                        "eval_seconds": round(res.seconds, 1), "epochs": res.epochs, "augment": res.augment,
                        "runs": a.runs, "model": a.model, "machine": machine(),
                        "config": {k: v for k, v in c.items() if k != "teacher"},
                        "teacher": teacher.reference() if (soft_prep or method in TEACHER_METHODS) else None})
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
