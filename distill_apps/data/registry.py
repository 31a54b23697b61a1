"""Dataset registry: ``digits`` (embedded default), torchvision datasets and MedMNIST, all offline.

The data root comes from the ``data_root`` argument, else ``$DISTILL_APPS_DATA``, else ``~/.cache/distill_apps``.
Nothing is downloaded unless ``download=True`` is passed explicitly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry
from .real import RealData, normalize

DATA_ENV = "DISTILL_APPS_DATA"


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about a dataset before loading it."""

    name: str
    loader: Callable[..., RealData]
    files: tuple[str, ...]  # paths relative to the data root that must exist ('' for embedded)
    description: str
    modality: str = "image"  # what the loader returns: image RealData, or "graph", "recsys", "text", ...


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: argument, then ``$DISTILL_APPS_DATA``, then ``~/.cache/distill_apps/data``."""
    if root:
        return Path(root).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path.home() / ".cache" / "distill_apps" / "data"


def register_dataset(name: str, files: tuple[str, ...] = (), description: str = "", modality: str = "image"):
    """Decorator: register ``fn(root, download=False)`` (or ``fn(root, arg, download=False)`` for a family named
    ``name:arg``) as a dataset of ``modality``."""
    def deco(fn: Callable[..., RealData]) -> Callable[..., RealData]:
        DATASETS.register(name)(DatasetSpec(name, fn, files, description or (fn.__doc__ or "").strip(), modality))
        return fn

    return deco


def _missing_error(name: str, root: Path, files: tuple[str, ...]) -> DataError:
    missing = [f for f in files if not (root / f).exists()]
    return DataError(
        f"Dataset {name!r} is not under the data root {root}: missing {', '.join(missing) or files}. "
        f"Put the files there, or point --data-root (or ${DATA_ENV}) at the folder that holds them "
        f"(distill-apps never downloads unless asked)."
    )


def dataset_present(name: str, root: str | os.PathLike | None = None) -> bool:
    spec = DATASETS.get(name.split(":")[0] if name.startswith("medmnist:") else name)
    r = data_root(root)
    files = spec.files
    if name.startswith("medmnist:"):
        files = (f"medmnist/{name.split(':', 1)[1]}.npz",)
    return all((r / f).exists() for f in files)


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = False) -> RealData:
    """Load a registered dataset by name (``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``,
    ``cifar100``, ``medmnist:<flag>``; other modalities: ``cora``, ``citeseer``, ``ml-100k``, ``sst2``,
    ``mutag``, ``tu:<folder>``, ...). Image datasets load as :class:`RealData`, the others as their modality's
    data object (see the spec's ``modality``)."""
    if name.startswith("medmnist:"):
        spec = DATASETS.get("medmnist")
        return spec.loader(data_root(root), flag=name.split(":", 1)[1], download=download)
    family, sep, arg = name.partition(":")
    if sep and name not in DATASETS:  # a family: tu:<folder or TU name>
        return DATASETS.get(family).loader(data_root(root), arg, download=download)
    spec = DATASETS.get(name)
    return spec.loader(data_root(root), download=download)


def list_datasets() -> list[str]:
    return DATASETS.names()


def _from_uint8(name: str, xtr, ytr, xte, yte, classes, flip_invariant: bool, **kw) -> RealData:
    """Shared tail of the image loaders: uint8 (N,H,W[,C]) arrays -> normalised float tensors."""

    def to_nchw(a) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(a))
        if t.ndim == 3:
            t = t.unsqueeze(1)
        elif t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
            t = t.permute(0, 3, 1, 2)
        return t.float().div_(255.0)

    xtr_t, mean, std = normalize(to_nchw(xtr))
    xte_t, _, _ = normalize(to_nchw(xte), mean, std)
    extra = {}
    if "x_val" in kw:
        extra["x_val"] = normalize(to_nchw(kw.pop("x_val")), mean, std)[0]
        extra["y_val"] = torch.as_tensor(np.asarray(kw.pop("y_val"))).long()
    return RealData(
        name=name, x_train=xtr_t.contiguous(), y_train=torch.as_tensor(np.asarray(ytr)).long(),
        x_test=xte_t.contiguous(), y_test=torch.as_tensor(np.asarray(yte)).long(), num_classes=len(classes),
        mean=mean, std=std, class_names=[str(c) for c in classes], flip_invariant=flip_invariant, **extra, **kw,
    )


