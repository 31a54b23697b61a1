"""Dataset registry: ``digits`` (embedded default), torchvision datasets and MedMNIST, all offline.

The data root comes from the ``data_root`` argument, else ``$DISTILL_APPS_DATA``, else ``~/.cache/distill_apps``.
Nothing is downloaded unless ``download=True`` is passed explicitly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..registry import Registry
from .real import RealData, channel_stats, to_nchw

DATA_ENV = "DISTILL_APPS_DATA"
CACHE_ENV = "DISTILL_APPS_CACHE"


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


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the cache root (decoded image folders, fitted ZCA matrices, experts): argument, then
    ``$DISTILL_APPS_CACHE``, then ``~/.cache/distill_apps``."""
    if root:
        return Path(root).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "distill_apps"


def register_dataset(name: str, files: tuple[str, ...] = (), description: str = "", modality: str = "image"):
    """Decorator: register ``fn(root, download=False)`` (or ``fn(root, arg, download=False)`` for a family named
    ``name:arg``) as a dataset of ``modality``."""
    def deco(fn: Callable[..., RealData]) -> Callable[..., RealData]:
        """Register ``fn`` as the loader of dataset ``name``."""
        DATASETS.register(name)(DatasetSpec(name, fn, files, description or (fn.__doc__ or "").strip(), modality))
        return fn

    return deco


def _missing_error(name: str, root: Path, files: tuple[str, ...]) -> DataError:
    """The DataError for a dataset whose files are not under the data root, naming the missing files and the fix."""
    missing = [f for f in files if not (root / f).exists()]
    return DataError(
        f"Dataset {name!r} is not under the data root {root}: missing {', '.join(missing) or files}. "
        f"Put the files there, or point --data-root (or ${DATA_ENV}) at the folder that holds them "
        f"(distill-apps never downloads unless asked)."
    )


def _download_error(name: str, root: Path, exc: BaseException) -> DataError:
    """The DataError for a ``--download`` that failed (typically: no network), with the offline fix."""
    return DataError(
        f"Downloading dataset {name!r} into {root} failed ({type(exc).__name__}: "
        f"{' '.join(str(exc).split())[:200]}). Without network access, copy its files there from another "
        f"machine, or point --data-root (or ${DATA_ENV}) at a folder that holds them, and run without --download."
    )


