"""Fidelity benchmark: distil (method x dataset x IPC), evaluate with the field's protocol, compare with papers.

    python benchmarks/fidelity.py --methods random herding kcenter dc dsa dm --datasets mnist --ipc 1 10 \
        --budget quick --runs 3 --out benchmarks/results/fidelity_mnist_quick.json

``--budget quick`` uses each method's CPU-minutes preset (and 300 evaluation epochs); ``--budget paper`` the
paper's iteration count and the full protocol (1000 epochs with DSA augmentation). ``--steps`` overrides both.
Results are appended to the JSON file after every cell (a killed run keeps what it measured) and rendered as a
markdown table next to the papers' figures.

CIFAR-10 from the image folder (issue 18), under the papers' evaluation protocol (ConvNet-3, 300 epochs, 1,000
with DSA augmentation for the methods distilled with DSA; ``--paper-eval``), labelled "CIFAR-10 (JPEG q75 copy)":

    OMP_NUM_THREADS=1 python benchmarks/fidelity.py --datasets imagefolder:cifar10-jpg --budget paper --paper-eval \
        --methods random herding dm dsa dc mtt idc --ipc 1 10 --runs 3 --steps-for dm:10=200 --steps-for dc:1=100 \
        --time-limit 900 --zca-methods mtt --set mtt.num_experts=2 --set mtt.expert_train_epochs=22 \
        --set mtt.eager_experts=true --set mtt.unroll_memory=adjoint \
        --out benchmarks/results/fidelity_cifar10_jpg.json

(cells with ``--steps-for`` run all their steps; the others stop after the step that passes ``--time-limit``
seconds; MTT's experts are trained before the clock starts and shared by both IPCs.)

``--estimate`` runs every cell for a few steps and two short evaluations instead, and prints the extrapolated wall
time of the full cell (distillation, expert training where a method needs it, and ``--runs`` evaluations).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import distill_apps as da
from distill_apps import compare
from distill_apps.compare import PAPER, dataset_label  # noqa: F401  (the published figures live in the package)
from distill_apps.options import add_set_argument, make_parser, method_options

def cell_options(method: str, ipc: int, a: argparse.Namespace) -> tuple[int | None, dict, float | None]:
    """Steps, method options and time limit of one cell: ``--steps-for m[:ipc]=N`` overrides ``--steps``
    (a cell with its own step count runs all of them; ``--time-limit`` is for the cells without one); options
    come from ``--set [METHOD.]KEY=VALUE``."""
    steps, config, limit = a.steps, dict(a.configs.get(method) or {}), a.time_limit
    for item in a.steps_for:
        key, _, n = item.partition("=")
        m, _, i = key.partition(":")
        if m == method and (not i or int(i) == ipc):
            steps, limit = int(n), None
    return steps, config, limit


def run_cell(method: str, dataset: da.RealData, ipc: int, a: argparse.Namespace) -> list[dict]:
    """Distil once, evaluate under every requested protocol; one row per protocol (:func:`compare.run_cell`)."""
    steps, config, limit = cell_options(method, ipc, a)
    return compare.run_cell(method, dataset, ipc, steps=steps, budget=a.budget, config=config, time_limit=limit,
                            runs=a.runs, epochs=a.epochs, model=a.model, protocols=a.protocols, seed=a.seed,
                            device=a.device, paper_eval=a.paper_eval, progress=not a.quiet)


def steps_within(planned: int, step_s: float, time_limit: float | None) -> int:
    """Steps a run makes: the engine checks the time limit after each step, so it stops after the first step that
    ends past the limit."""
    if time_limit is None or step_s <= 0:
        return planned
    return min(planned, math.floor(time_limit / step_s) + 1)


def expert_seconds(d, planned: int, probe_batches: int = 6) -> float:
    """Estimated wall time of the expert trajectories a trajectory method trains lazily during ``planned`` steps:
    the expected number of distinct experts sampled x their epochs x the time of one epoch (timed on a few
    minibatches)."""
    from distill_apps.augment import DSA
    from distill_apps.nets import build_model
    from distill_apps.runtime import generator
    from distill_apps.train import fit

    c, real = d.cfg, d.real
    g = generator("estimate-expert")
    net = build_model(d.model, real.image_shape[0], real.num_classes, real.image_shape[1:], generator=g,
                      device=d.device)
    dsa = DSA.for_dataset(real.flip_invariant) if c.dsa else None
    aug = (lambda xb, gg: dsa(xb, gg)) if dsa else None
    fit(net, real.view("train"), real.y_train, steps=1, batch_size=c.expert_batch, generator=g, augment=aug)
    t0 = time.perf_counter()
    fit(net, real.view("train"), real.y_train, steps=probe_batches, batch_size=c.expert_batch, generator=g, augment=aug)
    per_batch = (time.perf_counter() - t0) / probe_batches
    epoch = math.ceil(real.size("train") / c.expert_batch) * per_batch
    used = c.num_experts * (1 - (1 - 1 / c.num_experts) ** max(1, planned))  # distinct experts sampled
    return used * c.expert_train_epochs * epoch


def eval_timing(s: da.SyntheticSet, real: da.RealData, augment: str | None, a: argparse.Namespace,
                epochs: int = 5) -> tuple[float, float]:
    """Seconds per training epoch on the summary (the evaluation's fit: batch 256, DSA when the protocol uses it)
    and seconds of one test pass over the real test split."""
    from distill_apps.fit_summary import fresh_model
    from distill_apps.runtime import generator, pick_device

    dev = pick_device(a.device)
    data = da.data.data_for_summary(s, real)
    m = s.materialize()
    g = generator("estimate-eval")
    net = fresh_model(a.model, data, g, dev)
    kw = dict(lr=0.01, batch_size=256, generator=g, augment="dsa" if augment == "dsa" else None, data=data,
              training_data=m.training_data(dev))
    da.train_on_summary(m, net, epochs=1, **kw)  # warm-up
    t0 = time.perf_counter()
    da.train_on_summary(m, net, epochs=epochs, **kw)
    per_epoch = (time.perf_counter() - t0) / epochs
    t0 = time.perf_counter()
    da.score(net, data)
    return per_epoch, time.perf_counter() - t0


def estimate_cell(method: str, dataset: da.RealData, ipc: int, a: argparse.Namespace, probe_steps: int = 2) -> dict:
    """Time a few steps and two short evaluations of one cell; extrapolate the full cell's wall time."""
    from distill_apps.engine import make_distiller
    from distill_apps.runtime import generator

    key, label = dataset_label(dataset)
    steps, config, limit = cell_options(method, ipc, a)
    d = make_distiller(method, dataset, ipc, config or None, a.device, "convnet", a.seed)
    planned = steps if steps is not None else (d.cfg.steps if a.budget == "paper" else d.cfg.quick_steps)
    experts_s = 0.0
    if hasattr(d.cfg, "expert_train_epochs"):  # trajectory methods: expert training, then steps on small experts
        experts_s = expert_seconds(d, planned)
        _, max_start, _, _ = d.settings()
        small = dataset.subset(torch.cat([ix[:10] for ix in dataset.by_class]))
        config = {**config, "num_experts": 1, "expert_train_epochs": max_start - 1 + d.cfg.expert_epochs}
        d = make_distiller(method, small, ipc, config, a.device, "convnet", a.seed)
    t0 = time.perf_counter()
    state = d.init(generator("init", d.seed))
    t_init = time.perf_counter() - t0
    times = []
    for t in range(min(probe_steps, planned) if planned else 0):
        t1 = time.perf_counter()
        d.step(state, generator("step", d.seed, t))
        state.step += 1
        times.append(time.perf_counter() - t1)
    step_s = (sum(times[1:]) / len(times[1:])) if len(times) > 1 else (times[0] if times else 0.0)
    steps_run = steps_within(planned, step_s, limit)
    distill_s = t_init + steps_run * step_s + experts_s
    s = d.export(state)
    protocol_epochs = compare.eval_epochs(a.budget, a.epochs, a.paper_eval)
    augment = "dsa" if s.meta.get("eval_augment") == "dsa" else None
    epochs = protocol_epochs if protocol_epochs is not None else (1000 if augment == "dsa" else 300)
    per_epoch, test_pass = eval_timing(s, dataset, augment, a)
    eval_s = a.runs * (epochs * per_epoch + test_pass)
    return {"method": method, "dataset": label, "ipc": ipc, "planned_steps": planned,
            "steps_within_time_limit": steps_run, "init_seconds": round(t_init, 1),
            "step_seconds": round(step_s, 2), "probe_steps": len(times), "expert_seconds_est": round(experts_s, 1), "distill_seconds_est": round(distill_s, 1),
            "eval_epochs": epochs, "eval_augment": augment, "eval_epoch_seconds": round(per_epoch, 4),
            "eval_test_pass_seconds": round(test_pass, 1), "runs": a.runs, "eval_seconds_est": round(eval_s, 1),
            "cell_seconds_est": round(distill_s + eval_s, 1), "zca": dataset.transform is not None,
            "paper": PAPER.get((method, key, ipc))}


def markdown(rows: list[dict]) -> str:
    """The results table (:func:`compare.markdown`), or the estimates' table for ``--estimate`` rows."""
    if rows and "cell_seconds_est" in rows[0]:
        lines = ["| method | dataset | IPC | steps (planned / within limit) | s per step | distill s | eval epochs | "
                 "s per epoch | eval s (all runs) | cell s (est.) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {r['dataset']} | {r['ipc']} | {r['planned_steps']} / "
                         f"{r['steps_within_time_limit']} | {r['step_seconds']} | {r['distill_seconds_est']} | "
                         f"{r['eval_epochs']}{compare.augment_label(r['eval_augment'])} | {r['eval_epoch_seconds']} | "
                         f"{r['eval_seconds_est']} | {r['cell_seconds_est']} |")
        return "\n".join(lines) + "\n"
    return compare.markdown(rows)


def main(argv: list[str] | None = None) -> int:
    """Command line: distil every method x dataset x IPC cell and evaluate it under one protocol, JSON and markdown
    after each cell."""
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
    ap.add_argument("--steps-for", action="append", default=[], metavar="METHOD[:IPC]=N",
                    help="steps of one method (at one IPC), e.g. dm:10=200; overrides --steps")
    ap.add_argument("--paper-eval", action="store_true",
                    help="the papers' evaluation epochs (300; 1,000 with DSA augmentation) whatever the budget")
    ap.add_argument("--zca-methods", nargs="*", default=[],
                    help="methods distilled and evaluated on ZCA-whitened data (MTT, KIP, FRePO, RFAD on CIFAR)")
    ap.add_argument("--max-per-class", type=int, default=None, help="image folders: a seeded subset (smoke tests)")
    ap.add_argument("--estimate", action="store_true",
                    help="time a few steps and two short evaluations per cell and print each cell's estimated time")
    ap.add_argument("--probe-steps", type=int, default=2,
                    help="--estimate: steps timed per cell (the first is a warm-up when there are two or more)")
    ap.add_argument("--out", default="benchmarks/results/fidelity.json", help="results JSON (appended cell by cell)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    a.configs = method_options(a.set, a.methods)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = json.loads(out.read_text()) if out.exists() else []
    done = {(r["method"], r["dataset"], r["ipc"]) for r in rows}
    for name in a.datasets:
        opts = {"max_per_class": a.max_per_class} if a.max_per_class else {}
        real = da.load_dataset(name, a.data_root, **opts)
        white = None
        for ipc in a.ipc:
            for m in a.methods:
                data = real
                if m in a.zca_methods:
                    white = white or da.load_dataset(real, zca=True)
                    data = white
                if (m, dataset_label(real)[1], ipc) in done:
                    continue
                if a.estimate:
                    row = estimate_cell(m, data, ipc, a, a.probe_steps)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    out.write_text(json.dumps(rows, indent=1))
                    out.with_suffix(".md").write_text(markdown(rows))
                    continue
                for row in run_cell(m, data, ipc, a):
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                out.write_text(json.dumps(rows, indent=1))
                out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
