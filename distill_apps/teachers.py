"""Teachers: networks trained on the full real data, the source of SRe2L's BatchNorm statistics, RDED's crop
scores and the soft labels of the ``softlabel`` evaluation protocol (DESIGN.md, "Teachers").

A teacher is trained once through the one training loop (:func:`distill_apps.train.fit`) and saved with
:func:`distill_apps.safe_io.write` (kind ``"teacher"``): its ``state_dict`` as safetensors tensors and a JSON
header holding the dataset (name and a fingerprint of its training split), image shape, class count,
normalisation, the model name, seed, training settings, its test accuracy and training time. The file's
SHA-256 over all tensor bytes (:func:`distill_apps.safe_io.checksum`, stored in the header) is the teacher's
*hash*: summaries name their teacher by path and hash, and loading refuses a file whose hash differs.

Teachers are cached under ``$DISTILL_APPS_CACHE/teachers`` (default ``~/.cache/distill_apps/teachers``), one
file per key (dataset, its fingerprint, model, seed and training settings), so a second call with the same
settings reuses the file and other settings never mix with it::

    import distill_apps as da
    t = da.train_teacher("mnist", "convnet-bn", epochs=2)      # trained once, then read from the cache
    t.test_accuracy, t.sha256, t.path
    t = da.load_teacher(t.path, dataset=real)                   # refuses another dataset or image shape
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import safe_io
from .data import RealData, load_dataset
from .errors import ConfigError, DataError, DistillError, SummaryFormatError
from .runtime import autocast, generator, pick_device

KIND = "teacher"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TeacherConfig:
    """How a teacher is trained: the field's SGD recipe (lr 0.01, momentum 0.9, wd 5e-4, batch 256, lr x0.1 at
    half) for ``epochs`` passes over the real training split, optionally with DSA augmentation."""

    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str | None = None  # None or "dsa"

    def __post_init__(self) -> None:
        """Refuse epochs < 1, unknown augmentations, a non-positive lr or batch size."""
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"A teacher needs epochs >= 1; got {self.epochs!r}.")
        if self.augment not in (None, "dsa"):
            raise ConfigError(f"Teacher augmentation must be 'dsa' or none; got {self.augment!r}.")
        if not (self.lr > 0 and self.batch_size >= 1):
            raise ConfigError(f"Teacher lr must be > 0 and batch_size >= 1; got {self.lr}, {self.batch_size}.")


@dataclass(repr=False)
class Teacher:
    """A trained teacher: the network (eval mode, frozen) and what its file says about it."""

    model: nn.Module
    meta: dict[str, Any]
    sha256: str
    path: Path | None = None
    cached: bool = False  # True when read from the cache rather than trained by this call
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def test_accuracy(self) -> float:
        """The teacher's test accuracy, as recorded when it was trained."""
        return float(self.meta["test_accuracy"])

    @property
    def train_seconds(self) -> float:
        """Wall-clock seconds the training took when the teacher was made."""
        return float(self.meta.get("train_seconds", 0.0))

    @property
    def train_cpu_seconds(self) -> float | None:
        """CPU seconds of the training process (all its threads) when the teacher was made."""
        v = self.meta.get("train_cpu_seconds")
        return None if v is None else float(v)

    def reference(self) -> dict[str, Any]:
        """What a summary records about its teacher (path + hash + what it was trained on)."""
        m = self.meta
        return {"path": str(self.path) if self.path else None, "sha256": self.sha256, "dataset": m["dataset"],
                "model": m["model"], "seed": m["seed"], "epochs": m["train"]["epochs"],
                "test_accuracy": m["test_accuracy"]}

    def has_batchnorm(self) -> bool:
        """Whether the teacher's network has BatchNorm layers."""
        return has_batchnorm(self.model)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Float32 logits of the frozen teacher (eval mode, batched, bf16 autocast where fast)."""
        dev = next(self.model.parameters()).device
        self.model.eval()
        out = []
        for i in range(0, x.shape[0], batch_size):
            with autocast(dev):
                out.append(self.model(x[i:i + batch_size].to(dev)).float())
        return torch.cat(out) if out else torch.zeros(0, self.meta["num_classes"], device=dev)

    def to(self, device: torch.device | str) -> "Teacher":
        """Move the teacher's network to ``device``; returns the teacher."""
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        from .reprs import one_line

        m = self.meta
        return one_line("Teacher", [f"{m.get('model')} on {m.get('dataset')}", f"seed {m.get('seed')}",
                                    f"{(m.get('train') or {}).get('epochs')} epochs",
                                    f"test {100 * float(m.get('test_accuracy', float('nan'))):.2f} %",
                                    f"sha256 {self.sha256[:12]}", "cached" if self.cached else None])

    def check_compatible(self, real: RealData) -> None:
        """Refuse a teacher of another dataset, image shape or class count."""
        check_compatible(self.meta, real, self.path)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer (SRe2L matches their running statistics)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_compatible(meta: dict[str, Any], real: RealData, path: Path | str | None = None) -> None:
    """Refuse a teacher trained on data of another image shape or class count (DataError naming the command that trains
    a fitting one)."""
    where = f"The teacher {path}" if path else "The teacher"
    if tuple(meta.get("image_shape", ())) != tuple(real.image_shape) or int(meta.get("num_classes", -1)) != real.num_classes:
        raise DataError(
            f"{where} was trained on {meta.get('dataset')!r} ({tuple(meta.get('image_shape', ()))} images, "
            f"{meta.get('num_classes')} classes) but the data is {real.name!r} ({tuple(real.image_shape)}, "
            f"{real.num_classes} classes): train a teacher for {real.name} with "
            f"`distill-apps teacher --dataset {real.name}` and pass that one.")
    if meta.get("dataset") != real.name:
        raise DataError(
            f"{where} was trained on {meta.get('dataset')!r}, not on {real.name!r} (same image shape, but another "
            f"dataset): its soft labels would describe the wrong classes. Train a teacher with "
            f"`distill-apps teacher --dataset {real.name}` and pass that one.")


