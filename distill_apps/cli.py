"""``distill-apps`` command line: distill, evaluate, teacher, compare, info, export, methods, datasets, recipe.

Every user error prints one paragraph and exits with status 2; nothing prints a traceback for bad input.
"""
from __future__ import annotations

import argparse
import os
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, DistillError
from .options import VERBOSE_HELP, HelpFormatter, add_set_argument
from .quiet import quieted

RECIPES = {
    "continual": "continual_replay",
    "federated": "federated_distilled",
    "nas-proxy": "nas_proxy",
    "private-sharing": "private_sharing",
    "medical": "medical_sharing",
    "robustness": "robustness",
    "textures": "textures",
}


def _common(p: argparse.ArgumentParser) -> None:
    """Options every command shares: --device, --data-root and --json."""
    p.add_argument("--data-root", default=None, help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def _data_options(p: argparse.ArgumentParser, distill: bool) -> None:
    """How a --dataset is read: image-folder options, and (when distilling) flips, ZCA and downloads."""
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="image folders: resize every image (shorter side to N, centre crop N x N)")
    p.add_argument("--max-per-class", type=int, default=None, metavar="K",
                   help="image folders: keep a seeded subset of at most K images per class and split")
    if distill:
        p.add_argument("--zca", nargs="?", type=float, const=0.1, default=None, metavar="REG",
                       help="ZCA-whiten the images (KIP/MTT/FRePO/RFAD on CIFAR; regulariser REG, default 0.1); "
                            "recorded in the summary and applied again at evaluation")
        p.add_argument("--flip", choices=("auto", "yes", "no"), default="auto",
                       help="may DSA flip the images? auto: the dataset's own setting (no for digits/MNIST and "
                            "grey images, yes for CIFAR and colour folders)")
        p.add_argument("--download", action="store_true",
                       help="let torchvision download a registered dataset that can download (off: offline)")


def _load_data(a: argparse.Namespace):
    """Load ``--dataset`` with the command's image-folder, flip, ZCA and download options."""
    from .data import load_dataset

    flip = {"auto": None, "yes": True, "no": False}[getattr(a, "flip", "auto")]
    return load_dataset(a.dataset, a.data_root, getattr(a, "download", False), image_size=a.image_size,
                        zca=getattr(a, "zca", None) or False, flip=flip, max_per_class=a.max_per_class,
                        progress=not getattr(a, "json", False))


