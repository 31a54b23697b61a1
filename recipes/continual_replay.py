"""Recipe: class-incremental learning with raw versus distilled replay memories (``distill-apps recipe continual``).

The same Split-<dataset> stream (Avalanche's ``class_incremental_benchmark``, seeded class order) is learned by an
Avalanche strategy with a replay memory of equal budget (``mem_per_class x num_classes`` images-worth) held by:
reservoir sampling, class-balanced random, herding (Avalanche's storage policies) and distilled summaries
(``DistilledBuffer`` with DM, DSA, or any registered image method). After every experience the learner is tested on
the whole test stream with Avalanche's evaluation plugin (per-experience accuracy, forgetting). The report holds a
markdown table (final average accuracy and average forgetting, mean +- std over seeds) and a PNG of the average
accuracy over the experiences seen so far; ``--json`` prints one JSON object.

Default (CPU minutes): Split-digits, 5 experiences, 10 images/class, 3 seeds. Full size, e.g.::

    distill-apps recipe continual --dataset mnist --mem-per-class 10 50 --seeds 0 1 2 --model convnet \\
        --steps -1 --budget paper --epochs 1 --batch-size 128 --device cuda
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import distill_apps as da
from distill_apps.errors import ConfigError
from distill_apps.options import add_set_argument, make_parser, method_options, split_list
from distill_apps.recipes.reporting import StageBar, figure_markdown, integer_ticks, pm, save_figure, write_file

#: the one line `distill-apps recipe --help` shows
SUMMARY = "class-incremental learning (Avalanche) with raw vs distilled replay memories of equal budget"

DEFAULT_MEMORIES = ("reservoir", "class_balanced", "herding", "dm", "dsa")
# with --budget quick, gradient matching runs a shortened loop schedule (the paper's is 10-50 outer rounds of
# 10-50 inner epochs per step, tens of CPU-minutes per experience); --budget paper uses the paper's schedule
QUICK_PRESETS: dict[str, dict[str, Any]] = {"dc": {"outer_loop": 3, "inner_loop": 3},
                                            "dsa": {"outer_loop": 3, "inner_loop": 3}}


def build_parser() -> argparse.ArgumentParser:
    """The recipe's options (``--help`` shows each default)."""
    ap = make_parser("distill-apps recipe continual", __doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits", help="digits (bundled), mnist, fashion_mnist, ...")
    ap.add_argument("--experiences", type=int, default=5, help="experiences of the class-incremental stream")
    ap.add_argument("--mem-per-class", type=int, nargs="+", default=[10],
                    help="memory budget in images per class of the whole stream (one run per value)")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_MEMORIES),
                    help="memories: reservoir, class_balanced, herding, or a registered distillation method")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one stream per seed")
    ap.add_argument("--steps", type=int, default=20,
                    help="distillation steps per experience (a CPU budget; -1: the --budget preset)")
    ap.add_argument("--budget", choices=("quick", "paper"), default="quick",
                    help="distillation iterations with --steps -1: quick (CPU preset) or paper (the paper's count)")
    add_set_argument(ap)
    ap.add_argument("--epochs", type=int, default=5, help="training epochs per experience")
    ap.add_argument("--model", default="convnet-d2-w32", help="learner and distillation network")
    ap.add_argument("--lr", type=float, default=0.01, help="learner's SGD learning rate")
    ap.add_argument("--batch-size", type=int, default=32, help="minibatch of current data (and of memory)")
    ap.add_argument("--strategy", choices=sorted(STRATEGIES), default="naive",
                    help="naive (Naive + ReplayPlugin) or er_ace")
    ap.add_argument("--train-per-class", type=int, default=None, help="subsample training images per class")
    ap.add_argument("--shrink", choices=("select", "redistill"), default="select",
                    help="how a distilled memory shrinks earlier classes when new ones arrive")
    ap.add_argument("--out", default=None, help="report folder (default out/continual_<dataset>)")
    ap.add_argument("--data-root", default=None, help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return ap


# ---------------------------------------------------------------------- strategies (a registry, not a branch)
def _naive(model, opt, memory, mem_size: int, a, evaluator):
    """Avalanche's Naive strategy with a replay plugin (DistilledReplayPlugin for a distilled memory, ReplayPlugin
    otherwise)."""
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.supervised import Naive

    from distill_apps.integrations.avalanche import DistilledBuffer, DistilledReplayPlugin

    if isinstance(memory, DistilledBuffer):
        plugin = DistilledReplayPlugin(mem_size, memory, batch_size_mem=a.batch_size)
    else:
        plugin = ReplayPlugin(mem_size=mem_size, batch_size_mem=a.batch_size, storage_policy=memory)
    return Naive(model=model, optimizer=opt, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=a.batch_size,
                 train_epochs=a.epochs, eval_mb_size=512, device=a.device, plugins=[plugin], evaluator=evaluator)


def _er_ace(model, opt, memory, mem_size: int, a, evaluator):
    """Avalanche's ER-ACE strategy (Caccia et al., ICLR 2022) with ``memory`` as its storage policy."""
    from avalanche.training.supervised import ER_ACE

    s = ER_ACE(model=model, optimizer=opt, mem_size=mem_size, batch_size_mem=a.batch_size, train_mb_size=a.batch_size,
               train_epochs=a.epochs, eval_mb_size=512, device=a.device, evaluator=evaluator)
    s.storage_policy = memory  # ER-ACE refreshes its storage policy before each experience
    return s


STRATEGIES: dict[str, Callable[..., Any]] = {"naive": _naive, "er_ace": _er_ace}


# ---------------------------------------------------------------------- one stream
def run_stream(memory_name: str, mem_per_class: int, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """Learn the seeded stream once with one memory; returns the accuracy matrix and Avalanche's summary metrics."""
    from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
    from avalanche.training.plugins import EvaluationPlugin

    from distill_apps.integrations.avalanche import make_memory, split_benchmark

    if a.strategy not in STRATEGIES:
        raise ConfigError(f"Unknown strategy {a.strategy!r}; known: {', '.join(STRATEGIES)}.")
    bm, real = split_benchmark(a.dataset, a.experiences, seed, a.data_root, train_per_class=a.train_per_class)
    # Avalanche's loaders and baselines draw from the global RNGs: seed them so every memory sees the same stream
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    c, h, w = real.image_shape
    model = da.build_model(a.model, c, real.num_classes, (h, w), generator=torch.Generator().manual_seed(seed))
    mem_size = mem_per_class * real.num_classes
    memory = make_memory(memory_name, mem_size, learner=model, steps=None if a.steps < 0 else a.steps,
                         budget=a.budget, model=a.model, config=a.method_config.get(memory_name),
                         device=a.device, seed=seed, shrink=a.shrink, num_classes=real.num_classes, mean=real.mean,
                         std=real.std, base_lr=a.lr)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                 forgetting_metrics(experience=True, stream=True), loggers=[])
    strategy = STRATEGIES[a.strategy](model, opt, memory, mem_size, a, evaluator)
    k = len(bm.train_stream)
    acc = [[float("nan")] * k for _ in range(k)]  # acc[i][j]: accuracy on experience j after training on i
    t0 = time.perf_counter()
    res: dict[str, Any] = {}
    for i, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        res = strategy.eval(bm.test_stream)
        for j in range(k):
            acc[i][j] = float(res[f"Top1_Acc_Exp/eval_phase/test_stream/Exp{j:03d}"])
    curve = [float(np.mean(acc[i][:i + 1])) for i in range(k)]
    out = {"memory": memory_name, "mem_per_class": mem_per_class, "seed": seed,
           "final_accuracy": float(res["Top1_Acc_Stream/eval_phase/test_stream"]),
           "forgetting": float(res["StreamForgetting/eval_phase/test_stream"]),
           "accuracy_after_experience": curve, "accuracy_matrix": acc,
           "memory_items": len(memory.buffer), "seconds": time.perf_counter() - t0}
    if hasattr(memory, "stored_floats"):
        out["stored_floats"], out["budget_floats"] = memory.stored_floats(), memory.budget_floats()
    return out


def _ms(values: list[float]) -> dict[str, Any]:
    """Mean, std (0 for one value) and the per-seed values."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per memory and budget: final accuracy, forgetting and accuracy after each experience, mean and std over
    seeds."""
    rows = []
    keys = list(dict.fromkeys((r["memory"], r["mem_per_class"]) for r in runs))
    for name, mpc in keys:
        rs = [r for r in runs if r["memory"] == name and r["mem_per_class"] == mpc]
        curves = np.array([r["accuracy_after_experience"] for r in rs])
        std = curves.std(0, ddof=1) if len(rs) > 1 else np.zeros(curves.shape[1])
        rows.append({"memory": name, "mem_per_class": mpc, "seeds": [r["seed"] for r in rs],
                     "final_accuracy": _ms([r["final_accuracy"] for r in rs]),
                     "forgetting": _ms([r["forgetting"] for r in rs]),
                     "accuracy_after_experience": {"mean": curves.mean(0).tolist(),
                                                   "std": std.tolist()},
                     "seconds": statistics.fmean(r["seconds"] for r in rs)})
    return rows


def write_report(rows: list[dict[str, Any]], a: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """Write ``report.md`` (the table) and the accuracy-per-experience plot; returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    mpcs = sorted({r["mem_per_class"] for r in rows})
    fig, axes = plt.subplots(1, len(mpcs), figsize=(5.5 * len(mpcs), 4), squeeze=False)
    for ax, mpc in zip(axes[0], mpcs):
        for r in (r for r in rows if r["mem_per_class"] == mpc):
            m, s = np.array(r["accuracy_after_experience"]["mean"]), np.array(r["accuracy_after_experience"]["std"])
            xs = np.arange(1, len(m) + 1)
            ax.plot(xs, 100 * m, marker="o", label=r["memory"])
            ax.fill_between(xs, 100 * (m - s), 100 * (m + s), alpha=0.15)
        ax.set(title=f"Split-{a.dataset}, {mpc} images/class", xlabel="experiences learned",
               ylabel="average accuracy on seen experiences (%)")
        integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend()
    png = out / "accuracy.png"
    fig.tight_layout()
    save_figure(fig, png, dpi=120)
    n = len(a.seeds)
    lines = [f"# Continual replay: Split-{a.dataset}, {a.experiences} experiences ({a.strategy})", "",
             result_paragraph(rows, a), "",
             f"Seeds {a.seeds}; learner {a.model}, {a.epochs} epochs/experience, SGD lr {a.lr}, batch {a.batch_size}; "
             f"distillation {'steps=' + str(a.steps) if a.steps >= 0 else 'budget=' + a.budget} per experience"
             f"{', quick presets ' + str(QUICK_PRESETS) if a.budget == 'quick' else ''}; overrides {a.set or 'none'}; "
             f"train images/class {a.train_per_class or 'all'}. Final average accuracy = Avalanche "
             "Top1_Acc_Stream after the last experience; forgetting = Avalanche StreamForgetting.", "",
             "| memory | images/class | final avg accuracy (%) | avg forgetting (%) | s/run |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        fa, fo = r["final_accuracy"], r["forgetting"]
        lines.append(f"| {r['memory']} | {r['mem_per_class']} | {pm(fa['mean'], fa['std'], n, scale=100)} | "
                     f"{pm(fo['mean'], fo['std'], n, scale=100)} | {r['seconds']:.1f} |")
    spread = (f"mean over {n} seeds, shaded ± one std" if n >= 2 else "1 run (seed "
              f"{a.seeds[0]}), no spread shown")
    lines += ["", figure_markdown(png, "accuracy after each experience", (
        f"average test accuracy on the experiences seen so far (y) after learning each of the {a.experiences} "
        f"experiences of Split-{a.dataset} (x), one line per replay memory, one panel per memory budget "
        f"({', '.join(str(m) for m in mpcs)} images/class); {a.strategy} strategy, learner {a.model}, {a.epochs} "
        f"epochs/experience; {spread}."))]
    md = out / "report.md"
    write_file(md, "\n".join(lines))
    return md, png


def result_paragraph(rows: list[dict[str, Any]], a: argparse.Namespace) -> str:
    """The report's opening paragraph: the best distilled memory against the best raw one, in words."""
    from distill_apps.integrations.avalanche import MEMORIES

    mpc = max(r["mem_per_class"] for r in rows)
    at = [r for r in rows if r["mem_per_class"] == mpc]
    best = max(at, key=lambda r: r["final_accuracy"]["mean"])
    distilled = [r for r in at if r["memory"] not in MEMORIES]
    raw = [r for r in at if r["memory"] in MEMORIES]
    runs = f"mean of {len(a.seeds)} seeds" if len(a.seeds) > 1 else "1 run"
    k = a.experiences
    if distilled and raw:
        d = max(distilled, key=lambda r: r["final_accuracy"]["mean"])
        b = max(raw, key=lambda r: r["final_accuracy"]["mean"])
        gap = 100 * (d["final_accuracy"]["mean"] - b["final_accuracy"]["mean"])
        return (f"Replaying a {mpc}-image-per-class {d['memory'].upper()} summary kept "
                f"{100 * d['final_accuracy']['mean']:.1f} % accuracy after {k} experiences of Split-{a.dataset}, "
                f"{abs(gap):.1f} points {'above' if gap >= 0 else 'below'} {b['memory']} replay of the same memory "
                f"(the best raw memory; {runs}). The best memory overall was {best['memory']}.")
    return (f"With {mpc} images per class, the best replay memory was {best['memory']}: "
            f"{100 * best['final_accuracy']['mean']:.1f} % accuracy after {k} experiences of Split-{a.dataset} "
            f"({runs}).")


def main(argv: list[str] | None = None) -> int:
    """Run the recipe: every memory x budget x seed on the split benchmark, then the report."""
    a = build_parser().parse_args(argv)
    memories = list(dict.fromkeys(split_list(a.methods, "--methods")))
    if any(v < 1 for v in a.mem_per_class):
        raise ConfigError(f"--mem-per-class must be >= 1; got {a.mem_per_class}.")
    from distill_apps.integrations.avalanche import MEMORIES

    methods = [m for m in memories if m not in MEMORIES]
    for m in methods:
        da.METHODS.get(m)  # raises ConfigError naming the known methods
    # options of each distillation method: the quick preset (with --budget quick), then --set
    a.method_config = method_options(a.set, methods, presets=QUICK_PRESETS if a.budget == "quick" else None)
    out = Path(a.out or f"out/continual_{a.dataset.replace(':', '-')}")
    runs = []
    jobs = [(m, mpc, s) for mpc in a.mem_per_class for m in memories for s in a.seeds]
    bar = StageBar(len(jobs) + 1, "continual", disable=a.json)
    for m, mpc, s in jobs:  # Avalanche's own notices are filtered by distill_apps.quiet (shown with --verbose)
        with bar(f"stream: {m}, {mpc}/class, seed {s}"):
            runs.append(run_stream(m, mpc, s, a))
    rows = aggregate(runs)
    with bar("report"):
        md, png = write_report(rows, a, out)
        write_file(out / "results.json", json.dumps({"args": vars(a), "results": rows, "runs": runs}, indent=1))
    bar.close()
    result = {"dataset": a.dataset, "experiences": a.experiences, "strategy": a.strategy, "seeds": a.seeds,
              "report": str(md), "plot": str(png),
              "memories": [{k: r[k] for k in ("memory", "mem_per_class", "final_accuracy", "forgetting",
                                              "accuracy_after_experience", "seconds")} for r in rows]}
    if a.json:
        print(json.dumps(result))
    else:
        print(md.read_text())
        print(f"wrote {md}, {png} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
