"""Compare methods x IPCs on one dataset under one evaluation protocol (``distill-apps compare``).

The core of the fidelity benchmark (``benchmarks/fidelity.py`` is a thin wrapper around it): :func:`run_cell`
distils one (method, IPC) cell and scores it under the requested protocol(s) with one network or several (the
cross-architecture table), one row per protocol and network, next to the published ConvNet figure when there is
one (:data:`PAPER`); :func:`markdown` renders the rows as a table;
:func:`compare` runs the grid and :func:`write_report` writes the results JSON, the markdown table (with a caption
line) and two plots: accuracy vs IPC and accuracy vs distillation time.

``budget="quick"`` uses each method's CPU-minutes preset and evaluates for 300 epochs; ``budget="paper"`` the
paper's iteration count and the protocol's own epochs (1,000 with DSA augmentation); ``steps``/``epochs``
override them.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError

__all__ = ["PAPER", "FOLDER_COPIES", "dataset_label", "copy_label", "eval_epochs", "run_cell", "markdown",
           "cross_arch_markdown", "models_of", "augment_label", "caption", "compare", "plot_accuracy_vs_ipc",
           "plot_accuracy_vs_time", "write_report", "REPORT_FILES"]

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
    # CIFAR-10 random: the figures the project compares against (15.4 / 31.0, as in later trajectory-matching
    # papers' tables); DC's and MTT's own tables report 14.4 / 26.0 for a random subset.
    ("random", "cifar10", 1): 15.4, ("random", "cifar10", 10): 31.0, ("dc", "cifar10", 1): 28.3,
    ("dc", "cifar10", 10): 44.9, ("dsa", "cifar10", 1): 28.8, ("dsa", "cifar10", 10): 52.1,
    ("dm", "cifar10", 1): 26.0, ("dm", "cifar10", 10): 48.9, ("mtt", "cifar10", 1): 46.3,
    ("mtt", "cifar10", 10): 65.3, ("tesla", "cifar10", 1): 48.5, ("tesla", "cifar10", 10): 66.4,
    ("kip", "cifar10", 1): 49.9, ("kip", "cifar10", 10): 62.7, ("frepo", "cifar10", 1): 46.8,
    ("frepo", "cifar10", 10): 65.5, ("dd", "cifar10", 10): 36.8, ("cafe", "cifar10", 1): 30.3,
    ("cafe", "cifar10", 10): 46.3, ("haba", "cifar10", 1): 48.3, ("haba", "cifar10", 10): 69.9,
    ("linba", "cifar10", 1): 66.4, ("linba", "cifar10", 10): 71.2,
    ("herding", "cifar10", 1): 21.5, ("herding", "cifar10", 10): 31.6, ("kcenter", "cifar10", 1): 21.5,
    ("kcenter", "cifar10", 10): 14.7, ("idc", "cifar10", 1): 50.6, ("idc", "cifar10", 10): 67.5,
}

# Image folders holding a copy of a benchmark dataset: (paper key, label used in every result row).
FOLDER_COPIES = {"cifar10-jpg": ("cifar10", "CIFAR-10 (JPEG q75 copy)")}

#: The files :func:`write_report` writes into its folder.
REPORT_FILES = ("compare.json", "compare.md", "accuracy_vs_ipc.png", "accuracy_vs_time.png")


def copy_label(name: str) -> str:
    """How results name dataset ``name``: a folder copy of CIFAR-10 reads "CIFAR-10 (JPEG q75 copy)"."""
    return FOLDER_COPIES.get(name, (name, name))[1]


def dataset_label(real: Any) -> tuple[str, str]:
    """(key for PAPER, label for the rows): a folder copy of CIFAR-10 is reported as "CIFAR-10 (JPEG q75 copy)"."""
    if real.source.get("kind") == "imagefolder" and real.name in FOLDER_COPIES:
        return FOLDER_COPIES[real.name]
    return real.name, real.name


def eval_epochs(budget: str, epochs: int | None = None, paper_eval: bool = False) -> int | None:
    """Evaluation epochs of a cell: ``epochs`` when given; 300 under the quick budget; else the protocol's own."""
    if epochs is not None:
        return epochs
    return 300 if budget == "quick" and not paper_eval else None