def dataset_present(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether the files dataset ``name`` needs are present under the data root."""
    spec = DATASETS.get(name.split(":")[0] if name.startswith("medmnist:") else name)
    r = data_root(root)
    files = spec.files
    if name.startswith("medmnist:"):
        files = (f"medmnist/{name.split(':', 1)[1]}.npz",)
    return all((r / f).exists() for f in files)


def load_dataset(name: Any, root: str | os.PathLike | None = None, download: bool = False, *,
                 image_size: int | tuple[int, int] | None = None, zca: bool | float = False, flip: bool | None = None,
                 max_per_class: int | None = None, progress: bool = True) -> RealData:
    """Load data by name: a registered dataset (``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``,
    ``cifar100``, ``medmnist:<flag>``; other modalities: ``cora``, ``citeseer``, ``ml-100k``, ``sst2``, ``mutag``,
    ``tu:<folder>``, which load as their modality's data object, see the spec's ``modality``) or
    ``imagefolder:<path>`` (see :func:`~distill_apps.data.folder.from_folder`; ``image_size`` and
    ``max_per_class`` apply to folders). Any other data object (tensors, torch or Hugging Face
    datasets, a :class:`RealData`) is converted by :func:`~distill_apps.data.sources.as_real_data`.

    ``flip`` overrides whether DSA may flip the images (registered datasets know: digits/MNIST no, CIFAR and
    Fashion-MNIST yes; other sources: yes for colour, no for grey). ``zca=True`` (or a regulariser, default 0.1)
    whitens the images (KIP/MTT/FRePO/RFAD's CIFAR convention, :mod:`~distill_apps.data.transforms`).
    """
    from .folder import PREFIX, from_folder

    if isinstance(name, RealData):
        real = name
    elif not isinstance(name, str):
        from .sources import as_real_data

        real = as_real_data(name, root, download)
    elif name.startswith(PREFIX):
        return from_folder(name[len(PREFIX):], image_size, max_per_class=max_per_class, flip=flip, zca=zca,
                           progress=progress, data_root=root)
    else:
        if image_size is not None or max_per_class is not None:
            raise ConfigError(f"--image-size and --max-per-class apply to image folders (imagefolder:<path>), not to "
                              f"the registered dataset {name!r}.")
        family, sep, arg = name.partition(":")
        if name not in DATASETS.names() and not (sep and family in DATASETS.names()):
            raise ConfigError(f"Unknown dataset {name!r}. Known datasets: {', '.join(DATASETS.names())}; or give an "
                              "image folder as imagefolder:<path> (one sub-folder per class).")
        spec = DATASETS.get(name if name in DATASETS.names() else family)
        if spec.modality != "image":
            if zca or flip is not None:
                raise ConfigError(f"zca and flip apply to images; {name!r} is a {spec.modality} dataset.")
            if sep and name not in DATASETS.names():
                return spec.loader(data_root(root), arg, download=download)
            return spec.loader(data_root(root), download=download)
        if family == "medmnist" and sep:
            real = spec.loader(data_root(root), flag=arg, download=download)
        elif sep and name not in DATASETS.names():
            real = spec.loader(data_root(root), arg, download=download)
        else:
            real = spec.loader(data_root(root), download=download)
        real.source = {"kind": "registered", "name": name}
    if flip is not None and bool(flip) != real.flip_invariant:
        real = real.with_flip(flip)
    if zca:
        from .transforms import fit_zca

        if real.transform is not None:
            raise ConfigError(f"{real.name} is already whitened ({real.transform.kind}); load it once with zca=...")
        real = real.with_transform(fit_zca(real, reg=0.1 if zca is True else float(zca), progress=progress))
    return real


def list_datasets() -> list[str]:
    """Names of every registered dataset."""
    return DATASETS.names()


def _from_uint8(name: str, xtr, ytr, xte, yte, classes, flip_invariant: bool, **kw) -> RealData:
    """Shared tail of the image loaders: uint8 (N,H,W[,C]) arrays -> a uint8 store with train statistics."""
    x_train = to_nchw(xtr)
    mean, std = channel_stats(x_train)
    extra = {}
    if "x_val" in kw:
        extra["x_val"] = to_nchw(kw.pop("x_val"))
        extra["y_val"] = torch.as_tensor(np.asarray(kw.pop("y_val"))).long()
    return RealData(
        name=name, x_train=x_train, y_train=torch.as_tensor(np.asarray(ytr)).long(),
        x_test=to_nchw(xte), y_test=torch.as_tensor(np.asarray(yte)).long(), num_classes=len(classes),
        mean=mean, std=std, class_names=[str(c) for c in classes], flip_invariant=flip_invariant, **extra, **kw,
        source={"kind": "registered", "name": name},
    )


@register_dataset("digits", description="scikit-learn's bundled 8x8 digits (1797 images, 10 classes); no files needed")
def _digits(root: Path, download: bool = False) -> RealData:
    """scikit-learn's bundled 8x8 digits as uint8 images, a stratified 75/25 split (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0 * 255.0).astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=0)
    return _from_uint8("digits", xtr, ytr, xte, yte, list(range(10)), flip_invariant=False)


def _torchvision(name: str, cls_name: str, folder: str, flip_invariant: bool, root: Path, download: bool) -> RealData:
    """Load a torchvision dataset class from ``root`` (downloading only when asked) as RealData."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        tr = cls(str(root), train=True, download=download)
        te = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as exc:  # files missing, or (with --download) no network
        spec = DATASETS.get(name)
        raise (_download_error(name, root, exc) if download else _missing_error(name, root, spec.files)) from exc
    xtr, xte = tr.data, te.data
    xtr = xtr.numpy() if torch.is_tensor(xtr) else xtr
    xte = xte.numpy() if torch.is_tensor(xte) else xte
    classes = getattr(tr, "classes", None) or list(range(int(max(tr.targets)) + 1))
    return _from_uint8(name, xtr, np.asarray(tr.targets), xte, np.asarray(te.targets), classes, flip_invariant)


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@register_dataset("mnist", files=tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES), description="MNIST 28x28, 10 classes")
def _mnist(root: Path, download: bool = False) -> RealData:
    """MNIST from ``MNIST/raw`` under the data root."""
    return _torchvision("mnist", "MNIST", "MNIST", False, root, download)


@register_dataset("fashion_mnist", files=tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
                  description="Fashion-MNIST 28x28, 10 classes")
def _fashion(root: Path, download: bool = False) -> RealData:
    """Fashion-MNIST from ``FashionMNIST/raw`` under the data root."""
    return _torchvision("fashion_mnist", "FashionMNIST", "FashionMNIST", True, root, download)


@register_dataset("cifar10", files=("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"),
                  description="CIFAR-10 32x32x3 (torchvision's python version)")
def _cifar10(root: Path, download: bool = False) -> RealData:
    """CIFAR-10 from torchvision's python version under the data root."""
    return _torchvision("cifar10", "CIFAR10", "cifar-10-batches-py", True, root, download)


@register_dataset("cifar100", files=("cifar-100-python/train", "cifar-100-python/test"),
                  description="CIFAR-100 32x32x3 (torchvision's python version)")
def _cifar100(root: Path, download: bool = False) -> RealData:
    """CIFAR-100 from torchvision's python version under the data root."""
    return _torchvision("cifar100", "CIFAR100", "cifar-100-python", True, root, download)


@register_dataset("medmnist", files=("medmnist/<flag>.npz",),
                  description="any MedMNIST 2D flag as medmnist:<flag> (e.g. medmnist:pneumoniamnist), via the medmnist package")
def _medmnist(root: Path, flag: str = "pneumoniamnist", download: bool = False, size: int = 28) -> RealData:
    """Any 2D MedMNIST dataset by flag (``medmnist:<flag>``) from ``medmnist/<flag>.npz`` via the medmnist package (Yang
    et al., Scientific Data 2023); multi-label flags keep multi-hot labels."""
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
    try:
        if download:
            folder.mkdir(parents=True, exist_ok=True)
        splits = {s: cls(split=s, root=str(folder), download=download, **kw) for s in ("train", "val", "test")}
    except (RuntimeError, OSError) as exc:
        raise _download_error(f"medmnist:{flag}", root, exc) from exc
    task = {"binary-class": "binary", "multi-class": "multiclass", "multi-label, binary-class": "multilabel",
            "ordinal-regression": "ordinal"}.get(info["task"], "multiclass")

    def labels(ds):
        """Labels of a MedMNIST split: multi-hot rows for multi-label tasks, class ids otherwise."""
        y = np.asarray(ds.labels)
        return y if task == "multilabel" else y.reshape(-1)

    names = [info["label"][k] for k in sorted(info["label"], key=int)]
    return _from_uint8(
        f"medmnist:{flag}", splits["train"].imgs, labels(splits["train"]), splits["test"].imgs,
        labels(splits["test"]), names, flip_invariant=False, task=task,
        x_val=splits["val"].imgs, y_val=labels(splits["val"]),
    )
