"""``distill-apps`` command line: distill, evaluate, methods, datasets, recipe.

Every user error prints one paragraph and exits with status 2; nothing prints a traceback for bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
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
    d.add_argument("--checkpoint-every", type=int, default=0, help="save a checkpoint every N steps (<out>.ckpt)")
    d.add_argument("--resume", action="store_true", help="continue from <out>.ckpt")
    d.add_argument("--max-memory", type=float, default=None, metavar="GB",
                   help="stop (after checkpointing) with advice once peak memory passes GB")
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
    e.add_argument("--model", default=None, help="the network to train (default convnet)")
    e.add_argument("--models", default=None, metavar="M1,M2,...",
                   help="cross-architecture table: comma-separated models (e.g. convnet,mlp,lenet,alexnet,vgg11,"
                        "resnet18), each also trained on a random real subset of the same size")
    e.add_argument("--no-baseline", action="store_true", help="with --models: skip the random-subset baseline")
    e.add_argument("--runs", type=int, default=3)
    e.add_argument("--epochs", type=int, default=None)
    e.add_argument("--protocol", default="train", help="train (from scratch), krr (kernel methods) or schedule (DD)")
    e.add_argument("--augment", default="auto",
                   help="evaluation augmentation: auto (the summary's paper's), dc, dsa or none")
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
        if "=" not in it:
            raise DistillError(f"--set expects KEY=VALUE; got {it!r}.")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def cmd_distill(a: argparse.Namespace) -> int:
    from .config import load_config_file
    from .data import load_dataset
    from .engine import distill
    from .evaluate import evaluate

    config = load_config_file(a.config) if a.config else {}
    config.update(_parse_sets(a.set))
    real = load_dataset(a.dataset, a.data_root)
    out = Path(a.out or f"out/{a.method}_{a.dataset.replace(':', '-')}_ipc{a.ipc}.safetensors")
    ckpt = out.with_suffix(".ckpt")
    summary = distill(a.method, real, a.ipc, steps=a.steps, budget=a.budget, model=a.model, seed=a.seed,
                      device=a.device, config=config, checkpoint=ckpt, checkpoint_every=a.checkpoint_every,
                      resume=a.resume, progress=not (a.no_progress or a.json), max_memory_gb=a.max_memory)
    from .engine import is_main_process, shutdown_distributed

    main_process = is_main_process()
    shutdown_distributed()  # all ranks are done with collectives; leave the group cleanly before exiting
    if not main_process:  # under torchrun only rank 0 writes and evaluates
        return 0
    summary.save(out)
    summary.image_grid(out.with_suffix(".png"))
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
        base = evaluate(rnd, real, runs=a.eval_runs, epochs=a.eval_epochs, device=a.device, model=a.model,
                        augment=res.augment)
        result.update({"accuracy_mean": res.accuracy_mean, "accuracy_std": res.accuracy_std, "runs": res.runs,
                       "model": res.model, "protocol": res.protocol, "epochs": res.epochs,
                       "augment": res.augment, "augment_detail": res.extra.get("augment_detail"),
                       "random_accuracy_mean": base.accuracy_mean, "random_accuracy_std": base.accuracy_std})

    def text() -> str:
        lines = [f"saved {out} ({summary.meta.get('steps')} steps) and {out.with_suffix('.png')}"]
        if not a.no_eval:
            lines.append(f"{a.method:>8} ipc {a.ipc}: {100 * result['accuracy_mean']:.2f} +- "
                         f"{100 * result['accuracy_std']:.2f} % on {real.name} test ({result['runs']} runs, "
                         f"{result['model']}, {result['epochs']} epochs, augment {result['augment']})")
            lines.append(f"{'random':>8} ipc {a.ipc}: {100 * result['random_accuracy_mean']:.2f} +- "
                         f"{100 * result['random_accuracy_std']:.2f} % (same protocol)")
        return "\n".join(lines)

    _emit(result, a.json, text)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .eval_augment import check_augment
    from .evaluate import evaluate
    from .summary import SyntheticSet

    aug = check_augment(a.augment)
    if a.models is not None:
        from .cross_arch import evaluate_cross_arch, parse_models

        if a.model is not None:
            raise DistillError("Give either --model (one network) or --models (a comma-separated list), not both.")
        models = parse_models(a.models)
        summary = SyntheticSet.load(a.path)
        table = evaluate_cross_arch(summary, a.dataset, models=models, runs=a.runs, epochs=a.epochs, augment=aug,
                                    baseline=not a.no_baseline, protocol=a.protocol, device=a.device,
                                    data_root=a.data_root, progress=not a.json)
        _emit({"path": a.path, **table.as_dict()}, a.json, lambda: f"{a.path}\n{table.table()}")
        return 0
    summary = SyntheticSet.load(a.path)
    res = evaluate(summary, a.dataset, model=a.model or "convnet", runs=a.runs, epochs=a.epochs, augment=aug,
                   protocol=a.protocol, device=a.device, data_root=a.data_root, progress=not a.json)
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


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    handlers = {"distill": cmd_distill, "evaluate": cmd_evaluate, "methods": cmd_methods,
                "datasets": cmd_datasets, "recipe": cmd_recipe}
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
        from .engine import shutdown_distributed

        shutdown_distributed(barrier=False)  # error paths: never wait on a rank that may be gone


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
