"""Recipe ``distill-apps recipe robustness``: are models trained on distilled data more robust to attacks?

Distils one dataset at one IPC with DM, DSA, MTT (hard labels), SRe2L and RDED (teacher-based, soft labels) and
draws a random real subset of the same IPC, trains fresh students on each (hard-label methods and the random
subset with the ``train`` protocol; SRe2L, RDED and the random subset again with the ``softlabel`` protocol and
the same teacher, so soft labels are compared with soft labels), and attacks every student with FGSM and PGD
(L-infinity, pixel units; PGD 10 steps of eps/4 from a random start) on the first ``--attack-n`` test images.

Writes ``report.md`` (a table of clean and robust accuracy per method, protocol and eps), ``robustness.png``
(robust accuracy against eps, one panel per attack) and ``results.json`` under ``--out``; ``--json`` prints one
JSON object.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from distill_apps.recipes.reporting import StageBar, figure_markdown, finish, save_figure

HARD = ("dm", "dsa", "mtt", "dc", "idc", "tesla", "herding", "kcenter")
TEACHER = ("sre2l", "rded")


def build_parser() -> argparse.ArgumentParser:
    """The recipe's options (``--help`` shows their defaults)."""
    from distill_apps.options import add_set_argument, make_parser

    ap = make_parser("distill-apps recipe robustness", __doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--methods", nargs="+", default=["dm", "dsa", "mtt", "sre2l", "rded"],
                    help="methods to compare (a random subset at the same IPC is always added)")
    ap.add_argument("--attacks", nargs="+", default=["fgsm", "pgd"], choices=("fgsm", "pgd"))
    ap.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.2],
                    help="L-infinity budgets in pixel units [0, 1]")
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--attack-n", type=int, default=500, help="test images attacked per student")
    ap.add_argument("--budget", choices=("quick", "paper"), default="quick", help="distillation budget per method")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps of every method (overrides --budget)")
    add_set_argument(ap)
    ap.add_argument("--model", default="convnet", help="network for distillation and the students")
    ap.add_argument("--eval-epochs", type=int, default=300, help="epochs of student training")
    ap.add_argument("--runs", type=int, default=1, help="students per summary")
    ap.add_argument("--teacher", default=None, help="teacher file (default: the cached teacher of --teacher-model)")
    ap.add_argument("--teacher-model", default="convnet-bn")
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default="out/robustness", help="folder for report.md, robustness.png, results.json")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return ap


def _plot(rows: list[dict[str, Any]], attacks: list[str], eps: list[float], path: Path) -> Path:
    """Plot robust accuracy against epsilon, one panel per attack, one line per method and protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(attacks), figsize=(5.5 * len(attacks), 4), squeeze=False)
    xs = [0.0] + list(eps)
    for ax, attack in zip(axes[0], attacks):
        for r in rows:
            ys = [100 * r["clean"]] + [100 * r["robust"][attack][str(e)] for e in eps]
            ax.plot(xs, ys, marker="o", label=f"{r['method']} ({r['protocol']})",
                    linestyle="--" if r["method"] == "random" else "-")
        ax.set_xlabel("eps (L-inf, pixel units)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(attack.upper())
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def result_paragraph(r: dict[str, Any]) -> str:
    """The report's opening paragraph: the most robust student at the largest eps against the random subset."""
    attack = "pgd" if "pgd" in r["attacks"] else r["attacks"][0]
    e = str(max(r["eps"]))
    best = max(r["rows"], key=lambda x: x["robust"][attack][e])
    text = (f"Under {attack.upper()} at eps {e}, the most robust student on {r['dataset']} (IPC {r['ipc']}) was "
            f"trained on {best['method']} ({best['protocol']} protocol): {100 * best['robust'][attack][e]:.1f} % "
            f"robust accuracy, {100 * best['clean']:.1f} % clean")
    rand = [x for x in r["rows"] if x["method"] == "random" and x["protocol"] == best["protocol"]]
    if rand and best["method"] != "random":
        gap = 100 * (best["robust"][attack][e] - rand[0]["robust"][attack][e])
        text += (f", {abs(gap):.1f} points {'above' if gap >= 0 else 'below'} a random real subset of the same size "
                 "under the same protocol")
    runs = f"{r['runs']} students each" if r["runs"] > 1 else "1 run"
    return text + f" ({runs})."