@register_dataset("digits", description="scikit-learn's bundled 8x8 digits (1797 images, 10 classes); no files needed")
def _digits(root: Path, download: bool = False) -> RealData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0 * 255.0).astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=0)
    return _from_uint8("digits", xtr, ytr, xte, yte, list(range(10)), flip_invariant=False)


def _torchvision(name: str, cls_name: str, folder: str, flip_invariant: bool, root: Path, download: bool) -> RealData:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        spec = DATASETS.get(name)
        raise _missing_error(name, root, spec.files) from exc
    xtr, xte = tr.data, te.data
    xtr = xtr.numpy() if torch.is_tensor(xtr) else xtr
    xte = xte.numpy() if torch.is_tensor(xte) else xte
    classes = getattr(tr, "classes", None) or list(range(int(max(tr.targets)) + 1))
    return _from_uint8(name, xtr, np.asarray(tr.targets), xte, np.asarray(te.targets), classes, flip_invariant)


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@register_dataset("mnist", files=tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES), description="MNIST 28x28, 10 classes")
def _mnist(root: Path, download: bool = False) -> RealData:
    return _torchvision("mnist", "MNIST", "MNIST", False, root, download)


@register_dataset("fashion_mnist", files=tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
                  description="Fashion-MNIST 28x28, 10 classes")
def _fashion(root: Path, download: bool = False) -> RealData:
    return _torchvision("fashion_mnist", "FashionMNIST", "FashionMNIST", True, root, download)


@register_dataset("cifar10", files=("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"),
                  description="CIFAR-10 32x32x3 (torchvision's python version)")
def _cifar10(root: Path, download: bool = False) -> RealData:
    return _torchvision("cifar10", "CIFAR10", "cifar-10-batches-py", True, root, download)


@register_dataset("cifar100", files=("cifar-100-python/train", "cifar-100-python/test"),
                  description="CIFAR-100 32x32x3 (torchvision's python version)")
def _cifar100(root: Path, download: bool = False) -> RealData:
    return _torchvision("cifar100", "CIFAR100", "cifar-100-python", True, root, download)


@register_dataset("medmnist", files=("medmnist/<flag>.npz",),
                  description="any MedMNIST 2D flag as medmnist:<flag> (e.g. medmnist:pneumoniamnist), via the medmnist package")
def _medmnist(root: Path, flag: str = "pneumoniamnist", download: bool = False, size: int = 28) -> RealData:
    try:
        import medmnist
        from medmnist import INFO
    except ImportError as exc:
        raise ImportError("MedMNIST needs the medical extra: pip install 'distill-apps[medical]'") from exc
    if flag not in INFO:
        known = ", ".join(sorted(k for k in INFO if "3d" not in k))
        raise DataError(f"Unknown MedMNIST flag {flag!r}. Known 2D flags: {known}.")
    info = INFO[flag]
    folder = root / "medmnist"
    fname = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    if not (folder / fname).exists() and not download:
        raise DataError(
            f"MedMNIST {flag!r} is not under the data root: expected {folder / fname}. Copy the .npz there "
            f"(from Zenodo or medmnist's download), or point --data-root (or ${DATA_ENV}) at the folder that "
            f"holds medmnist/{fname}."
        )
    cls = getattr(medmnist, info["python_class"])
    kw = {} if size == 28 else {"size": size}
    splits = {s: cls(split=s, root=str(folder), download=download, **kw) for s in ("train", "val", "test")}
    task = {"binary-class": "binary", "multi-class": "multiclass", "multi-label, binary-class": "multilabel",
            "ordinal-regression": "ordinal"}.get(info["task"], "multiclass")

    def labels(ds):
        y = np.asarray(ds.labels)
        return y if task == "multilabel" else y.reshape(-1)

    names = [info["label"][k] for k in sorted(info["label"], key=int)]
    return _from_uint8(
        f"medmnist:{flag}", splits["train"].imgs, labels(splits["train"]), splits["test"].imgs,
        labels(splits["test"]), names, flip_invariant=False, task=task,
        x_val=splits["val"].imgs, y_val=labels(splits["val"]),
    )