def run_cell(method: str, dataset: Any, ipc: int, *, steps: int | None = None, budget: str = "quick",
             config: dict | None = None, time_limit: float | None = None, runs: int = 3, epochs: int | None = None,
             model: str = "convnet", distill_model: str | None = None, protocols: Sequence[str] = ("train",),
             seed: int = 0, device: str = "auto", paper_eval: bool = False, progress: bool = True,
             models: Sequence[str] | None = None) -> list[dict]:
    """Distil once, evaluate under every requested protocol with every model; one row per (protocol, model) (DD's
    ``schedule`` protocol only for summaries with a learned schedule). ``model`` is the evaluation network
    (``models``: several, a cross-architecture cell as in DC, Zhao et al. 2021, Table 2), ``distill_model`` the
    distillation's (default: the method's). The paper's figure (ConvNet-3) is set on ConvNet rows only."""
    import distill_apps as da

    key, label = dataset_label(dataset)
    t0 = time.perf_counter()
    s = da.distill(method, dataset, ipc, steps=steps, budget=budget, seed=seed, device=device, model=distill_model,
                   progress=progress, time_limit=time_limit, config=config or None)
    t_distill = time.perf_counter() - t0
    ep = eval_epochs(budget, epochs, paper_eval)
    cell = {"method": method, "dataset": label, "ipc": ipc, "budget": budget, "steps": s.meta["steps"],
            "time_limit": time_limit, "distill_seconds": round(t_distill, 1)}
    data = {"source": dataset.source.get("kind"), "zca": dataset.transform is not None, "config": dict(config or {})}
    rows = []
    for protocol in protocols:
        if protocol == "schedule" and "inner_lrs" not in s.meta:
            continue  # DD's own protocol applies to summaries with a learned schedule only
        for net in models or (model,):
            res = da.evaluate(s, dataset, runs=runs, epochs=ep, device=device, model=net, protocol=protocol)
            rows.append({**cell, "eval_seconds": round(res.seconds, 1),
                         "cell_seconds": round(time.perf_counter() - t0, 1), **data,
                         "accuracy_mean": 100 * res.accuracy_mean, "accuracy_std": 100 * res.accuracy_std,
                         "accuracies": [100 * v for v in res.accuracies], "runs": res.runs, "epochs": res.epochs,
                         "augment": res.augment, "protocol": res.protocol, "model": res.model,
                         "storage_floats": s.storage_floats(),
                         "paper": PAPER.get((method, key, ipc)) if net == "convnet" else None})
    return rows


def augment_label(augment) -> str:
    """`` +dsa`` / `` +dc`` for the evaluation augmentation a row was trained with, ``""`` for none (older rows stored
    ``True`` for DSA and ``False``/``None`` for none)."""
    if augment is True:
        return " +dsa"
    return "" if augment in (None, False, "", "none") else f" +{augment}"


def _score(r: dict) -> str:
    return f"{r['accuracy_mean']:.1f}" + (f" ± {r['accuracy_std']:.1f}" if r["runs"] >= 2 else "")


def models_of(rows: list[dict]) -> list[str]:
    """The evaluation networks of ``rows``, in order of appearance."""
    return list(dict.fromkeys(r["model"] for r in rows))


def cross_arch_markdown(rows: list[dict]) -> list[str]:
    """Rows evaluated with several networks as one table: a line per (IPC, method), a column per network, the
    paper's ConvNet figure last (the layout of DC, Zhao et al. 2021, Table 2)."""
    models = models_of(rows)
    lines = ["| method | IPC | steps | protocol | " + " | ".join(models) + " | paper, convnet (%) |",
             "|---" * (len(models) + 5) + "|"]
    for ipc, method in dict.fromkeys((r["ipc"], r["method"]) for r in rows):
        mine = {r["model"]: r for r in rows if (r["ipc"], r["method"]) == (ipc, method)}
        first = next(iter(mine.values()))
        paper = next((r["paper"] for r in mine.values() if r["paper"] is not None), None)
        lines.append(f"| {method} | {ipc} | {first['steps']} | {first['runs']} runs × {first['epochs']} ep"
                     f"{augment_label(first['augment'])} | "
                     + " | ".join(_score(mine[m]) if m in mine else "-" for m in models)
                     + f" | {'-' if paper is None else f'{paper:.1f}'} |")
    return lines