def build_parser() -> argparse.ArgumentParser:
    """The ``distill-apps`` argument parser: every command and its options, with defaults in --help."""
    from . import __version__

    ap = argparse.ArgumentParser(prog="distill-apps", description="Dataset distillation and its applications.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    ap.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .modality import ipc_help

    d = sub.add_parser("distill", help="distil a dataset into a summary (images, graphs, interactions or text)")
    d.add_argument("--dataset", default=None, help="a registered dataset (`distill-apps datasets`) or "
                   "imagefolder:<path> (one sub-folder per class; train/ and test/ when split); default: the "
                   "method's modality's (digits, cora, ml-100k, sst2, mutag)")
    d.add_argument("--method", default="dm", help="distillation method (`distill-apps methods` lists them)")
    d.add_argument("--ipc", type=int, default=None, help="the budget, counted per modality: " + ipc_help()
                   + f"; default {DEFAULT_IPC} (see the default run's note)")
    d.add_argument("--steps", type=int, default=None, help="outer iterations (default: the --budget preset)")
    d.add_argument("--budget", choices=("quick", "paper"), default="quick",
                   help="quick: a CPU-minutes preset; paper: the paper's iteration count")
    d.add_argument("--model", default=None, help="network (default: the modality's: convnet, gcn, inf-ae, textcnn)")
    d.add_argument("--seed", type=int, default=0, help="seed of the distillation (and of the random baseline)")
    d.add_argument("--out", default=None, help="summary path (default out/<method>_<dataset>_ipc<k>.safetensors)")
    d.add_argument("--checkpoint-every", type=int, default=0,
                   help="save a checkpoint every N steps (<out>.ckpt; the last two are kept)")
    d.add_argument("--resume", nargs="?", const="auto", default=None, choices=("auto", "require"),
                   help="continue from <out>.ckpt (starts fresh, with a warning, when there is none; "
                        "--resume=require refuses instead)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace an existing checkpoint, summary or grid of another run instead of refusing")
    d.add_argument("--max-memory", type=float, default=None, metavar="GB",
                   help="stop (after checkpointing) with advice once the process holds more than GB")
    d.add_argument("--config", default=None, help="YAML file of method options")
    d.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="override one method option (repeatable; VALUE read as YAML)")
    d.add_argument("--eval-runs", type=int, default=3, help="evaluation runs (fresh networks) of the summary and "
                   "of the random subset")
    d.add_argument("--eval-epochs", type=int, default=None,
                   help="evaluation epochs (default: 300 under --budget quick, the protocol's under paper)")
    d.add_argument("--no-eval", action="store_true", help="skip the evaluation against a random subset")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    _data_options(d, distill=True)
    _common(d)

    e = sub.add_parser("evaluate", help="score a summary file of any kind with its modality's protocol")
    e.add_argument("path")
    e.add_argument("--dataset", default=None, help="default: the data the summary records (a registered name or "
                   "its image folder)")
    e.add_argument("--model", default=None, help="default: convnet for images; graphs, interactions and text use "
                   "their own (gcn, inf-ae, textcnn)")
    e.add_argument("--runs", type=int, default=3, help="evaluation runs (fresh networks; mean ± std from 2)")
    e.add_argument("--epochs", type=int, default=None, help="default: the protocol's")
    e.add_argument("--protocol", default=None, help="images: train (from scratch; the default), softlabel (a teacher "
                   "relabels each batch; the default of sre2l/rded summaries), krr (kernel methods) or schedule (DD); "
                   "graphs and text: train; interactions: krr (the closed-form ∞-AE)")
    e.add_argument("--models", default=None, metavar="M1,M2,...",
                   help="images: a cross-architecture table over comma-separated models (e.g. convnet,mlp,lenet,"
                        "alexnet,vgg11,resnet18), each also trained on a random real subset of the same size")
    e.add_argument("--no-baseline", action="store_true", help="with --models: skip the random-subset baseline")
    e.add_argument("--augment", default=None,
                   help="images: evaluation augmentation: auto (the summary's paper's, default), dc, dsa or none "
                        "(softlabel: none, crop, cutmix or crop_cutmix)")
    e.add_argument("--force-dataset", action="store_true",
                   help="evaluate on --dataset even when the summary was distilled from another one (warns)")
    _data_options(e, distill=False)
    e.add_argument("--teacher", default=None, metavar="PATH", help="teacher file for --protocol softlabel")
    e.add_argument("--metrics", choices=("accuracy", "fair"), default="accuracy",
                   help="fair: also a random subset at the same IPC, and DD-Ranking's HLR, IOR, LRS, ARS")
    e.add_argument("--full-data-acc", type=float, default=None, metavar="ACC",
                   help="--metrics fair: full-data accuracy in [0, 1] (default: train --model on all data, cached)")
    e.add_argument("--attack", choices=("fgsm", "pgd"), default=None, help="attack the trained students")
    e.add_argument("--eps", type=float, nargs="+", default=None, metavar="E",
                   help="attack budgets, L-infinity in pixel units [0, 1] (e.g. 0.1 0.3 for MNIST)")
    e.add_argument("--pgd-steps", type=int, default=10, help="PGD steps (step size eps/4)")
    e.add_argument("--attack-n", type=int, default=1000, help="test images attacked (0: all)")
    _common(e)
    t = sub.add_parser("teacher", help="train (or check) a teacher for sre2l, rded and the softlabel protocol")
    t.add_argument("--dataset", default=None, help="default digits (with --teacher: check it is for this dataset)")
    t.add_argument("--model", default="convnet-bn", help="e.g. convnet-bn, convnet-w64-bn, resnet18-bn")
    t.add_argument("--epochs", type=int, default=None, help="passes over the real training split (default 2)")
    t.add_argument("--seed", type=int, default=0, help="seed of the teacher's initialisation and batches")
    t.add_argument("--teacher", default=None, metavar="PATH", help="load and check this teacher file instead")
    t.add_argument("--out", default=None, help="also write the teacher here (refuses to overwrite)")
    t.add_argument("--retrain", action="store_true", help="train again even if the cache holds this teacher")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    _common(t)
    _tool_parsers(sub)


    m = sub.add_parser("methods", help="list every registered method: family, modality, default dataset, paper, "
                       "and what --ipc counts in each modality")
    m.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s = sub.add_parser("datasets", help="list datasets, their modality and whether their files are present")
    s.add_argument("--data-root", default=None, help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    r = sub.add_parser("recipe", help="run an end-to-end recipe (`recipe --help` lists them)", add_help=False,
                       usage="distill-apps recipe NAME [options]  (distill-apps recipe NAME --help: its options)")
    r.add_argument("-h", "--help", action=_RecipeList)
    r.add_argument("name", nargs="?", choices=sorted(RECIPES), help="the recipe to run")
    r.add_argument("rest", nargs=argparse.REMAINDER, help="the recipe's own options")
    for p in sub.choices.values():  # every command's --help shows each option's default (and keeps line breaks)
        p.formatter_class = HelpFormatter
    return ap


def _recipe_module(name: str):
    """Import the module of recipe ``name``, or refuse naming the recipes there are."""
    import importlib

    try:
        return importlib.import_module(f"distill_apps.recipes.{RECIPES[name]}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("distill_apps.recipes"):
            raise DistillError(f"Recipe {name!r} is not available in this version.") from exc
        raise


def recipe_listing() -> str:
    """``distill-apps recipe --help``: every recipe with one line saying what it does."""
    lines = ["usage: distill-apps recipe NAME [options]", "", "Run an end-to-end recipe; `distill-apps recipe NAME "
             "--help` shows its options and their defaults.", "", "recipes:"]
    for name in sorted(RECIPES):
        try:
            mod = _recipe_module(name)
            doc = getattr(mod, "SUMMARY", None) or (mod.__doc__ or "").strip().split("\n")[0]
        except (DistillError, ImportError) as exc:
            doc = f"(unavailable: {exc})"
        doc = re.sub(r"^Recipe[^:]*:\s*", "", doc)
        lines.append(f"  {name:<17} {doc}")
    return "\n".join(lines)


class _RecipeList(argparse.Action):
    """``-h/--help`` of ``distill-apps recipe``: list the recipes instead of the generic usage."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="list the recipes")

    def __call__(self, parser, namespace, values, option_string=None):
        print(recipe_listing())
        parser.exit()


def _privacy(summary: Any) -> dict[str, Any] | None:
    """A summary's privacy accounting for the JSON output (epsilon, delta, accountant, ...); None when none."""
    p = summary.privacy
    return None if p is None else p.as_dict()


def _emit(obj: dict[str, Any], as_json: bool, text: Callable[[], str]) -> None:
    """Print ``result`` as one JSON object (``--json``) or as the text ``text()`` makes."""
    out = json.dumps(obj, indent=None if as_json else 2, default=str) if as_json else text()
    if out:  # a text with nothing left to say (its lines printed as they happened) prints nothing
        print(out)


def _parse_sets(items: list[str], method: str) -> dict[str, Any]:
    """``--set KEY=VALUE`` / ``--set METHOD.KEY=VALUE`` for the one method of ``distill`` (:mod:`.options`)."""
    from .options import method_options

    return method_options(items, [method])[method]


def _check_distill_options(a: argparse.Namespace):
    """Range- and type-check the options and build the method config before any data is loaded; returns it."""
    from .config import load_config_file, make_config
    from .engine import METHODS
    from .validation import check_float, check_int

    if a.steps is not None:
        check_int("--steps", a.steps, 0)
    check_int("--checkpoint-every", a.checkpoint_every, 0, hint="0 (the default) writes no checkpoints.")
    check_int("--seed", a.seed, 0)
    check_int("--eval-runs", a.eval_runs, 1)
    if a.eval_epochs is not None:
        check_int("--eval-epochs", a.eval_epochs, 1)
    if a.max_memory is not None:
        check_float("--max-memory", a.max_memory, 0.0, lo_open=True)
    config = load_config_file(a.config) if a.config else {}
    config.update(_parse_sets(a.set, a.method))
    cls = METHODS.get(a.method)
    cfg = make_config(cls.Config, config, a.method)
    total = a.steps if a.steps is not None else (cfg.steps if a.budget == "paper" else cfg.quick_steps)
    if total == 0 and cls.Config().steps > 0:  # a method that optimises, asked to run no step
        raise DistillError(
            f"{a.method} would run 0 steps ({'--steps 0' if a.steps is not None else 'its configured steps are 0'}) "
            "and save its initialisation as if it were distilled. Give --steps N (N >= 1), or use --method random "
            "for a summary of random real images.")
    return cfg


def cmd_distill(a: argparse.Namespace) -> int:
    """``distill-apps distill``: distil, save (summary + PNG), then score it against a random subset."""
    from .engine import METHODS, distill
    from .evaluate import evaluate
    from .modality import MODALITIES, check_modality, default_dataset
    from .outputs import plan_outputs, save_or_rescue, summary_bytes
    from .summary import SyntheticSet

    cfg = _check_distill_options(a)
    note = default_run_note(a)
    a.ipc = DEFAULT_IPC if a.ipc is None else a.ipc
    cls = METHODS.get(a.method)
    dataset = a.dataset or default_dataset(cls)
    check_modality(cls.modality, dataset, f"Method {a.method!r}")  # before loading anything
    a.dataset = dataset
    real = _load_data(a)
    real.check_ipc(a.ipc)  # before any file is touched
    out = Path(a.out or f"out/{a.method}_{re.sub(r'[^A-Za-z0-9._-]+', '-', real.name).strip('-')}_ipc{a.ipc}.safetensors")
    image_shape = getattr(real, "image_shape", None)
    need = summary_bytes(max(a.ipc, 1) * real.num_classes, image_shape, real.num_classes) if image_shape else 0
    files = plan_outputs(out, need_bytes=need, checkpointing=a.checkpoint_every > 0, resume=bool(a.resume),
                         overwrite=a.overwrite)
    ckpt = files.checkpoint
    summary = distill(a.method, real, a.ipc, steps=a.steps, budget=a.budget, model=a.model, seed=a.seed,
                      device=a.device, config=cfg, checkpoint=ckpt, checkpoint_every=a.checkpoint_every,
                      resume=a.resume or False, overwrite=a.overwrite, progress=not (a.no_progress or a.json),
                      max_memory_gb=a.max_memory)
    from .engine import is_main_process, shutdown_distributed

    main_process = is_main_process()
    shutdown_distributed()  # all ranks are done with collectives; leave the group cleanly before exiting
    if not main_process:  # under torchrun only rank 0 writes and evaluates
        return 0
    save_or_rescue(summary, out, ckpt)
    grid = isinstance(summary, SyntheticSet)
    if grid:
        try:
            names = getattr(real, "class_names", None)
            summary.image_grid(files.grid, transform=getattr(real, "transform", None),
                               labels=names if names and len(names) == summary.num_classes else True)
        except DistillError as exc:
            raise DistillError(f"The summary was saved to {out}, but its PNG grid was not: {exc}") from exc
    saved = f"saved {out} ({summary.meta.get('steps')} steps)" + (f" and {out.with_suffix('.png')}" if grid else "")
    print(saved, file=sys.stderr if a.json else sys.stdout, flush=True)  # now, not after the evaluation
    result: dict[str, Any] = {"path": str(out), "method": a.method, "dataset": real.name, "ipc": a.ipc,
                              "steps": summary.meta.get("steps"), "budget": a.budget if a.steps is None else None,
                              "privacy": _privacy(summary), "default_run": note}
    if not a.no_eval:
        modality = MODALITIES.get(cls.modality)
        epochs = a.eval_epochs if a.eval_epochs is not None else (
            modality.quick_eval_epochs if a.budget == "quick" else None)
        opts = {"runs": a.eval_runs, "epochs": epochs, "device": a.device, "model": a.model,
                "progress": not (a.no_progress or a.json)}
        res = evaluate(summary, real, **opts)  # teacher-based summaries: their softlabel protocol and teacher
        if res.protocol == "softlabel":
            opts.update(protocol="softlabel", teacher=summary.meta["teacher"]["path"])
        if res.augment is not None:
            opts["augment"] = res.augment  # the baseline is scored under the very same protocol
        base = evaluate(modality.baseline(real, summary, a.ipc, a.seed, a.device), real, **opts)
        result.update({"accuracy_mean": res.accuracy_mean, "accuracy_std": res.accuracy_std, "runs": res.runs,
                       "model": res.model, "protocol": res.protocol, "epochs": res.epochs, "metric": res.metric,
                       "augment": res.augment, "augment_detail": res.extra.get("augment_detail"),
                       "random_accuracy_mean": base.accuracy_mean, "random_accuracy_std": base.accuracy_std})

    def text() -> str:
        lines = []  # the `saved` line is already printed
        if summary.privacy is not None:
            lines.append(f"privacy: {summary.privacy}")
        if not a.no_eval:
            lines.append(f"{a.method:>8} ipc {a.ipc}: {res.score()} on {real.name} test ({res.runs} runs, "
                         f"{res.protocol} protocol, {res.model}" + (f", {res.epochs} epochs" if res.epochs is not None else "")
                         + (f", augment {res.augment})" if res.augment else ")"))
            lines.append(f"{'random':>8} ipc {a.ipc}: {base.score()} (same protocol)")
        if note:
            lines.append(note)
        return "\n".join(lines)

    _emit(result, a.json, text)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    """``distill-apps evaluate``: score a summary file of any kind (one model, a model table, fair scores or attacks)."""
    from .eval_augment import check_augment
    from .evaluate import evaluate
    from .summaries import load_summary
    from .summary import SyntheticSet
    from .validation import check_int

    check_int("--runs", a.runs, 1)
    if a.epochs is not None:
        check_int("--epochs", a.epochs, 1)
    summary = load_summary(a.path)  # any kind: SyntheticSet, CondensedGraph, GraphSet, ...
    opts = {k: v for k, v in {"model": a.model, "protocol": a.protocol, "epochs": a.epochs}.items() if v is not None}
    if a.augment is not None:
        opts["augment"] = a.augment if a.protocol == "softlabel" else check_augment(a.augment)
    if a.teacher:
        if (a.protocol or summary.meta.get("eval_protocol")) != "softlabel":
            raise DistillError(f"--teacher is for --protocol softlabel; the protocol here is {a.protocol or 'train'!r}.")
        opts["teacher"] = a.teacher
    if (a.attack is None) != (a.eps is None):
        raise DistillError("--attack and --eps go together: e.g. --attack pgd --eps 0.1 0.3.")
    if (a.attack or a.metrics == "fair") and not isinstance(summary, SyntheticSet):
        raise ConfigError(f"--attack and --metrics fair score image summaries; {a.path} is a {summary.kind} summary.")
    if a.force_dataset:
        opts["force_dataset"] = True
    data = a.dataset
    if isinstance(summary, SyntheticSet) and a.dataset:
        from .modality import check_modality

        check_modality("image", a.dataset, f"An image summary ({summary.meta.get('method', 'unknown method')})")
        recorded = ((summary.meta.get("data") or {}).get("source") or {}).get("image_size")
        if a.dataset.startswith("imagefolder:") and a.image_size is None and recorded:
            a.image_size = tuple(recorded)  # a folder given anew is resized as it was for distillation
        data = _load_data(a)
    if a.models is not None:
        from .cross_arch import evaluate_cross_arch, parse_models

        if a.model is not None:
            raise ConfigError("Give either --model (one network) or --models (a comma-separated list), not both.")
        if not isinstance(summary, SyntheticSet):
            raise ConfigError(f"--models compares image networks; {a.path} is a {summary.kind} summary: use --model.")
        models = parse_models(a.models)
        table = evaluate_cross_arch(summary, data, models=models, runs=a.runs, epochs=a.epochs,
                                    augment=check_augment(opts.get("augment", "auto")), baseline=not a.no_baseline,
                                    protocol=opts.get("protocol", "train"), device=a.device, data_root=a.data_root,
                                    progress=not a.json, force_dataset=a.force_dataset)
        _emit({"path": a.path, **table.as_dict()}, a.json, lambda: f"{a.path}\n{table.table()}")
        return 0
    common = dict(runs=a.runs, device=a.device, data_root=a.data_root, progress=not a.json, **opts)
    if a.attack:
        from .robustness import robust_evaluate

        res = robust_evaluate(summary, data, attack=a.attack, eps=a.eps, steps=a.pgd_steps, n=a.attack_n or None,
                              **common)
    else:
        res = evaluate(summary, data, **common)
    if a.metrics == "fair":
        from .data import data_for_summary
        from .fair import fair_scores

        real = data_for_summary(summary, data, a.data_root)
        res.extra["fair"] = fair_scores(summary, real, protocol=res.protocol, teacher=a.teacher, model=a.model,
                                        runs=a.runs, epochs=a.epochs, device=a.device,
                                        full_data_acc=a.full_data_acc, progress=not a.json, base=res)
    privacy = summary.privacy

    def text() -> str:
        lines = [f"{a.path}: {res}"]
        if "robust" in res.extra:
            r = res.extra["robust"]
            how = f"{r['steps']} steps of {r['step_size']}" if a.attack == "pgd" else "one step"
            lines.append(f"robust accuracy under {a.attack} ({how}, {r['n_test']} test images): " + ", ".join(
                f"eps {e}: {100 * v:.2f} %" for e, v in r["accuracy"].items()))
        if "fair" in res.extra:
            f = res.extra["fair"]
            acc = f["accuracy"]
            lines.append(f"random subset (ipc {f['ipc']}, {f['protocol']}): {100 * acc['random']:.2f} %; hard labels: "
                         f"summary {100 * acc['syn_hard']:.2f} %, random {100 * acc['random_hard']:.2f} %, full data "
                         f"{100 * acc['full_data_hard']:.2f} %")
            lines.append(f"HLR {100 * f['hlr']:.2f}  IOR {100 * f['ior']:.2f}  (points)   LRS {f['lrs']:.4f}  "
                         f"ARS {f['ars']:.4f}  (DD-Ranking, w = 0.5)")
        if privacy is not None:
            lines.append(f"privacy: {privacy}")
        return "\n".join(lines)

    _emit({**res.as_dict(), "summary": summary.describe(), "privacy": _privacy(summary)}, a.json, text)
    return 0


def cmd_teacher(a: argparse.Namespace) -> int:
    """``distill-apps teacher``: train (or load and check) a teacher, optionally copying it to --out."""
    from .teachers import load_teacher, train_teacher

    if a.teacher:
        t = load_teacher(a.teacher, a.dataset, device="cpu", data_root=a.data_root)
    else:
        t = train_teacher(a.dataset or "digits", a.model, epochs=a.epochs, seed=a.seed, device=a.device, data_root=a.data_root,
                          progress=not (a.no_progress or a.json), retrain=a.retrain)
    out = None
    if a.out:
        from .safe_io import write_bytes

        out = Path(a.out)
        if out.exists():
            raise DistillError(f"{out} exists; refusing to overwrite it. Choose another --out or delete it first.")
        write_bytes(out, Path(t.path).read_bytes())  # atomically, with the usual file mode
    m = t.meta
    result = {"path": str(t.path), "copy": str(out) if out else None, "sha256": t.sha256, "dataset": m["dataset"],
              "model": m["model"], "seed": m["seed"], "epochs": m["train"]["epochs"],
              "test_accuracy": m["test_accuracy"], "train_seconds": m.get("train_seconds"), "cached": t.cached,
              "batchnorm": t.has_batchnorm()}
    _emit(result, a.json, lambda: (
        f"teacher {m['model']} on {m['dataset']} (seed {m['seed']}, {m['train']['epochs']} epochs): test accuracy "
        f"{100 * m['test_accuracy']:.2f} %, trained in {m.get('train_seconds')} s"
        f"{' (from the cache)' if t.cached else ''}\n{t.path}\nsha256 {t.sha256}"
        + (f"\ncopied to {out}" if out else "")))
    return 0


def cmd_methods(a: argparse.Namespace) -> int:
    """``distill-apps methods``: every registered method with family, modality, default dataset and paper."""
    from .engine import METHODS
    from .modality import MODALITIES, default_dataset

    rows = []
    for n in METHODS.names():
        cls = METHODS.get(n)
        cfg = cls.Config()
        rows.append({"name": n, "family": cls.family, "modality": cls.modality, "paper": cls.paper,
                     "paper_steps": cfg.steps, "quick_steps": cfg.quick_steps, "eval_augment": cls.eval_augment,
                     "default_dataset": default_dataset(cls), "ipc": MODALITIES.get(cls.modality).ipc})
    used = sorted({r["modality"] for r in rows})
    _emit({"methods": rows}, a.json, lambda: "\n".join(
        [f"{r['name']:<12} {r['family']:<13} {r['modality']:<21} {r['default_dataset']:<8} {r['paper']}" for r in rows]
        + ["", "--ipc counts: " + "; ".join(f"{m}: {MODALITIES.get(m).ipc}" for m in used)]))
    return 0


def cmd_datasets(a: argparse.Namespace) -> int:
    """``distill-apps datasets``: every registered dataset, its modality and whether its files are present."""
    from .data import DATASETS, data_root, dataset_present

    root = data_root(a.data_root)
    rows = []
    for n in DATASETS.names():
        spec = DATASETS.get(n)
        row = {"name": n, "modality": getattr(spec, "modality", "image"), "description": spec.description}
        pattern = next((f for f in spec.files if "<" in f), None)
        if pattern:  # a family (medmnist:<flag>, tu:<name>): list the members present under the root
            parts = re.split(r"<[^>]+>", pattern)
            rx = re.compile("([^/]+)".join(map(re.escape, parts)))
            row["flags_present"] = sorted(m.group(1) for p in root.glob("*".join(parts))
                                          if (m := rx.fullmatch(p.relative_to(root).as_posix())))
            row["present"] = bool(row["flags_present"])
        else:
            row["present"] = True if not spec.files else dataset_present(n, root)
        rows.append(row)
    _emit({"data_root": str(root), "datasets": rows}, a.json, lambda: f"data root: {root}\n" + "\n".join(
        f"{r['name']:<14} {'yes' if r['present'] else 'MISSING':<8} {r['modality']:<21} "
        f"{r['description']}" + (f" [present: {', '.join(r['flags_present'])}]" if r.get("flags_present") else "")
        for r in rows))
    return 0


DEFAULT_IPC = 1  # the default run's budget: see default_run_note


def default_run_note(a: argparse.Namespace) -> str | None:
    """One line saying why ``distill-apps distill`` without options runs what it runs (None for any other run).

    Measured by ``benchmarks/default_run.py`` (results in ``benchmarks/results/default_run.json``): DM at IPC 1
    with the quick budget beats a random subset of the same size on digits by far more than either standard
    deviation, within about a minute of a 2-core CPU; at IPC 10 the two tie on digits (within noise)."""
    if a.ipc is not None or a.method != "dm" or a.dataset is not None or a.steps is not None or a.budget != "quick":
        return None
    return ("default run: DM at 1 image per class with the quick budget on digits, chosen because there distillation "
            "clearly beats a random subset of the same size within about a minute on a CPU (at IPC 10 the two tie "
            "on digits); --method, --ipc, --dataset and --budget change it.")


def _tool_parsers(sub) -> None:
    """The ``info``, ``export`` and ``compare`` commands."""
    i = sub.add_parser("info", help="print what a summary file holds: kind, method, data, IPC, steps, protocol, "
                       "privacy, tensor sizes and checksums")
    i.add_argument("path", metavar="SUMMARY", help="a summary file of any kind (.safetensors)")
    i.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    x = sub.add_parser("export", help="write an image summary as PNG files in class folders (loadable with "
                       "--dataset imagefolder:DIR)")
    x.add_argument("path", metavar="SUMMARY", help="an image summary file (.safetensors)")
    x.add_argument("--png-dir", required=True, metavar="DIR",
                   help="folder to write: DIR/<class name>/<index>.png, one PNG per (decoded) image")
    x.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty DIR")
    x.add_argument("--dataset", default=None, help="ZCA-whitened summaries only: the data to undo the whitening "
                   "with (default: the data the summary records)")
    x.add_argument("--data-root", default=None, help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    x.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    c = sub.add_parser("compare", help="methods x IPCs on one dataset under one protocol: results JSON, a markdown "
                       "table and plots of accuracy vs IPC and vs distillation time")
    c.add_argument("--dataset", default="digits", help="a registered image dataset or imagefolder:<path>")
    c.add_argument("--methods", nargs="+", default=["random", "herding", "dm"], metavar="METHOD",
                   help="image methods, space-separated (`distill-apps methods` lists them)")
    c.add_argument("--ipc", nargs="+", type=int, default=[1, 10], metavar="K", help="images per class, space-separated")
    c.add_argument("--budget", choices=("quick", "paper"), default="quick",
                   help="quick: each method's CPU-minutes preset and 300 evaluation epochs; paper: the paper's "
                        "iteration count and the protocol's epochs")
    c.add_argument("--steps", type=int, default=None, help="distillation steps of every method (default: the "
                   "--budget preset)")
    c.add_argument("--runs", type=int, default=3, help="evaluation runs per cell (mean ± std from 2)")
    c.add_argument("--epochs", type=int, default=None, help="evaluation epochs (default: 300 quick, the protocol's "
                   "under paper)")
    c.add_argument("--protocol", choices=("train", "krr", "softlabel"), default="train",
                   help="evaluation protocol of every cell (krr: kernel methods' summaries)")
    c.add_argument("--model", default="convnet", help="network used to distil and to evaluate (with --models: to "
                   "distil)")
    c.add_argument("--models", default=None, metavar="M1,M2,...",
                   help="evaluate every summary with each of these comma-separated networks (e.g. convnet,mlp,lenet,"
                        "alexnet,vgg11,resnet18): the cross-architecture table, a random subset as each one's baseline")
    c.add_argument("--no-baseline", action="store_true", help="with --models: no random-subset row unless listed")
    c.add_argument("--seed", type=int, default=0, help="seed of distillation and evaluation")
    c.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="stop each distillation after the step that passes S seconds")
    add_set_argument(c)
    c.add_argument("--out", default=None, metavar="DIR", help="report folder (default out/compare_<dataset>)")
    c.add_argument("--overwrite", action="store_true", help="replace a report already in DIR")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    _data_options(c, distill=False)
    _common(c)


def cmd_info(a: argparse.Namespace) -> int:
    """``distill-apps info``: what a summary file holds (:mod:`distill_apps.summary_info`)."""
    from .summary_info import format_info, summary_info

    info = summary_info(a.path)
    _emit(info, a.json, lambda: format_info(info))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """``distill-apps export``: one PNG per image in class folders (:mod:`distill_apps.export`)."""
    from .export import export_pngs
    from .summaries import load_summary

    summary = load_summary(a.path)
    transform = None
    if (summary.meta.get("data") or {}).get("transform") is not None:
        from .data import data_for_summary

        transform = data_for_summary(summary, a.dataset, a.data_root).transform
    res = export_pngs(summary, a.png_dir, transform=transform, overwrite=a.overwrite)
    _emit(res, a.json, lambda: f"wrote {res['images']} PNG files to {res['png_dir']} ({len(res['per_class'])} class "
          f"folders: {', '.join(res['per_class'])}); load them with --dataset imagefolder:{res['png_dir']}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    """``distill-apps compare``: methods x IPCs on one dataset under one protocol (:mod:`distill_apps.compare`)."""
    from .compare import caption, check_report_dir, compare, write_report
    from .options import method_options, split_list

    methods = split_list(a.methods, "--methods")
    configs = method_options(a.set, methods)
    if a.no_baseline and a.models is None:
        raise ConfigError("--no-baseline goes with --models (the random-subset row of the cross-architecture table); "
                          "without --models, leave random out of --methods instead.")
    models = None
    if a.models is not None:
        from .cross_arch import parse_models

        models = parse_models(a.models)  # unknown names fail here, before anything is distilled
    out = check_report_dir(a.out or f"out/compare_{re.sub(r'[^A-Za-z0-9._-]+', '-', a.dataset).strip('-')}",
                           a.overwrite)
    real = _load_data(a)
    show = not (a.no_progress or a.json)

    def on_row(r: dict) -> None:
        if show:
            net = f" {r['model']}" if models else ""
            print(f"{r['method']} ipc {r['ipc']}{net}: {r['accuracy_mean']:.2f} % ({r['steps']} steps, "
                  f"{r['distill_seconds']} s)", file=sys.stderr, flush=True)

    rows = compare(real, methods, a.ipc, steps=a.steps, budget=a.budget, configs=configs, runs=a.runs,
                   epochs=a.epochs, model=a.model, distill_model=a.model, protocol=a.protocol, seed=a.seed,
                   device=a.device, time_limit=a.time_limit, progress=show, on_row=on_row, models=models,
                   baseline=not a.no_baseline)
    line = caption(rows, a.budget, a.seed, a.steps)
    settings = {k: getattr(a, k) for k in ("dataset", "methods", "ipc", "budget", "steps", "runs", "epochs",
                                           "protocol", "model", "models", "no_baseline", "seed", "time_limit", "set")}
    files = write_report(rows, out, settings, line)
    from .compare import markdown

    _emit({"files": files, "caption": line, "rows": rows}, a.json,
          lambda: markdown(rows, line) + "\nwrote " + ", ".join(files.values()))
    return 0


def cmd_recipe(a: argparse.Namespace) -> int:
    """``distill-apps recipe NAME ...``: run a recipe with the remaining arguments."""
    if a.name is None:
        print(recipe_listing(), file=sys.stderr)
        return 2
    rest = a.rest + (["--verbose"] if a.verbose and "--verbose" not in a.rest else [])  # --verbose before `recipe`
    return int(_recipe_module(a.name).main(rest) or 0)


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """The package's own warnings as one ``distill-apps: warning:`` line; others as Python prints them."""
    from .errors import DistillWarning

    if issubclass(category, DistillWarning):
        print(f"distill-apps: warning: {message}", file=sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    """The console entry point: run a command; bad input prints one paragraph and returns 2."""
    a = build_parser().parse_args(argv)
    handlers = {"distill": cmd_distill, "evaluate": cmd_evaluate, "teacher": cmd_teacher, "methods": cmd_methods,
                "datasets": cmd_datasets, "recipe": cmd_recipe, "info": cmd_info, "export": cmd_export,
                "compare": cmd_compare}
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        with quieted(a.verbose):  # host libraries' noise filtered (distill_apps.quiet) unless --verbose
            return handlers[a.command](a)
    except DistillError as exc:
        print(f"distill-apps: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        if "pip install" in str(exc):
            print(f"distill-apps: error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("distill-apps: interrupted; resume with --resume if you used --checkpoint-every.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        warnings.showwarning = shown
        from .engine import shutdown_distributed

        shutdown_distributed(barrier=False)  # error paths: never wait on a rank that may be gone


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