def _report(r: dict[str, Any]) -> str:
    """The markdown report: clean and robust accuracy per method, protocol, attack and epsilon."""
    eps = r["eps"]
    head = "| method | protocol | distil s | clean % | " + " | ".join(
        f"{a.upper()} {e}" for a in r["attacks"] for e in eps) + " |"
    lines = [f"# Adversarial robustness of students: {r['dataset']}, IPC {r['ipc']}", "", result_paragraph(r), "",
             f"Students: `{r['model']}`, {r['eval_epochs']} epochs, {r['runs']} run(s) each; attacks on the first "
             f"{r['attack_n']} test images, L-infinity eps in pixel units; PGD {r['pgd_steps']} steps of eps/4 "
             "from a random start. Protocols: `train` (hard labels, SGD, the field's schedule) and `softlabel` "
             f"(teacher `{r['teacher']['model']}` relabels every augmented batch, AdamW + cosine).", "",
             head, "|" + "---|" * (4 + len(eps) * len(r["attacks"]))]
    for x in r["rows"]:
        cells = [f"{100 * x['robust'][a][str(e)]:.1f}" for a in r["attacks"] for e in eps]
        lines.append(f"| {x['method']} | {x['protocol']} | {x['distill_seconds']:.0f} | {100 * x['clean']:.2f} | "
                     + " | ".join(cells) + " |")
    lines += ["", figure_markdown(r["plot"], "robust accuracy against eps", (
        f"test accuracy (y) of each student under attack against the L-infinity budget eps (x, pixel units; eps 0 = "
        f"clean), one panel per attack ({', '.join(a.upper() for a in r['attacks'])}), one line per method and "
        f"protocol (dashed: the random subset); {r['dataset']}, IPC {r['ipc']}, students `{r['model']}` "
        f"{r['eval_epochs']} epochs, {r['attack_n']} attacked test images, "
        + (f"mean of {r['runs']} students." if r["runs"] > 1 else "1 run."))),
              "Compare each method with `random` under the same protocol: the gap at eps 0 is what distillation "
              "adds to accuracy, the gap at eps > 0 what it adds (or costs) in robustness.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the recipe: distil each method, train students under each protocol, attack them, write the report."""
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    import distill_apps as da
    from distill_apps.errors import ConfigError
    from distill_apps.options import method_options
    from distill_apps.robustness import check_eps, robust_evaluate
    from distill_apps.runtime import pick_device
    from distill_apps.teachers import resolve_teacher

    check_eps(a.eps)
    unknown = [m for m in a.methods if m not in da.list_methods()]
    if unknown:
        raise ConfigError(f"Unknown method(s) {unknown}; see `distill-apps methods`.")
    per_method = method_options(a.set, a.methods)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = str(pick_device(a.device))
    real = da.load_dataset(a.dataset, a.data_root)
    teacher = None
    if any(m in TEACHER for m in a.methods):
        teacher = resolve_teacher(real, path=a.teacher, model=a.teacher_model, epochs=a.teacher_epochs,
                                  device=dev, progress=not a.json)
    rows: list[dict[str, Any]] = []
    plan = [(m, "softlabel" if m in TEACHER else "train") for m in a.methods if m != "random"]
    plan += [("random", "train")] + ([("random", "softlabel")] if teacher is not None else [])
    summaries: dict[str, Any] = {}
    bar = StageBar(len({m for m, _ in plan}) + len(plan) + 1, "robustness", disable=a.json)
    for method, protocol in plan:
        if method not in summaries:
            with bar(f"distil {method}"):
                cfg = {**({"teacher": str(teacher.path)} if method in TEACHER else {}),
                       **per_method.get(method, {})}
                t0 = time.perf_counter()
                summaries[method] = (da.distill(method, real, a.ipc, steps=a.steps, budget=a.budget, model=a.model,
                                                seed=a.seed, device=dev, config=cfg or None, progress=not a.json),
                                     time.perf_counter() - t0)
        s, secs = summaries[method]
        kw = {"teacher": teacher} if protocol == "softlabel" else {}
        with bar(f"train + attack {method} ({protocol})"):
            res = robust_evaluate(s, real, attack=list(a.attacks), eps=a.eps, protocol=protocol, n=a.attack_n,
                                  steps=a.pgd_steps, seed=a.seed, model=a.model, runs=a.runs, epochs=a.eval_epochs,
                                  device=dev, progress=not a.json, **kw)
        robust = {attack: info["accuracy"] for attack, info in res.extra["robust"].items()}
        clean = res.accuracy_mean
        rows.append({"method": method, "protocol": protocol, "steps": s.meta.get("steps"),
                     "distill_seconds": secs, "clean": clean,
                     "robust": robust})
    result = {"recipe": "robustness", "dataset": real.name, "ipc": a.ipc, "model": a.model, "attacks": a.attacks,
              "eps": a.eps, "pgd_steps": a.pgd_steps, "attack_n": a.attack_n, "eval_epochs": a.eval_epochs,
              "runs": a.runs, "budget": a.budget,
              "teacher": teacher.reference() if teacher is not None else {"model": None}, "rows": rows}
    with bar("report"):
        result["plot"] = str(_plot(rows, a.attacks, a.eps, out / "robustness.png"))
    bar.close()
    return finish(out, result, _report(result), a.json)
