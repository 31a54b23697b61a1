"""``distill-apps`` command line: distill, evaluate, methods, datasets, recipe.

Every user error prints one paragraph and exits with status 2; nothing prints a traceback for bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from .errors import DistillError

RECIPES = {
    "continual": "continual_replay",
    "federated": "federated_distilled",
    "nas-proxy": "nas_proxy",
    "private-sharing": "private_sharing",
    "medical": "medical_sharing",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="folder holding the datasets (or $DISTILL_APPS_DATA)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="distill-apps", description="Dataset distillation and its applications.")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("distill", help="distil a dataset into a SyntheticSet")
    d.add_argument("--dataset", default="digits")
    d.add_argument("--method", default="dm")
    d.add_argument("--ipc", type=int, default=10, help="synthetic images per class")
    d.add_argument("--steps", type=int, default=None, help="outer iterations (default: the --budget preset)")
    d.add_argument("--budget", choices=("quick", "paper"), default="quick",
                   help="quick: a CPU-minutes preset; paper: the paper's iteration count")
    d.add_argument("--model", default="convnet")
    d.add_argument("--seed", type=int, default=0)
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
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one method option")
    d.add_argument("--eval-runs", type=int, default=3)
    d.add_argument("--eval-epochs", type=int, default=None)
    d.add_argument("--no-eval", action="store_true", help="skip the evaluation against a random subset")
    d.add_argument("--no-progress", action="store_true")
    _common(d)

    e = sub.add_parser("evaluate", help="train fresh models on a summary and test them on real data")
    e.add_argument("path")
    e.add_argument("--dataset", default=None, help="default: the dataset the summary was distilled from")
    e.add_argument("--model", default="convnet")
    e.add_argument("--runs", type=int, default=3)
    e.add_argument("--epochs", type=int, default=None)
    e.add_argument("--protocol", default="train", help="train (from scratch), krr (kernel methods) or schedule (DD)")
    e.add_argument("--augment", default="auto", help="auto, dsa or none")
    e.add_argument("--force-dataset", action="store_true",
                   help="evaluate on --dataset even when the summary was distilled from another one (warns)")
    _common(e)

    m = sub.add_parser("methods", help="list every registered method")
    m.add_argument("--json", action="store_true")
    s = sub.add_parser("datasets", help="list datasets and whether their files are present")
    s.add_argument("--data-root", default=None)
    s.add_argument("--json", action="store_true")

    r = sub.add_parser("recipe", help="run an end-to-end recipe", add_help=False)
    r.add_argument("name", choices=sorted(RECIPES))
    r.add_argument("rest", nargs=argparse.REMAINDER)
    return ap


def _emit(obj: dict[str, Any], as_json: bool, text: Callable[[], str]) -> None:
    print(json.dumps(obj, indent=None if as_json else 2, default=str) if as_json else text())


def _parse_sets(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for it in items:
        if "=" not in it or not it.split("=", 1)[0].strip():
            raise DistillError(f"--set expects KEY=VALUE; got {it!r}.")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            out[k.strip()] = v  # not YAML: the text itself (the option's type check decides)
    return out


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
    config.update(_parse_sets(a.set))
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
    from .data import load_dataset
    from .engine import distill
    from .evaluate import evaluate
    from .outputs import plan_outputs, save_or_rescue, summary_bytes

    cfg = _check_distill_options(a)
    real = load_dataset(a.dataset, a.data_root)
    from .engine import METHODS

    if METHODS.get(a.method).modality == "image":
        real.check_ipc(a.ipc)  # before any file is touched
    out = Path(a.out or f"out/{a.method}_{a.dataset.replace(':', '-')}_ipc{a.ipc}.safetensors")
    files = plan_outputs(out, need_bytes=summary_bytes(max(a.ipc, 1) * real.num_classes, real.image_shape,
                                                       real.num_classes),
                         checkpointing=a.checkpoint_every > 0, resume=bool(a.resume), overwrite=a.overwrite)
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
    try:
        summary.image_grid(files.grid)
    except DistillError as exc:
        raise DistillError(f"The summary was saved to {out}, but its PNG grid was not: {exc}") from exc
    result: dict[str, Any] = {"path": str(out), "method": a.method, "dataset": real.name, "ipc": a.ipc,
                              "steps": summary.meta.get("steps"), "budget": a.budget if a.steps is None else None}
    if not a.no_eval:
        from .engine import distill as _d

        # the quick budget evaluates with 300 epochs (the paper protocol's no-augmentation count) to stay in
        # CPU minutes; --budget paper (or --eval-epochs) runs the full protocol (1000 epochs with DSA)
        epochs = a.eval_epochs if a.eval_epochs is not None else (300 if a.budget == "quick" else None)
        a.eval_epochs = epochs
        res = evaluate(summary, real, runs=a.eval_runs, epochs=epochs, device=a.device, model=a.model)
        rnd = _d("random", real, a.ipc, seed=a.seed, device=a.device, progress=False)
        rnd.meta["eval_augment"] = summary.meta.get("eval_augment")  # same protocol for the baseline
        base = evaluate(rnd, real, runs=a.eval_runs, epochs=a.eval_epochs, device=a.device, model=a.model)
        result.update({"accuracy_mean": res.accuracy_mean, "accuracy_std": res.accuracy_std, "runs": res.runs,
                       "model": res.model, "protocol": res.protocol, "epochs": res.epochs,
                       "random_accuracy_mean": base.accuracy_mean, "random_accuracy_std": base.accuracy_std})

    def text() -> str:
        lines = [f"saved {out} ({summary.meta.get('steps')} steps) and {out.with_suffix('.png')}"]
        if not a.no_eval:
            lines.append(f"{a.method:>8} ipc {a.ipc}: {100 * result['accuracy_mean']:.2f} +- "
                         f"{100 * result['accuracy_std']:.2f} % on {real.name} test ({result['runs']} runs, "
                         f"{result['model']}, {result['epochs']} epochs)")
            lines.append(f"{'random':>8} ipc {a.ipc}: {100 * result['random_accuracy_mean']:.2f} +- "
                         f"{100 * result['random_accuracy_std']:.2f} % (same protocol)")
        return "\n".join(lines)

    _emit(result, a.json, text)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .summary import SyntheticSet

    from .validation import check_int

    check_int("--runs", a.runs, 1)
    if a.epochs is not None:
        check_int("--epochs", a.epochs, 1)
    summary = SyntheticSet.load(a.path)
    aug = None if a.augment == "none" else a.augment
    res = evaluate(summary, a.dataset, model=a.model, runs=a.runs, epochs=a.epochs, augment=aug,
                   protocol=a.protocol, device=a.device, data_root=a.data_root, progress=not a.json,
                   force_dataset=a.force_dataset)
    _emit(res.as_dict(), a.json, lambda: f"{a.path}: {res}")
    return 0


def cmd_methods(a: argparse.Namespace) -> int:
    from .engine import METHODS

    rows = []
    for n in METHODS.names():
        cls = METHODS.get(n)
        cfg = cls.Config()
        rows.append({"name": n, "family": cls.family, "modality": cls.modality, "paper": cls.paper,
                     "paper_steps": cfg.steps, "quick_steps": cfg.quick_steps, "eval_augment": cls.eval_augment})
    _emit({"methods": rows}, a.json, lambda: "\n".join(
        f"{r['name']:<12} {r['family']:<13} {r['modality']:<9} {r['paper']}" for r in rows))
    return 0


def cmd_datasets(a: argparse.Namespace) -> int:
    from .data import DATASETS, data_root, dataset_present

    root = data_root(a.data_root)
    rows = []
    for n in DATASETS.names():
        spec = DATASETS.get(n)
        present = True if not spec.files else (dataset_present(n, root) if n != "medmnist" else None)
        row = {"name": n, "present": present, "description": spec.description}
        if n == "medmnist":  # a family: list the flags whose .npz is under the root
            row["flags_present"] = sorted(p.stem for p in (root / "medmnist").glob("*.npz"))
            row["present"] = bool(row["flags_present"])
        rows.append(row)
    _emit({"data_root": str(root), "datasets": rows}, a.json, lambda: f"data root: {root}\n" + "\n".join(
        f"{r['name']:<14} {'yes' if r['present'] else ('-' if r['present'] is None else 'MISSING'):<8} "
        f"{r['description']}" + (f" [present: {', '.join(r['flags_present'])}]" if r.get("flags_present") else "")
        for r in rows))
    return 0


def cmd_recipe(a: argparse.Namespace) -> int:
    import importlib

    try:
        mod = importlib.import_module(f"distill_apps.recipes.{RECIPES[a.name]}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("distill_apps.recipes"):
            raise DistillError(f"Recipe {a.name!r} is not available in this version.") from exc
        raise
    return int(mod.main(a.rest) or 0)


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    """The package's own warnings as one ``distill-apps: warning:`` line; others as Python prints them."""
    from .errors import DistillWarning

    if issubclass(category, DistillWarning):
        print(f"distill-apps: warning: {message}", file=sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    handlers = {"distill": cmd_distill, "evaluate": cmd_evaluate, "methods": cmd_methods,
                "datasets": cmd_datasets, "recipe": cmd_recipe}
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
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
    finally:
        warnings.showwarning = shown
        from .engine import shutdown_distributed

        shutdown_distributed(barrier=False)  # error paths: never wait on a rank that may be gone


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
