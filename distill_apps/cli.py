"""``distill-apps`` command line: distill, evaluate, teacher, methods, datasets, recipe.

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
    "robustness": "robustness",
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
    e.add_argument("--model", default="convnet")
    e.add_argument("--runs", type=int, default=3)
    e.add_argument("--epochs", type=int, default=None)
    e.add_argument("--protocol", default="train",
                   help="train (from scratch), softlabel (teacher relabels each batch), krr (kernel methods) or "
                        "schedule (DD)")
    e.add_argument("--augment", default="auto", help="auto, dsa or none (softlabel: also crop, cutmix, crop_cutmix)")
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
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--teacher", default=None, metavar="PATH", help="load and check this teacher file instead")
    t.add_argument("--out", default=None, help="also write the teacher here (refuses to overwrite)")
    t.add_argument("--retrain", action="store_true", help="train again even if the cache holds this teacher")
    t.add_argument("--no-progress", action="store_true")
    _common(t)

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
        # teacher-based summaries are evaluated with the soft-label protocol, the random baseline with the same teacher
        pkw = {"protocol": summary.meta.get("eval_protocol", "train")}
        res = evaluate(summary, real, runs=a.eval_runs, epochs=epochs, device=a.device, model=a.model, **pkw)
        rnd = _d("random", real, a.ipc, seed=a.seed, device=a.device, progress=False)
        rnd.meta["eval_augment"] = summary.meta.get("eval_augment")  # same protocol for the baseline
        if pkw["protocol"] == "softlabel":
            pkw["teacher"] = summary.meta["teacher"]["path"]
        base = evaluate(rnd, real, runs=a.eval_runs, epochs=a.eval_epochs, device=a.device, model=a.model, **pkw)
        result.update({"accuracy_mean": res.accuracy_mean, "accuracy_std": res.accuracy_std, "runs": res.runs,
                       "model": res.model, "protocol": res.protocol, "epochs": res.epochs,
                       "random_accuracy_mean": base.accuracy_mean, "random_accuracy_std": base.accuracy_std})

    def text() -> str:
        lines = [f"saved {out} ({summary.meta.get('steps')} steps) and {out.with_suffix('.png')}"]
        if not a.no_eval:
            lines.append(f"{a.method:>8} ipc {a.ipc}: {100 * result['accuracy_mean']:.2f} +- "
                         f"{100 * result['accuracy_std']:.2f} % on {real.name} test ({result['protocol']} protocol, "
                         f"{result['runs']} runs, "
                         f"{result['model']}, {result['epochs']} epochs)")
            lines.append(f"{'random':>8} ipc {a.ipc}: {100 * result['random_accuracy_mean']:.2f} +- "
                         f"{100 * result['random_accuracy_std']:.2f} % (same protocol)")
        return "\n".join(lines)

    _emit(result, a.json, text)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluate import evaluate
    from .summary import SyntheticSet

    summary = SyntheticSet.load(a.path)
    aug = None if a.augment == "none" else a.augment
    kw: dict[str, Any] = {"teacher": a.teacher} if a.teacher else {}
    if a.teacher and a.protocol != "softlabel":
        raise DistillError(f"--teacher is for --protocol softlabel; the protocol here is {a.protocol!r}.")
    if (a.attack is None) != (a.eps is None):
        raise DistillError("--attack and --eps go together: e.g. --attack pgd --eps 0.1 0.3.")
    common = dict(model=a.model, runs=a.runs, epochs=a.epochs, augment=aug, protocol=a.protocol, device=a.device,
                  data_root=a.data_root, progress=not a.json, **kw)
    if a.attack:
        from .robustness import robust_evaluate

        res = robust_evaluate(summary, a.dataset, attack=a.attack, eps=a.eps, steps=a.pgd_steps,
                              n=a.attack_n or None, **common)
    else:
        res = evaluate(summary, a.dataset, **common)
    if a.metrics == "fair":
        from .data import load_dataset
        from .fair import fair_scores

        real = load_dataset(a.dataset or summary.meta.get("dataset"), a.data_root)
        res.extra["fair"] = fair_scores(summary, real, protocol=a.protocol, teacher=a.teacher, model=a.model,
                                        runs=a.runs, epochs=a.epochs, device=a.device,
                                        full_data_acc=a.full_data_acc, progress=not a.json, base=res)

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
        return "\n".join(lines)

    _emit(res.as_dict(), a.json, text)
    return 0


def cmd_teacher(a: argparse.Namespace) -> int:
    import shutil

    from .teachers import load_teacher, train_teacher

    if a.teacher:
        t = load_teacher(a.teacher, a.dataset, device="cpu", data_root=a.data_root)
    else:
        t = train_teacher(a.dataset or "digits", a.model, epochs=a.epochs, seed=a.seed, device=a.device, data_root=a.data_root,
                          progress=not (a.no_progress or a.json), retrain=a.retrain)
    out = None
    if a.out:
        out = Path(a.out)
        if out.exists():
            raise DistillError(f"{out} exists; refusing to overwrite it. Choose another --out or delete it first.")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.copyfile(t.path, tmp)
        tmp.replace(out)
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
    handlers = {"distill": cmd_distill, "evaluate": cmd_evaluate, "teacher": cmd_teacher, "methods": cmd_methods,
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