# ---------------------------------------------------------------------- cache keys
def default_cache_dir() -> Path:
    """Where teachers are cached: ``$DISTILL_APPS_CACHE/teachers``, else ``~/.cache/distill_apps/teachers``."""
    from .data.registry import cache_root

    return cache_root() / "teachers"


def teacher_key(real: RealData, model: str, config: TeacherConfig, seed: int) -> dict[str, Any]:
    """What identifies a teacher: dataset name and fingerprint, model, seed and training config."""
    from .experts import dataset_fingerprint

    return {"dataset": real.name, "data": dataset_fingerprint(real), "model": model, "seed": int(seed),
            "train": asdict(config)}


def _key_hash(key: dict[str, Any]) -> str:
    """Short SHA-256 of a teacher key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def cache_path(real: RealData, model: str, config: TeacherConfig, seed: int,
               cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache file of the teacher for this data, model, config and seed."""
    key = teacher_key(real, model, config, seed)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    safe_name = real.name.replace(":", "-").replace("/", "-")
    return folder / f"{safe_name}-{model}-s{seed}-{_key_hash(key)}.safetensors"


# ---------------------------------------------------------------------- train / save / load
def _build(model: str, real_shape: tuple[int, ...], num_classes: int, device, g: torch.Generator | None = None):
    """A model from the registry for images of ``real_shape`` and ``num_classes`` classes."""
    from .nets import build_model

    return build_model(model, real_shape[0], num_classes, real_shape[1:], generator=g, device=device)


