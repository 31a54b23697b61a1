"""Recipe ``distill-apps recipe medical``: distil MedMNIST datasets into small shareable summaries.

For every dataset (PneumoniaMNIST and BreastMNIST by default) and IPC, distils with each method (``dm``, ``dsa``,
the private ``dp-dm``, ...), builds the random-subset baselines (class-proportional and class-balanced) and trains
the full-data model; every one is evaluated with MedMNIST's AUC and ACC (plus balanced accuracy and per-class
sensitivity/specificity), and every distilled summary goes through the anonymisation check (nearest real image
by L2 and SSIM, flagged when closer than real images are to each other).

Writes under ``--out``: ``report.md``, ``results.json`` and, for every distilled summary, the shareable file
``summary_<dataset>_<method>_ipc<k>.safetensors`` with its data card ``card_<dataset>_<method>_ipc<k>.json`` /
``.md`` (dataset, method, IPC, privacy, anonymisation check, evaluation), ``grid_<...>.png`` and
``anon_<...>.png``; ``--json`` prints one JSON object. Private methods take their target with ``--set
epsilon=2 --set delta=1e-5`` (default: each method's, epsilon 10).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from distill_apps.options import add_set_argument, make_parser, method_options, split_list
from distill_apps.recipes.reporting import (StageBar, data_card, figure_markdown, finish, grid_caption, pm,
                                            write_data_card)

#: the one line `distill-apps recipe --help` shows
SUMMARY = "distil MedMNIST into shareable summaries, each saved with a data card (AUC/ACC, anonymisation check)"


def build_parser() -> argparse.ArgumentParser:
    """The recipe's options (``--help`` shows each default)."""
    ap = make_parser("distill-apps recipe medical", __doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "breastmnist"], help="MedMNIST 2D flags")
    ap.add_argument("--size", type=int, default=28, choices=(28, 64, 128, 224), help="image size of the npz files")
    ap.add_argument("--ipc", type=int, nargs="+", default=[10], help="images per class, e.g. 1 10 50")
    ap.add_argument("--methods", nargs="+", default=["dm", "dp-dm"], help="registered methods, e.g. dm dsa dp-dm")
    ap.add_argument("--budget", default="balanced", choices=("balanced", "proportional"),
                    help="per-class split of the image budget")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (default: each method's quick preset)")
    add_set_argument(ap)
    ap.add_argument("--model", default="convnet-d2-w32", help="network for distillation and evaluation")
    ap.add_argument("--epochs", type=int, default=100, help="epochs of training on a summary")
    ap.add_argument("--full-epochs", type=int, default=10, help="epochs of the full-data model (0 skips it)")
    ap.add_argument("--runs", type=int, default=1, help="training runs per evaluation")
    ap.add_argument("--seed", type=int, default=0, help="seed of distillation, subsets and training")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--data-root", default=None, help="folder holding medmnist/<flag>.npz (or $DISTILL_APPS_DATA)")
    ap.add_argument("--out", default="medical-report", help="folder for the report, summaries and data cards")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return ap


PUBLISHED = {  # MedMNIST v2 (Yang et al. 2023), ResNet-18 (28), test AUC / ACC
    "pneumoniamnist": {"auc": 0.944, "acc": 0.854}, "breastmnist": {"auc": 0.901, "acc": 0.863},
}


def main(argv: list[str] | None = None) -> int:
    """Run the recipe: distil each MedMNIST dataset with each method, score clinical metrics, check anonymisation, write
    the report."""
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from distill_apps import SyntheticSet
    from distill_apps.integrations import medical
    from distill_apps.runtime import pick_device

    methods = list(dict.fromkeys(split_list(a.methods, "--methods")))
    options = method_options(a.set, methods)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = str(pick_device(a.device))
    results = []
    per_ipc = 2 + 3 * len(methods)
    bar = StageBar(len(a.datasets) * (1 + len(a.ipc) * per_ipc), "medical", disable=a.json)
    for flag in a.datasets:
        with bar(f"load {flag}"):
            real = medical.load_medmnist(flag, a.data_root, size=a.size)
        entry: dict[str, Any] = {"dataset": flag, "task": real.task, "train_counts": real.class_counts(),
                                 "published_resnet18_28": PUBLISHED.get(flag), "rows": []}
        if a.full_epochs:
            full = SyntheticSet(x=real.x_train.cpu(), y=real.y_train.cpu(), num_classes=real.num_classes,
                                image_shape=real.image_shape, mean=real.mean, std=real.std,
                                meta={"method": "full", "dataset": real.name})
            with bar(f"full-data model {flag}"):
                ev = medical.evaluate_medical(full, real, model=a.model, runs=a.runs, epochs=a.full_epochs,
                                              lr=0.01, seed=a.seed, device=dev, progress=not a.json)
            entry["full"] = ev
        for ipc in a.ipc:
            for base in ("proportional", "balanced"):
                with bar(f"random-{base} IPC {ipc}"):
                    sub = medical.select_subset(real, ipc, budget=base, seed=a.seed)
                    ev = medical.evaluate_medical(sub, real, model=a.model, runs=a.runs, epochs=a.epochs,
                                                  seed=a.seed, device=dev, progress=not a.json)
                entry["rows"].append({"method": f"random-{base}", "ipc": ipc, **ev})
            for method in methods:
                with bar(f"distil {method} IPC {ipc}"):
                    s = medical.distill_medical(method, real, ipc, budget=a.budget, steps=a.steps,
                                                config=options[method] or None, model=a.model, seed=a.seed,
                                                device=dev, progress=not a.json)
                tag = f"{flag}_{method}_ipc{ipc}"
                s.image_grid(out / f"grid_{tag}.png", labels=real.class_names)
                augment = "dsa" if s.meta.get("eval_augment") == "dsa" else None
                with bar(f"evaluate {method} IPC {ipc}"):
                    ev = medical.evaluate_medical(s, real, model=a.model, runs=a.runs, epochs=a.epochs,
                                                  seed=a.seed, device=dev, augment=augment,
                                                  progress=not a.json)
                with bar(f"anonymisation check {method} IPC {ipc}"):
                    anon = medical.anonymisation_check(s, real, png=out / f"anon_{tag}.png", seed=a.seed)
                checks = {k: v for k, v in anon.items() if k not in ("nearest_real_l2", "nearest_real_ssim")}
                path = s.save(out / f"summary_{tag}.safetensors")
                card_checks = {"anonymisation": "passed" if anon["passed"] else "FLAGGED",
                               **{k: v for k, v in checks.items() if k not in ("passed", "png")},
                               "closest_pairs_png": f"anon_{tag}.png"}
                card = data_card(s, dataset=real.name, file=path.name, checks=card_checks,
                                 evaluation={k: ev[k] for k in ("auc_mean", "auc_std", "acc_mean", "acc_std",
                                                                "balanced_acc_mean", "runs", "epochs", "model")})
                card_json, card_md = write_data_card(out / f"card_{tag}", card)
                row = {"method": method, "ipc": ipc, **ev, "steps": s.meta.get("steps"), "anonymisation": checks,
                       "grid": str(out / f"grid_{tag}.png"), "summary": str(path), "data_card": str(card_json),
                       "data_card_md": str(card_md), "anon_png": str(out / f"anon_{tag}.png"),
                       "grid_caption": grid_caption(s, f"{flag}, `{method}`, IPC {ipc}")}
                if s.privacy is not None:
                    row["privacy"] = {k: getattr(s.privacy, k) for k in ("epsilon", "delta", "accountant")}
                entry["rows"].append(row)
        results.append(entry)
    bar.close()
    result = {"recipe": "medical", "model": a.model, "epochs": a.epochs, "budget": a.budget, "runs": a.runs,
              "datasets": results}
    return finish(out, result, _report(result), a.json)


def result_paragraph(r: dict[str, Any]) -> str:
    """The report's opening paragraph: per dataset, the best distilled summary against the best random subset."""
    runs = f"mean of {r['runs']} runs" if r["runs"] > 1 else "1 run"
    parts = []
    for d in r["datasets"]:
        dist = [x for x in d["rows"] if "summary" in x]
        rand = [x for x in d["rows"] if x["method"].startswith("random")]
        if not dist:
            continue
        b = max(dist, key=lambda x: x["auc_mean"])
        text = (f"on {d['dataset']}, the best shareable summary, {b['method']} with {b['ipc']} images per class, "
                f"reached AUC {b['auc_mean']:.3f} (ACC {b['acc_mean']:.3f})")
        same = [x for x in rand if x["ipc"] == b["ipc"]]
        if same:
            rb = max(same, key=lambda x: x["auc_mean"])
            text += f" against {rb['auc_mean']:.3f} for the best random subset of the same size"
        an = b["anonymisation"]
        text += (f"; its anonymisation check {'passed' if an['passed'] else 'FLAGGED ' + str(an['n_flagged'])}"
                 + (" image(s)" if not an["passed"] else ""))
        parts.append(text)
    if not parts:
        return f"No distilled summary was made ({runs}); the table lists the baselines."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + f" ({runs}, model `{r['model']}`, {r['epochs']} epochs)."


def _report(r: dict[str, Any]) -> str:
    """The markdown report: AUC, ACC, balanced ACC, per-class sensitivity/specificity and the anonymisation check per
    method."""
    n = r.get("runs", 1)
    lines = ["# Medical sharing report", "", result_paragraph(r), "",
             f"Model `{r['model']}`, {r['epochs']} epochs on each summary, per-class budget `{r['budget']}`. AUC and "
             "ACC as defined by the MedMNIST benchmark; `anon` = anonymisation check (flagged images / total).", ""]
    for d in r["datasets"]:
        lines += [f"## {d['dataset']} ({d['task']}, train counts {d['train_counts']})", "",
                  "| method | IPC | AUC | ACC | balanced ACC | sens/spec per class | anon |", "|---|---|---|---|---|---|---|"]
        for x in d["rows"]:
            ss = " ; ".join(f"{p['sensitivity']:.2f}/{p['specificity']:.2f}" for p in (x.get("per_class") or []))
            an = x.get("anonymisation")
            anon = "-" if an is None else f"{an['n_flagged']}/{an['synthetic']} {'pass' if an['passed'] else 'FLAG'}"
            lines.append(f"| {x['method']} | {x['ipc']} | {pm(x['auc_mean'], x['auc_std'], n, '.3f')} | "
                         f"{pm(x['acc_mean'], x['acc_std'], n, '.3f')} | "
                         f"{x['balanced_acc_mean']:.3f} | {ss} | {anon} |")
        if d.get("full"):
            f = d["full"]
            lines.append(f"| full data ({f['epochs']} epochs) | all | {f['auc_mean']:.3f} | {f['acc_mean']:.3f} | "
                         f"{f['balanced_acc_mean']:.3f} | | - |")
        if d.get("published_resnet18_28"):
            p = d["published_resnet18_28"]
            lines.append(f"| MedMNIST v2 ResNet-18 (28), published | all | {p['auc']:.3f} | {p['acc']:.3f} | | | - |")
        lines += [""]
        for x in d["rows"]:
            if "grid" in x:
                lines.append(figure_markdown(x["grid"], f"{x['method']} IPC {x['ipc']}", x["grid_caption"]))
                lines.append(figure_markdown(x["anon_png"], f"anonymisation pairs {x['method']} IPC {x['ipc']}", (
                    f"anonymisation check of {d['dataset']} `{x['method']}` IPC {x['ipc']}: synthetic images (left, "
                    "flagged ones first) beside their L2-nearest real training image (right, with index, L2 distance "
                    "and the best SSIM); the title gives the thresholds (real images' own nearest-neighbour median)."
                )))
        lines += ["Shared summaries (each with its data card `card_<...>.json` / `.md`): "
                  + ", ".join(f"`{Path(x['summary']).name}`" for x in d["rows"] if "summary" in x), ""]
    return "\n".join(lines) + "\n"