def markdown(rows: list[dict], caption_line: str | None = None) -> str:
    """The rows as a markdown table (ours next to the paper's figure), under ``caption_line`` when given; rows of
    several evaluation networks as the cross-architecture table (:func:`cross_arch_markdown`)."""
    lines = [caption_line, ""] if caption_line else []
    if len(models_of(rows)) > 1:
        return "\n".join(lines + cross_arch_markdown(rows)) + "\n"
    lines += ["| method | dataset | IPC | steps | protocol | ours (%) | paper (%) | distill s | eval |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = "-" if r["paper"] is None else f"{r['paper']:.1f}"
        ev = f"{r['runs']} runs" + (f" × {r['epochs']} ep" if r.get("protocol", "train") == "train" else "")
        lines.append(f"| {r['method']} | {r['dataset']} | {r['ipc']} | {r['steps']} | {r.get('protocol', 'train')} | "
                     f"{_score(r)} | "
                     f"{paper} | {r['distill_seconds']} | {ev}{augment_label(r['augment'])} |")
    return "\n".join(lines) + "\n"


def caption(rows: list[dict], budget: str, seed: int, steps: int | None = None) -> str:
    """One line saying what the table and plots show and with what settings."""
    if not rows:
        return "No cells were run."
    r0 = rows[0]
    methods = ", ".join(dict.fromkeys(r["method"] for r in rows))
    ipcs = ", ".join(str(i) for i in sorted({r["ipc"] for r in rows}))
    eps = sorted({r["epochs"] for r in rows if r["epochs"] is not None})
    models = models_of(rows)
    nets = f"a {r0['model']}" if len(models) == 1 else f"each of {', '.join(models)}"
    return (f"Test accuracy (%) on {r0['dataset']} of {methods} at IPC {ipcs}: {nets} trained from scratch on "
            f"each summary ({r0['protocol']} protocol" + (f", {'/'.join(map(str, eps))} epochs" if eps else "")
            + f", {r0['runs']} run{'s' if r0['runs'] != 1 else ''}" + (", mean ± std" if r0["runs"] >= 2 else "")
            + (f"); distilled for {steps} steps (methods that optimise)" if steps is not None
               else f"); distilled with the {budget} budget (steps per row)")
            + f", seed {seed}; distill s is the wall time of "
            "the distillation on this machine.")


def _figure_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def _plot(rows: list[dict], x_key: str, xlabel: str, title: str, caption_line: str, log_ipc: bool) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    several = len(models_of(rows)) > 1  # cross-architecture rows: a line per (method, network)
    for m, net in dict.fromkeys((r["method"], r["model"]) for r in rows):
        pts = sorted((r for r in rows if (r["method"], r["model"]) == (m, net)), key=lambda r: r["ipc"])
        xs, ys = [r[x_key] for r in pts], [r["accuracy_mean"] for r in pts]  # a line runs through IPCs
        err = [r["accuracy_std"] if r["runs"] >= 2 else 0.0 for r in pts]
        line = ax.errorbar(xs, ys, yerr=err if any(err) else None, marker="o", capsize=3,
                           label=f"{m}, {net}" if several else m)
        if x_key == "distill_seconds":
            for r in pts:
                ax.annotate(f"IPC {r['ipc']}", (r[x_key], r["accuracy_mean"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=line[0].get_color())
    if log_ipc:
        ipcs = sorted({r["ipc"] for r in rows})
        if len(ipcs) > 1 and ipcs[-1] / ipcs[0] >= 10:
            ax.set_xscale("log")
        ax.set_xticks(ipcs)
        ax.set_xticklabels([str(i) for i in ipcs])
        ax.minorticks_off()
    elif max(r[x_key] for r in rows) > 10 * max(1.0, min(r[x_key] for r in rows)):
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="method, network" if several else "method", fontsize=7 if several else None)
    fig.text(0.01, -0.02, caption_line, wrap=True, fontsize=7, va="top", ha="left")
    out = _figure_bytes(fig)
    plt.close(fig)
    return out


def plot_accuracy_vs_ipc(rows: list[dict], caption_line: str) -> bytes:
    """PNG bytes: test accuracy against images per class, one line per method (± std with 2+ runs)."""
    return _plot(rows, "ipc", "images per class (IPC)", f"Accuracy vs IPC on {rows[0]['dataset']}", caption_line,
                 log_ipc=True)


def plot_accuracy_vs_time(rows: list[dict], caption_line: str) -> bytes:
    """PNG bytes: test accuracy against distillation wall time, one line per method, points labelled by IPC."""
    return _plot(rows, "distill_seconds", "distillation wall time (s)",
                 f"Accuracy vs distillation time on {rows[0]['dataset']}", caption_line, log_ipc=False)


def check_report_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse (before any work) a folder that already holds a report, unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another --out.")
    there = [f for f in REPORT_FILES if (out / f).exists()]
    if there and not overwrite:
        raise ConfigError(f"{out} already holds a comparison ({', '.join(there)}); refusing to overwrite it. Choose "
                          "another --out, or pass --overwrite.")
    return out


def write_report(rows: list[dict], out_dir: str | Path, settings: dict[str, Any], caption_line: str) -> dict[str, str]:
    """Write ``compare.json`` (settings, caption, rows), ``compare.md`` and the two plots into ``out_dir``."""
    from .safe_io import write_bytes, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in REPORT_FILES}
    write_json(files["compare.json"], {"settings": settings, "caption": caption_line, "rows": rows}, indent=1)
    write_bytes(files["compare.md"], markdown(rows, caption_line).encode())
    write_bytes(files["accuracy_vs_ipc.png"], plot_accuracy_vs_ipc(rows, caption_line))
    write_bytes(files["accuracy_vs_time.png"], plot_accuracy_vs_time(rows, caption_line))
    return {k: str(v) for k, v in files.items()}


def compare(dataset: Any, methods: Sequence[str], ipcs: Sequence[int], *, steps: int | None = None,
            budget: str = "quick", configs: dict[str, dict] | None = None, runs: int = 3,
            epochs: int | None = None, model: str = "convnet", distill_model: str | None = None,
            protocol: str = "train", seed: int = 0, device: str = "auto", time_limit: float | None = None,
            progress: bool = True, on_row=None, models: Sequence[str] | None = None,
            baseline: bool = True) -> list[dict]:
    """Every (method, IPC) cell on one loaded image dataset under one protocol; returns the rows (IPC-major).

    ``models``: evaluate each summary (distilled with ``distill_model``) with every one of these networks, the
    cross-architecture table of DC (Zhao et al. 2021, Table 2), with a random real subset of the same size as
    every network's baseline row (added first unless ``baseline=False`` or ``"random"`` is among ``methods``).
    Names and budgets are checked before anything is distilled (unknown methods or models, methods of another
    modality, an IPC larger than the smallest class). ``on_row(row)`` is called after each row."""
    from .engine import METHODS
    from .modality import modality_of
    from .validation import check_int

    if budget not in ("quick", "paper"):
        raise ConfigError(f"budget must be 'quick' or 'paper'; got {budget!r}.")
    check_int("--runs", runs, 1)
    if steps is not None:
        check_int("--steps", steps, 0)
    if epochs is not None:
        check_int("--epochs", epochs, 1)
    if not methods or not ipcs:
        raise ConfigError("compare needs at least one method (--methods) and one IPC (--ipc).")
    if models is not None:
        from .cross_arch import parse_models

        models = parse_models(models)
        if baseline and "random" not in methods:
            methods = ["random", *methods]
    for m in methods:
        cls = METHODS.get(m)  # unknown names: the registry's error lists the known ones
        if modality_of(cls) != "image":
            raise ConfigError(f"compare scores image summaries; {m!r} distils {modality_of(cls)} data. Compare image "
                              "methods (`distill-apps methods` lists each method's modality).")
    for ipc in ipcs:
        check_int("--ipc", ipc, 1)
        dataset.check_ipc(ipc)
    rows: list[dict] = []
    for ipc in ipcs:
        for m in methods:
            for row in run_cell(m, dataset, ipc, steps=steps, budget=budget, config=(configs or {}).get(m),
                                time_limit=time_limit, runs=runs, epochs=epochs, model=model,
                                distill_model=distill_model, protocols=(protocol,), seed=seed, device=device,
                                progress=progress, models=models):
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows
