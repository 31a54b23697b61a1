"""Cross-architecture benchmark: summaries distilled with ConvNet, trained into the zoo, beside a random subset.

    OMP_NUM_THREADS=1 python benchmarks/cross_arch.py --datasets mnist fashion_mnist --ipc 10 \
        --methods random dm dsa dc mtt --models convnet mlp lenet alexnet vgg11 resnet18 --runs 3 \
        --summaries out/cross_arch --dc-ipc 1 10 --out benchmarks/results/cross_arch_ipc10.json

Rows: the random real subset and each method's summary (distilled here with ``--budget quick`` or ``--steps``,
steps and seconds recorded, or reused from ``--summaries``: ``<method>_<dataset>_ipc<k>.safetensors``, the
CLI's naming, written there after distilling). Columns: the models. Every cell is ``--runs`` fresh networks under
the papers' protocol (``augment=auto``: DSA and 1,000 epochs for DM/DSA/MTT, DC's augmentation for DC with 1,000
epochs where it augments, 300 otherwise); the random row uses ``--random-augment`` (default ``dsa``, the
protocol of most rows). A second table puts DC at ``--dc-ipc`` under the ``dc`` protocol (ConvNet) beside the
DC paper's MNIST figures (91.7 / 97.4 at IPC 1 / 10).

The run is resumable: each finished cell is appended to the JSON file at once (atomic write) and skipped on the
next call; parallel runs write one ``--out`` each and ``--merge`` joins them. ``--estimate`` times one short
training per (dataset, model, protocol) instead and prints the expected seconds of every cell of the full run.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import distill_apps as da
from distill_apps.eval_augment import auto_augment, resolve_augment
from distill_apps.nets import build_model

ZOO = ["convnet", "mlp", "lenet", "alexnet", "vgg11", "resnet18"]
# DC (Zhao, Mopuri & Bilen, ICLR 2021), Table 1: ConvNet test accuracy (%) of DC summaries under DC's protocol
# (MNIST 91.7 / 97.4 and Fashion-MNIST 70.5 / 82.3 at 1 / 10 images per class)
DC_PAPER = {("mnist", 1): 91.7, ("mnist", 10): 97.4, ("fashion_mnist", 1): 70.5, ("fashion_mnist", 10): 82.3}


def summary_path(folder: Path, method: str, dataset: str, ipc: int) -> Path:
    """Where the summary of ``method`` on ``dataset`` at ``ipc`` is kept."""
    return folder / f"{method}_{dataset.replace(':', '-')}_ipc{ipc}.safetensors"


def get_summary(method: str, real: da.RealData, ipc: int, a: argparse.Namespace) -> tuple[da.SyntheticSet, dict]:
    """Reuse ``--summaries/<method>_<dataset>_ipc<k>.safetensors`` or distil (and save it there)."""
    path = summary_path(Path(a.summaries), method, real.name, ipc) if a.summaries else None
    if path is not None and path.exists():
        s = da.SyntheticSet.load(path)
        return s, {"source": str(path), "steps": s.meta.get("steps"), "distill_seconds": s.meta.get("seconds")}
    cfg = dict(a.configs.get(method) or {})
    t0 = time.perf_counter()
    s = da.distill(method, real, ipc, steps=a.steps, budget=a.budget, seed=a.seed, device=a.device, config=cfg,
                   progress=not a.quiet)
    secs = round(time.perf_counter() - t0, 1)
    s.meta["seconds"] = secs
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        s.save(path)
    return s, {"source": "distilled", "steps": s.meta.get("steps"), "distill_seconds": secs, "config": cfg}


def save(out: Path, cells: list[dict]) -> None:
    """Write the cells as JSON and markdown, each atomically."""
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cells, indent=1))
    os.replace(tmp, out)
    md = out.with_suffix(".md.tmp")
    md.write_text(markdown(cells))
    os.replace(md, out.with_suffix(".md"))


def fmt(c: dict | None) -> str:
    """``mean ± std`` of a cell, or ``-``."""
    return "-" if c is None else f"{c['accuracy_mean']:.1f} ± {c['accuracy_std']:.1f}"


def markdown(cells: list[dict]) -> str:
    """One cross-architecture table per dataset, then the DC-protocol table."""
    out = []
    grid = [c for c in cells if c["table"] == "cross_arch"]
    for ds in dict.fromkeys(c["dataset"] for c in grid):
        rows = [c for c in grid if c["dataset"] == ds]
        models = list(dict.fromkeys(c["model"] for c in rows))
        methods = list(dict.fromkeys(c["method"] for c in rows))
        ipc = rows[0]["ipc"]
        out += [f"### {ds}, IPC {ipc}: test accuracy (%), mean ± std over {rows[0]['runs']} runs", "",
                "| row | steps | protocol | " + " | ".join(models) + " |", "|---" * (len(models) + 3) + "|"]
        for m in methods:
            mine = {c["model"]: c for c in rows if c["method"] == m}
            first = next(iter(mine.values()))
            proto = f"{first['epochs']} ep, {first['augment_label']}"
            out.append(f"| {m} | {first.get('steps', '-')} | {proto} | "
                       + " | ".join(fmt(mine.get(x)) for x in models) + " |")
        out.append("")
    dc = [c for c in cells if c["table"] == "dc_protocol"]
    if dc:
        out += ["### DC under the `dc` protocol (ConvNet) beside the DC paper", "",
                "| dataset | IPC | steps | protocol | ours (%) | DC paper (%) |", "|---|---|---|---|---|---|"]
        for c in dc:
            paper = DC_PAPER.get((c["dataset"], c["ipc"]))
            out.append(f"| {c['dataset']} | {c['ipc']} | {c.get('steps', '-')} | {c['epochs']} ep, "
                       f"{c['augment_label']} | {fmt(c)} | {'-' if paper is None else paper} |")
        out.append("")
    return "\n".join(out)


def cell(table: str, method: str, s: da.SyntheticSet, real: da.RealData, ipc: int, model: str, augment: str,
         info: dict, a: argparse.Namespace) -> dict:
    """Evaluate one summary with one model and augmentation; returns the result row."""
    r = da.evaluate(s, real, model=model, runs=a.runs, epochs=a.epochs, augment=augment, seed=a.seed,
                    device=a.device)
    detail = r.extra.get("augment_detail")
    return {"table": table, "dataset": real.name, "method": method, "ipc": ipc, "model": model,
            "accuracy_mean": 100 * r.accuracy_mean, "accuracy_std": 100 * r.accuracy_std,
            "accuracies": [100 * v for v in r.accuracies], "runs": r.runs, "epochs": r.epochs,
            "augment": r.augment, "augment_detail": detail,
            "augment_label": r.augment + (f" ({detail})" if detail and detail != r.augment else ""),
            "eval_seconds": round(r.seconds, 1), "requested_augment": augment, **info}


def key(c: dict) -> tuple:
    """What identifies a cell (a rerun skips cells already done)."""
    return c["table"], c["dataset"], c["method"], c["ipc"], c["model"], c["requested_augment"]


def merge(out: Path, files: list[str]) -> list[dict]:
    """Join the cells of ``out`` and ``files`` (runs split across processes, one ``--out`` each), first copy of
    each cell kept, in table, dataset and row order; written back to ``out`` with its markdown."""
    cells: dict[tuple, dict] = {}
    for f in [out, *map(Path, files)]:
        for c in json.loads(f.read_text()) if f.exists() else []:
            cells.setdefault(key(c), c)
    order = {m: i for i, m in enumerate(["random", "dm", "dsa", "dc", "mtt"])}
    datasets = list(dict.fromkeys(c["dataset"] for c in cells.values()))
    merged = sorted(cells.values(), key=lambda c: (c["table"] != "cross_arch", datasets.index(c["dataset"]),
                                                    order.get(c["method"], len(order))))
    save(out, merged)
    return merged


def estimate(a: argparse.Namespace) -> int:
    """Time a short training (and the test pass) per dataset x model x protocol; print each full cell's cost."""
    rows = []
    for name in a.datasets:
        real = da.load_dataset(name, a.data_root)
        s = da.distill("random", real, a.ipc, seed=a.seed, progress=False)
        for model in a.models:
            seen = set()
            for aug in ("dsa", "dc", "none"):
                g = torch.Generator().manual_seed(0)
                net = build_model(model, real.image_shape[0], real.num_classes, real.image_shape[1:], generator=g)
                ea = resolve_augment(aug, s, real, net)
                if ea.label in seen:  # dc resolves to none off MNIST
                    continue
                seen.add(ea.label)
                da.train_on_summary(s, net, epochs=1, generator=g, augment=ea)  # warm-up: first-call costs
                t0, c0 = time.perf_counter(), time.process_time()
                da.train_on_summary(s, net, epochs=a.estimate_epochs, generator=g, augment=ea)
                per_epoch = (time.perf_counter() - t0) / a.estimate_epochs
                cpu_epoch = (time.process_time() - c0) / a.estimate_epochs
                t0, c0 = time.perf_counter(), time.process_time()
                da.score(net, (real.x_test[:1000], real.y_test[:1000]))
                scale = len(real.y_test) / 1000
                test, cpu_test = (time.perf_counter() - t0) * scale, (time.process_time() - c0) * scale
                epochs = a.epochs or ea.default_epochs()
                rows.append({"dataset": real.name, "model": model, "augment": ea.label, "epochs": epochs,
                             "seconds_per_epoch": round(per_epoch, 4), "test_seconds": round(test, 1),
                             "cell_seconds": round(a.runs * (epochs * per_epoch + test), 1),
                             "cpu_seconds_per_epoch": round(cpu_epoch, 4), "cpu_test_seconds": round(cpu_test, 1),
                             "cell_cpu_seconds": round(a.runs * (epochs * cpu_epoch + cpu_test), 1),
                             "runs": a.runs, "ipc": a.ipc, "threads": torch.get_num_threads(),
                             "load_average": round(os.getloadavg()[0], 1)})
                print(json.dumps(rows[-1]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: distil or load the summaries, evaluate every row x model cell, write JSON and markdown after each.
    """
    from distill_apps.options import add_set_argument, make_parser, method_options

    ap = make_parser("python benchmarks/cross_arch.py", __doc__)
    ap.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--methods", nargs="*", default=["random", "dm", "dsa", "dc", "mtt"])
    ap.add_argument("--models", nargs="+", default=ZOO)
    ap.add_argument("--dc-ipc", nargs="*", type=int, default=[1, 10], help="DC under the dc protocol (ConvNet)")
    ap.add_argument("--random-augment", default="dsa", help="protocol of the random row (dsa, dc, none)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="default: the papers' (1000 augmenting, else 300)")
    ap.add_argument("--budget", choices=("quick", "paper"), default="quick")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (overrides --budget)")
    add_set_argument(ap)
    ap.add_argument("--summaries", default=None, help="folder of summaries to reuse (and to save distilled ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--estimate", action="store_true", help="print each full cell's expected seconds and stop")
    ap.add_argument("--estimate-epochs", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/cross_arch.json")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="join these cell files (parallel runs) into --out and stop")
    a = ap.parse_args(argv)
    if a.merge:
        print(markdown(merge(Path(a.out), a.merge)))
        return 0
    a.configs = method_options(a.set, sorted(set(a.methods) | {"dc"}))
    if a.estimate:
        return estimate(a)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cells: list[dict] = json.loads(out.read_text()) if out.exists() else []
    done = {key(c) for c in cells}
    plan = [("cross_arch", m, a.ipc, model, a.random_augment if m == "random" else "auto")
            for m in a.methods for model in a.models]
    plan += [("dc_protocol", "dc", k, "convnet", "dc") for k in a.dc_ipc]
    for name in a.datasets:
        real = da.load_dataset(name, a.data_root)
        summaries: dict[tuple[str, int], tuple] = {}
        for table, method, ipc, model, aug in plan:
            if (table, real.name, method, ipc, model, aug) in done:
                continue
            if (method, ipc) not in summaries:
                summaries[(method, ipc)] = get_summary(method, real, ipc, a)
            s, info = summaries[(method, ipc)]
            resolved = auto_augment(s) if aug == "auto" else aug
            same = [c for c in cells if (c["dataset"], c["method"], c["ipc"], c["model"], c["augment"]) ==
                    (real.name, method, ipc, model, resolved)]  # measured already under the other table
            c = {**same[0], "table": table, "requested_augment": aug} if same else \
                cell(table, method, s, real, ipc, model, aug, info, a)
            cells.append(c)
            done.add(key(c))
            save(out, cells)
            if not a.quiet:
                print(json.dumps({k: c[k] for k in ("table", "dataset", "method", "ipc", "model", "accuracy_mean",
                                                    "epochs", "augment_label", "eval_seconds")}), flush=True)
    print(markdown(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
