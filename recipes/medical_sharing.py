"""Recipe ``distill-apps recipe medical``: distil MedMNIST datasets into small shareable summaries.

For every dataset (PneumoniaMNIST and BreastMNIST by default) and IPC, distils with each method (``dm``, ``dsa``,
the private ``dp-dm``, ...), builds the random-subset baselines (class-proportional and class-balanced) and trains
the full-data model; every one is evaluated with MedMNIST's AUC and ACC (plus balanced accuracy and per-class
sensitivity/specificity), and every distilled summary goes through the anonymisation check (nearest real image
by L2 and SSIM, flagged when closer than real images are to each other).

Writes ``report.md``, ``results.json``, ``grid_<dataset>_<method>_ipc<k>.png`` and
``anon_<dataset>_<method>_ipc<k>.png`` under ``--out``; ``--json`` prints one JSON object.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from distill_apps.recipes.reporting import finish


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="distill-apps recipe medical", description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "breastmnist"], help="MedMNIST 2D flags")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--ipc", type=int, nargs="+", default=[10], help="e.g. 1 10 50")
    ap.add_argument("--methods", nargs="+", default=["dm", "dp-dm"], help="registered methods, e.g. dm dsa dp-dm")
    ap.add_argument("--budget", default="balanced", choices=("balanced", "proportional"))
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (default: each method's quick preset)")
    ap.add_argument("--epsilon", type=float, default=10.0, help="target epsilon of the private methods")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--model", default="convnet-d2-w32")
    ap.add_argument("--epochs", type=int, default=100, help="epochs of training on a summary")
    ap.add_argument("--full-epochs", type=int, default=10, help="epochs of the full-data model (0 skips it)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default="medical-report")
    ap.add_argument("--json", action="store_true")
    return ap


PUBLISHED = {  # MedMNIST v2 (Yang et al. 2023), ResNet-18 (28), test AUC / ACC
    "pneumoniamnist": {"auc": 0.944, "acc": 0.854}, "breastmnist": {"auc": 0.901, "acc": 0.863},
}


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    import distill_apps as da
    from distill_apps.integrations import medical
    from distill_apps.runtime import pick_device
    from distill_apps.summary import SyntheticSet

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = str(pick_device(a.device))
    results = []
    for flag in a.datasets:
        real = medical.load_medmnist(flag, a.data_root, size=a.size)
        entry: dict[str, Any] = {"dataset": flag, "task": real.task, "train_counts": real.class_counts(),
                                 "published_resnet18_28": PUBLISHED.get(flag), "rows": []}
        if a.full_epochs:
            full = SyntheticSet(x=real.x_train.cpu(), y=real.y_train.cpu(), num_classes=real.num_classes,
                                image_shape=real.image_shape, mean=real.mean, std=real.std,
                                meta={"method": "full", "dataset": real.name})
            ev = medical.evaluate_medical(full, real, model=a.model, runs=a.runs, epochs=a.full_epochs,
                                          lr=0.01, seed=a.seed, device=dev)
            entry["full"] = ev
        for ipc in a.ipc:
            for base in ("proportional", "balanced"):
                sub = medical.select_subset(real, ipc, budget=base, seed=a.seed)
                ev = medical.evaluate_medical(sub, real, model=a.model, runs=a.runs, epochs=a.epochs, seed=a.seed,
                                              device=dev)
                entry["rows"].append({"method": f"random-{base}", "ipc": ipc, **ev})
            for method in a.methods:
                cfg = ({"epsilon": a.epsilon, "delta": a.delta} if method.startswith("dp-") else None)
                s = medical.distill_medical(method, real, ipc, budget=a.budget, steps=a.steps, config=cfg,
                                            model=a.model, seed=a.seed, device=dev, progress=not a.json)
                tag = f"{flag}_{method}_ipc{ipc}"
                s.image_grid(out / f"grid_{tag}.png")
                augment = "dsa" if s.meta.get("eval_augment") == "dsa" else None
                ev = medical.evaluate_medical(s, real, model=a.model, runs=a.runs, epochs=a.epochs, seed=a.seed,
                                              device=dev, augment=augment)
                anon = medical.anonymisation_check(s, real, png=out / f"anon_{tag}.png", seed=a.seed)
                row = {"method": method, "ipc": ipc, **ev, "steps": s.meta.get("steps"),
                       "anonymisation": {k: v for k, v in anon.items()
                                         if k not in ("nearest_real_l2", "nearest_real_ssim")},
                       "grid": str(out / f"grid_{tag}.png")}
                if "privacy" in s.meta:
                    row["privacy"] = {k: s.meta["privacy"][k] for k in ("epsilon", "delta", "accountant")}
                entry["rows"].append(row)
        results.append(entry)
    result = {"recipe": "medical", "model": a.model, "epochs": a.epochs, "budget": a.budget, "datasets": results}
    return finish(out, result, _report(result), a.json)


def _report(r: dict[str, Any]) -> str:
    lines = ["# Medical sharing report", "",
             f"Model `{r['model']}`, {r['epochs']} epochs on each summary, per-class budget `{r['budget']}`. AUC and "
             "ACC as defined by the MedMNIST benchmark; `anon` = anonymisation check (flagged images / total).", ""]
    for d in r["datasets"]:
        lines += [f"## {d['dataset']} ({d['task']}, train counts {d['train_counts']})", "",
                  "| method | IPC | AUC | ACC | balanced ACC | sens/spec per class | anon |", "|---|---|---|---|---|---|---|"]
        for x in d["rows"]:
            ss = " ; ".join(f"{p['sensitivity']:.2f}/{p['specificity']:.2f}" for p in (x.get("per_class") or []))
            an = x.get("anonymisation")
            anon = "-" if an is None else f"{an['n_flagged']}/{an['synthetic']} {'pass' if an['passed'] else 'FLAG'}"
            lines.append(f"| {x['method']} | {x['ipc']} | {x['auc_mean']:.3f} | {x['acc_mean']:.3f} | "
                         f"{x['balanced_acc_mean']:.3f} | {ss} | {anon} |")
        if d.get("full"):
            f = d["full"]
            lines.append(f"| full data ({f['epochs']} epochs) | all | {f['auc_mean']:.3f} | {f['acc_mean']:.3f} | "
                         f"{f['balanced_acc_mean']:.3f} | | - |")
        if d.get("published_resnet18_28"):
            p = d["published_resnet18_28"]
            lines.append(f"| MedMNIST v2 ResNet-18 (28), published | all | {p['auc']:.3f} | {p['acc']:.3f} | | | - |")
        lines += ["", "Grids: " + ", ".join(f"`{Path(x['grid']).name}`" for x in d["rows"] if "grid" in x), ""]
    return "\n".join(lines) + "\n"
