"""Recipe ``distill-apps recipe private-sharing``: share a differentially private summary instead of the data.

Distils a dataset with ``dp-dm`` and ``dp-dc`` at several target epsilons (and, for reference, without privacy),
trains a model on each summary and reports its test accuracy beside the DP-SGD baseline (a model trained
privately on the real data with Opacus at the same epsilon). Every summary is audited: a loss/confidence
membership-inference attack on a model trained on it (AUC, TPR at low FPR) and the nearest-neighbour distance of
its images to the real training set against the test-to-train baseline (closest pairs as PNG).

Writes ``report.md``, ``results.json``, ``nn_<method>_eps<e>.png``, and the shared summary
(``summary.safetensors``) with its data card (``DATA_CARD.md``) under ``--out``; ``--json`` prints one JSON object.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from distill_apps.options import add_set_argument, make_parser, method_options, split_list
from distill_apps.recipes.reporting import (StageBar, figure_markdown, finish, grid_caption, pm, save_figure,
                                            write_file)

#: the one line `distill-apps recipe --help` shows
SUMMARY = "share a differentially private summary (dp-dm, dp-dc) beside DP-SGD, with privacy audits"

#: the recipe's own defaults per method (``--set METHOD.KEY=VALUE`` overrides them; ``--steps`` sets ``steps``
#: of every method); dp-dc's ``releases`` defaults to steps x outer_loop (its whole run)
PRESETS: dict[str, dict[str, Any]] = {"dp-dm": {"steps": 300, "releases": 100},
                                      "dp-dc": {"steps": 20, "outer_loop": 5, "inner_loop": 10}}


def build_parser() -> argparse.ArgumentParser:
    """The recipe's options (``--help`` shows each default)."""
    ap = make_parser("distill-apps recipe private-sharing", __doc__.split("\n\n")[0] + "\n\nPer-method "
                     f"presets (override with --set METHOD.KEY=VALUE): {PRESETS}.")
    ap.add_argument("--dataset", default="digits", help="a registered image dataset")
    ap.add_argument("--ipc", type=int, default=10, help="synthetic images per class")
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 10.0], help="target epsilons")
    ap.add_argument("--delta", type=float, default=1e-5, help="target delta")
    ap.add_argument("--accountant", default="rdp", choices=("rdp", "prv"), help="Opacus accountant")
    ap.add_argument("--methods", nargs="+", default=["dp-dm", "dp-dc"], choices=("dp-dm", "dp-dc"),
                    help="private distillation methods")
    ap.add_argument("--no-non-private", action="store_true", help="skip the non-private reference summaries")
    ap.add_argument("--steps", type=int, default=None,
                    help="distillation steps of every method (default: each method's preset, see above)")
    add_set_argument(ap)
    ap.add_argument("--model", default="convnet-d2-w32", help="network for distillation, evaluation and audits")
    ap.add_argument("--eval-epochs", type=int, default=200, help="epochs of training on a summary")
    ap.add_argument("--runs", type=int, default=1,
                    help="independent runs (seed, seed+1, ...): each distils, evaluates and audits anew, so the "
                         "spread includes the privacy noise; the report gives mean +- std")
    ap.add_argument("--eval-runs", type=int, default=1, help="training runs on each summary within a run")
    ap.add_argument("--dpsgd-epochs", type=int, default=5, help="epochs of the DP-SGD baseline")
    ap.add_argument("--no-dpsgd", action="store_true", help="skip the DP-SGD baseline")
    ap.add_argument("--audit-n", type=int, default=500, help="members and non-members in the attack")
    ap.add_argument("--share-method", default="dp-dm", help="the summary written out with its data card")
    ap.add_argument("--share-epsilon", type=float, default=None, help="default: the smallest epsilon")
    ap.add_argument("--seed", type=int, default=0, help="first seed (runs use seed, seed+1, ...)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--data-root", default=None, help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    ap.add_argument("--out", default="private-sharing-report", help="folder for the report and the shared summary")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return ap


def _config(options: dict[str, Any], steps: int | None, eps: float | None, a) -> tuple[dict[str, Any], int]:
    """One method's options for one target epsilon (None: the non-private reference) and its step count."""
    cfg = dict(options)
    cfg["steps"] = steps if steps is not None else cfg.get("steps")
    if "outer_loop" in cfg and "releases" not in cfg:  # dp-dc: one release per outer loop of every step
        cfg["releases"] = cfg["steps"] * cfg["outer_loop"]
    priv = {"non_private": True} if eps is None else {"epsilon": eps, "delta": a.delta, "accountant": a.accountant}
    return {**cfg, **priv}, cfg["steps"]


def data_card(summary, row: dict[str, Any], dataset: str) -> str:
    """Markdown that travels with a shared summary: what it is, its guarantee, and what the audits saw."""
    p = summary.meta.get("privacy", {})
    eps = p.get("epsilon")
    guarantee = ("**none** (non-private summary: do not share sensitive data this way)" if p.get("non_private")
                 else f"(epsilon = {eps:.3f}, delta = {p.get('delta')}) differential privacy, accounted by Opacus' "
                      f"{p.get('accountant', '').upper()} accountant")
    nn = row.get("nearest_neighbour", {})
    return "\n".join([
        f"# Data card: distilled summary of `{dataset}`", "",
        f"- Method: `{summary.meta.get('method')}` ({summary.meta.get('paper')})",
        f"- Images: {len(summary.y)} ({summary.ipc} per class, {summary.num_classes} classes), shape "
        f"{tuple(summary.image_shape)}, normalised with mean {summary.mean} / std {summary.std}",
        f"- Privacy guarantee: {guarantee}",
        f"- Mechanism: {p.get('mechanism')}; sampling {p.get('sampling')} at rate {p.get('sample_rate', 0):.4g}; "
        f"clip {p.get('clip')}; noise multiplier {p.get('noise_multiplier', 0):.4g}; {p.get('releases')} releases; "
        f"images initialised from {p.get('init')}",
        f"- Utility: test accuracy {100 * row['accuracy']:.2f}% ({row['eval_model']}, {row['eval_epochs']} epochs)",
        f"- Membership inference (loss attack on a model trained on the summary): AUC {row['mia_auc']:.3f}, "
        f"TPR at 1% FPR {row['mia_tpr_at_1pct']:.3f}",
        f"- Nearest real training image: median L2 {nn.get('syn_to_train_median', float('nan')):.3f} vs "
        f"test-to-train median {nn.get('test_to_train_median', float('nan')):.3f}; "
        f"{nn.get('closer_than_baseline_min', 'n/a')} synthetic images closer than any test image",
        f"- Seed {summary.meta.get('seed')}; versions {summary.meta.get('versions')}", "",
        "The guarantee covers every image in the training split. It does not hide class sizes (treated as "
        "public), and it holds only if nothing else computed from the same data is shared.", ""])


def main(argv: list[str] | None = None) -> int:
    """Run the recipe: DP summaries at each epsilon, non-private ones, the DP-SGD baseline and the audits, then the
    report."""
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    import distill_apps as da
    from distill_apps.errors import ConfigError
    from distill_apps.privacy import audit_summary, nearest_neighbour_audit
    from distill_apps.runtime import pick_device

    methods = list(dict.fromkeys(split_list(a.methods, "--methods")))
    options = method_options(a.set, methods, presets=PRESETS)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = str(pick_device(a.device))
    real = da.load_dataset(a.dataset, a.data_root)
    epsilons: list[float | None] = sorted(a.epsilons) + ([] if a.no_non_private else [None])
    share_eps = a.share_epsilon if a.share_epsilon is not None else min(a.epsilons)
    if a.runs < 1 or a.eval_runs < 1:
        raise ConfigError(f"--runs and --eval-runs must be >= 1; got {a.runs} and {a.eval_runs}.")
    runs, dpsgd_runs, shared = [], [], None
    per_seed = len(methods) * len(epsilons) * 3 + (0 if a.no_dpsgd else len(a.epsilons))
    bar = StageBar(a.runs * per_seed + 1, "private-sharing", disable=a.json)
    for seed in range(a.seed, a.seed + a.runs):
        for method in methods:
            for eps in epsilons:
                cfg, steps = _config(options[method], a.steps, eps, a)
                what = f"{method} eps {'inf' if eps is None else f'{eps:g}'}, seed {seed}"
                with bar(f"distil {what}"):
                    s = da.distill(method, real, a.ipc, steps=steps, config=cfg, model=a.model, seed=seed,
                                   device=dev, progress=not a.json)
                with bar(f"evaluate {what}"):
                    ev = da.evaluate(s, real, model=a.model, runs=a.eval_runs, epochs=a.eval_epochs, augment=None,
                                     device=dev, seed=seed, progress=not a.json)
                tag = f"{method}_eps{'inf' if eps is None else f'{eps:g}'}"
                with bar(f"audit {what}"):
                    mia = audit_summary(s, real, model=a.model, epochs=a.eval_epochs, n=a.audit_n, seed=seed,
                                        device=dev, progress=not a.json)
                    nn = nearest_neighbour_audit(s, real, png=out / f"nn_{tag}.png" if seed == a.seed else None,
                                                 pairs=10, seed=seed)
                p = s.meta["privacy"]
                runs.append({"method": method, "target_epsilon": eps, "seed": seed, "epsilon": p["epsilon"],
                             "delta": p["delta"], "noise_multiplier": p["noise_multiplier"],
                             "releases": p["releases"], "accuracy": ev.accuracy_mean, "eval_model": a.model,
                             "eval_epochs": a.eval_epochs, "mia_auc": mia.auc,
                             "mia_tpr_at_1pct": mia.tpr_at_fpr["0.01"], "mia_confidence_auc": mia.confidence_auc,
                             "nearest_neighbour": {k: v for k, v in nn.items() if k != "closest_pairs"}})
                if seed == a.seed and method == a.share_method and eps == share_eps:
                    shared = (s, runs[-1])
        if not a.no_dpsgd:
            for eps in sorted(a.epsilons):
                with bar(f"DP-SGD eps {eps:g}, seed {seed}"):
                    dpsgd_runs.append(_dpsgd_run(a, real, eps, seed, dev))
    rows = _aggregate(runs, ("method", "target_epsilon"))
    dpsgd = _aggregate(dpsgd_runs, ("target_epsilon",))
    files: dict[str, str] = {}
    with bar("report"):
        if shared is not None:
            files["summary"] = str(shared[0].save(out / "summary.safetensors"))
            write_file(out / "DATA_CARD.md", data_card(shared[0], shared[1], real.name))
            files["data_card"] = str(out / "DATA_CARD.md")
            files["grid"] = str(shared[0].image_grid(out / "grid_shared.png", labels=real.class_names))
            files["grid_caption"] = grid_caption(shared[0], "The shared summary")
        result = {"recipe": "private-sharing", "dataset": real.name, "ipc": a.ipc, "delta": a.delta,
                  "accountant": a.accountant, "model": a.model, "runs": a.runs, "eval_runs": a.eval_runs,
                  "eval_epochs": a.eval_epochs, "summaries": rows, "dp_sgd": dpsgd,
                  "per_run": {"summaries": runs, "dp_sgd": dpsgd_runs}, **files}
        result["plot"] = str(plot_accuracy_epsilon(result, out / "accuracy_epsilon.png"))
    bar.close()
    return finish(out, result, _report(result), a.json)


def plot_accuracy_epsilon(r: dict[str, Any], path: Path) -> Path:
    """Test accuracy against the spent epsilon: one line per private method and DP-SGD, the non-private summaries
    as dashed horizontal lines; error bars (± std) only with 2 or more runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.8, 4))
    series: dict[str, list[dict[str, Any]]] = {}
    for x in r["summaries"]:
        if x["target_epsilon"] is None:
            ax.axhline(100 * x["accuracy"], linestyle="--", color="gray", alpha=0.7)
            ax.annotate(f"{x['method']} non-private", (0.01, 100 * x["accuracy"]), xycoords=("axes fraction", "data"),
                        fontsize=7, va="bottom")
        else:
            series.setdefault(x["method"], []).append(x)
    if r["dp_sgd"]:
        series["DP-SGD (real data)"] = list(r["dp_sgd"])
    for name, xs in series.items():
        xs = sorted(xs, key=lambda x: x["epsilon"])
        err = [100 * x["accuracy_std"] for x in xs] if r["runs"] >= 2 else None
        ax.errorbar([x["epsilon"] for x in xs], [100 * x["accuracy"] for x in xs], yerr=err, marker="o",
                    capsize=3, label=name)
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ticks = sorted({round(x["epsilon"], 3) for xs in series.values() for x in xs})
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.set_xticklabels([f"{t:.3g}" for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="epsilon spent (log scale)", ylabel="test accuracy (%)",
           title=f"{r['dataset']}, IPC {r['ipc']}, delta {r['delta']:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _dpsgd_run(a, real, eps: float, seed: int, dev: str) -> dict[str, Any]:
    """The DP-SGD baseline at ``eps`` with this run's seed, and the loss attack on the model it trained."""
    import torch

    from distill_apps.integrations.opacus import dp_sgd_baseline
    from distill_apps.privacy import membership_inference

    res, net = dp_sgd_baseline(real, epsilon=eps, delta=a.delta, epochs=a.dpsgd_epochs, model=a.model,
                               accountant=a.accountant, seed=seed, device=dev, return_model=True)
    g = torch.Generator().manual_seed(seed)
    k = min(a.audit_n, len(real.x_train), len(real.x_test))
    im = torch.randperm(len(real.x_train), generator=g)[:k]
    it = torch.randperm(len(real.x_test), generator=g)[:k]
    mia = membership_inference(net, (real.x_train[im], real.y_train[im]), (real.x_test[it], real.y_test[it]))
    return {**res.as_dict(), "seed": seed, "mia_auc": mia.auc, "mia_tpr_at_1pct": mia.tpr_at_fpr["0.01"]}


def _aggregate(runs: list[dict[str, Any]], key: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per ``key``: the first run's fields, with accuracy and the attack's figures as mean and std."""
    import numpy as np

    rows: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        rows.setdefault(tuple(r[k] for k in key), []).append(r)
    out = []
    for group in rows.values():
        row = {k: v for k, v in group[0].items() if k != "seed"}
        for m in ("accuracy", "mia_auc", "mia_tpr_at_1pct", "epsilon"):
            vals = np.array([r[m] for r in group], dtype=float)
            row[m], row[f"{m}_std"] = float(vals.mean()), float(vals.std())
        row["seeds"] = [r["seed"] for r in group]
        out.append(row)
    return out


def _pm(x: dict[str, Any], m: str, pct: bool = False) -> str:
    """``mean ± std`` of metric ``m`` (as a percentage when ``pct``)."""
    n = len(x.get("seeds") or [None])
    return pm(x[m], x[m + "_std"], n, fmt=".2f" if pct else ".3f", scale=100 if pct else 1)


def result_paragraph(r: dict[str, Any]) -> str:
    """The report's opening paragraph: the most private summary against DP-SGD and the non-private summary."""
    runs = f"mean of {r['runs']} runs" if r["runs"] > 1 else "1 run"
    private = [x for x in r["summaries"] if x["target_epsilon"] is not None]
    if not private:
        return f"Only non-private summaries were made ({runs}); see the table for their accuracy and audits."
    eps = min(x["target_epsilon"] for x in private)
    at = [x for x in private if x["target_epsilon"] == eps]
    best = max(at, key=lambda x: x["accuracy"])
    text = (f"At epsilon {best['epsilon']:.3g} (delta {r['delta']:g}), the best private summary, {best['method']} "
            f"with {r['ipc']} images per class, trained a model to {100 * best['accuracy']:.1f} % test accuracy")
    sgd = [x for x in r["dp_sgd"] if x["target_epsilon"] == eps]
    if sgd:
        gap = 100 * (best["accuracy"] - sgd[0]["accuracy"])
        text += (f", {abs(gap):.1f} points {'above' if gap >= 0 else 'below'} DP-SGD on the real data at the same "
                 "epsilon")
    ref = [x for x in r["summaries"] if x["target_epsilon"] is None and x["method"] == best["method"]]
    if ref:
        text += f" (the same method without privacy: {100 * ref[0]['accuracy']:.1f} %)"
    return text + (f"; the membership-inference attack on it reached AUC {best['mia_auc']:.2f} (0.5 = no better "
                   f"than guessing; {runs}).")


def _f(v, pct=False) -> str:
    """A number for the report (``non-private`` for None)."""
    if v is None:
        return "non-private"
    return f"{100 * v:.2f}" if pct else f"{v:.3g}"


def _report(r: dict[str, Any]) -> str:
    """The markdown report: target and spent epsilon, accuracy, membership inference and nearest-neighbour distances per
    summary."""
    spread = f"mean ± std over {r['runs']} runs" if r["runs"] >= 2 else "1 run"
    lines = [f"# Private sharing: {r['dataset']}, IPC {r['ipc']}, delta {r['delta']} ({r['accountant']}), {spread}",
             "", result_paragraph(r), "",
             "| method | target eps | spent eps | test acc % | MIA AUC | TPR@1%FPR | NN median, first run (syn / test) |",
             "|---|---|---|---|---|---|---|"]
    for x in r["summaries"]:
        nn = x["nearest_neighbour"]
        lines.append(f"| {x['method']} | {_f(x['target_epsilon'])} | {x['epsilon']:.3g} | {_pm(x, 'accuracy', True)} "
                     f"| {_pm(x, 'mia_auc')} | {_pm(x, 'mia_tpr_at_1pct')} | {nn['syn_to_train_median']:.2f} / "
                     f"{nn['test_to_train_median']:.2f} |")
    for x in r["dp_sgd"]:
        lines.append(f"| DP-SGD (real data) | {x['target_epsilon']:g} | {x['epsilon']:.3g} | "
                     f"{_pm(x, 'accuracy', True)} | {_pm(x, 'mia_auc')} | {_pm(x, 'mia_tpr_at_1pct')} | - |")
    lines += ["", f"Model `{r['model']}`.", ""]
    setting = (f"{r['dataset']}, IPC {r['ipc']}, delta {r['delta']:g} ({r['accountant']} accountant), model "
               f"`{r['model']}` trained {r['eval_epochs']} epochs on each summary")
    if r.get("plot"):
        lines.append(figure_markdown(r["plot"], "accuracy against epsilon", (
            f"test accuracy (y) against the epsilon actually spent (x, log scale) for each private method and for "
            f"DP-SGD on the real data; dashed lines: the non-private summaries. {setting}; "
            + ("error bars ± one std over " + str(r["runs"]) + " runs." if r["runs"] >= 2 else "1 run, no error "
               "bars."))))
    for x in r["summaries"]:
        tag = f"{x['method']}_eps{'inf' if x['target_epsilon'] is None else format(x['target_epsilon'], 'g')}"
        eps = "no privacy" if x["target_epsilon"] is None else f"epsilon {x['epsilon']:.3g}"
        lines.append(figure_markdown(f"nn_{tag}.png", f"nearest neighbours of {tag}", (
            f"the (up to 10) synthetic images of the first run's `{x['method']}` summary ({eps}) "
            "closest to a real training image (left, with its class) beside that nearest real training image "
            "(right, with its index, class and L2 distance in normalised pixels); the title gives the smallest "
            f"test-to-train distance as a baseline. {setting}.")))
    if r.get("data_card"):
        lines.append(f"Shared summary: `{Path(r['summary']).name}` with `{Path(r['data_card']).name}`.\n")
    if r.get("grid"):
        lines.append(figure_markdown(r["grid"], "the shared summary", r["grid_caption"]))
    return "\n".join(lines) + "\n"