def save_teacher(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> tuple[Path, str]:
    """Write a teacher file (atomic, checksummed); returns ``(path, sha256)``."""
    tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    p = safe_io.write(path, tensors, {"teacher": meta}, KIND, FORMAT_VERSION)
    return p, safe_io.checksum(tensors)


def train_teacher(dataset: str | RealData = "digits", model: str = "convnet-bn", *, epochs: int | None = None,
                  seed: int = 0, config: TeacherConfig | None = None, device: str | torch.device = "auto",
                  data_root: str | None = None, cache_dir: str | os.PathLike | None = None,
                  progress: bool = True, retrain: bool = False) -> Teacher:
    """The teacher of ``(dataset, model, seed, training settings)``: read from the cache, or trained on the full
    real training split through :func:`distill_apps.train.fit`, tested on the real test split and cached.

    ``epochs`` overrides ``config.epochs``. ``retrain=True`` trains again and replaces the cached file.
    """
    from .train import accuracy, fit

    real = load_dataset(dataset, data_root) if isinstance(dataset, str) else dataset
    if real.multilabel:
        raise ConfigError(f"{real.name} is multi-label; teachers are single-label classifiers.")
    config = config or TeacherConfig()
    if epochs is not None:
        config = TeacherConfig(**{**asdict(config), "epochs": epochs})
    dev = pick_device(device)
    path = cache_path(real, model, config, seed, cache_dir)
    _build(model, real.image_shape, real.num_classes, "cpu")  # a bad model name fails before any training
    if path.is_file() and not retrain:
        t = load_teacher(path, dataset=real, device=dev)
        if t.meta.get("key") != teacher_key(real, model, config, seed):
            raise SummaryFormatError(f"{path} holds a teacher of other settings ({t.meta.get('key')}); delete it "
                                     "and it will be retrained.")
        t.cached = True
        return t
    g = generator("teacher", seed)
    net = _build(model, real.image_shape, real.num_classes, dev, g)
    aug = None
    if config.augment == "dsa":
        from .augment import DSA

        dsa = DSA.for_dataset(real.flip_invariant)
        aug = lambda xb, gg: dsa(xb, gg)  # noqa: E731
    t0, c0 = time.perf_counter(), time.process_time()
    fit(net, real.x_train, real.y_train, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
        momentum=config.momentum, weight_decay=config.weight_decay, augment=aug, generator=g, progress=progress)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    acc = accuracy(net, real.x_test.to(dev), real.y_test)
    from .summary import library_versions

    meta = {"key": teacher_key(real, model, config, seed), "dataset": real.name, "model": model, "seed": int(seed),
            "train": asdict(config), "image_shape": list(real.image_shape), "num_classes": real.num_classes,
            "mean": list(real.mean), "std": list(real.std), "test_accuracy": acc,
            "train_seconds": round(seconds, 3), "train_cpu_seconds": round(cpu_seconds, 3), "device": str(dev), "versions": library_versions()}
    p, digest = save_teacher(path, net, meta)
    net.eval()
    for prm in net.parameters():
        prm.requires_grad_(False)
    return Teacher(net, meta, digest, p, cached=False)


def _validated_meta(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The teacher header's fields, each checked by type and range (a damaged or edited file is refused)."""
    from .nets import check_model_name
    from .validation import HeaderFields

    top = HeaderFields(path, KIND, header)
    meta = top.dict("teacher")
    f = HeaderFields(path, KIND, meta)
    f.str("model")
    f.str("dataset")
    f.int("seed", 0)
    f.int("num_classes", 1, 1_000_000)
    shape = f.ints("image_shape", 1, 65_536, min_len=3, max_len=3)
    f.floats("mean")
    f.floats("std", None, 0.0, lo_open=True)
    if len(f.raw("mean")) not in (1, shape[0]) or len(f.raw("std")) != len(f.raw("mean")):
        raise f.fail("mean", f"one value or one per channel ({shape[0]}), as many as std", f.raw("mean"))
    f.float("test_accuracy", 0.0, 1.0)
    f.dict("train")
    try:
        check_model_name(meta["model"])
    except DistillError as exc:
        raise f.fail("model", "a registered network name", meta["model"]) from exc
    return meta


def load_teacher(path: str | os.PathLike, dataset: str | RealData | None = None, *,
                 device: str | torch.device = "cpu", data_root: str | None = None,
                 expect_sha256: str | None = None) -> Teacher:
    """Read a teacher file; refuse one that is corrupt, not a distill-apps teacher, of another dataset or image
    shape than ``dataset`` (when given), or whose hash is not ``expect_sha256`` (when given)."""
    path = Path(path)
    tensors, header = safe_io.read(path, KIND, FORMAT_VERSION)
    meta = _validated_meta(path, header)
    model_name, shape, k = meta["model"], tuple(meta["image_shape"]), int(meta["num_classes"])
    digest = header["sha256"]
    if expect_sha256 is not None and digest != expect_sha256:
        raise SummaryFormatError(
            f"{path} is not the teacher the summary was made with: its hash is {digest[:16]}... but the summary "
            f"names {expect_sha256[:16]}.... Pass the original teacher file (--teacher PATH), or relabel the "
            "summary with this teacher.")
    if dataset is not None:
        real = load_dataset(dataset, data_root) if isinstance(dataset, str) else dataset
        check_compatible(meta, real, path)
    net = _build(model_name, shape, k, "cpu")
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise SummaryFormatError(f"{path}: its tensors do not fit a {model_name!r} network ({exc}); the file is "
                                 "damaged or was written by another version.") from exc
    net = net.to(pick_device(device)).eval()
    for prm in net.parameters():
        prm.requires_grad_(False)
    return Teacher(net, meta, digest, path)


def resolve_teacher(real: RealData, *, path: str | os.PathLike | None = None, model: str = "convnet-bn",
                    epochs: int | None = None, seed: int = 0, device: str | torch.device = "cpu",
                    progress: bool = True, expect_sha256: str | None = None) -> Teacher:
    """The teacher a method or protocol uses: the file at ``path`` (checked against ``real``), else the cached
    (or newly trained) teacher of ``(real, model, seed, epochs)``."""
    if path:
        t = load_teacher(path, real, device=device, expect_sha256=expect_sha256)
        t.cached = True
        return t
    return train_teacher(real, model, epochs=epochs, seed=seed, device=device, progress=progress)
