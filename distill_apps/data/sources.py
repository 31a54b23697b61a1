"""Every way data comes in, to one :class:`RealData`: tensors, torch ``Dataset``s, Hugging Face ``datasets``.

:func:`as_real_data` is the one dispatcher (``da.distill``/``da.evaluate`` call it): a registered name or
``imagefolder:<path>`` goes to :func:`~distill_apps.data.registry.load_dataset`, a :class:`RealData` passes
through, a map-style torch ``Dataset`` (torchvision's included) to :func:`from_torch`, ``(x, y)`` or
``(x_train, y_train, x_test, y_test)`` tensors to :func:`from_tensors`, a Hugging Face ``Dataset``/``DatasetDict``
to :func:`from_hf`; anything else is refused with a message naming the function to call.

Pixels: uint8 images are kept as uint8 (normalised per batch with the training split's per-channel statistics);
float images are normalised here, once, with those statistics (or the ``mean``/``std`` given). DSA's flip is on
for 3-channel images and off for 1-channel ones (digits and most grey scans are flip-sensitive) unless ``flip``
says otherwise.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .real import RealData, channel_stats, normalize, to_nchw

ACCEPTED = ("a registered name or 'imagefolder:<path>' (da.load_dataset), a RealData, a map-style torch Dataset "
            "(da.from_torch(train, test)), tensors (da.from_tensors(x_train, y_train, x_test, y_test)) or a Hugging "
            "Face datasets.Dataset (da.from_hf(ds, image_column=..., label_column=...))")


# ---------------------------------------------------------------------- shared assembly
def _default_flip(channels: int, flip: bool | None) -> bool:
    """Whether DSA may flip: the given setting, else True for colour images only."""
    return channels == 3 if flip is None else bool(flip)


def _labels(y: Any, what: str) -> torch.Tensor:
    """Integer class ids as an int64 ``(N,)`` tensor; anything else is a DataError."""
    t = torch.as_tensor(np.asarray(y.cpu() if torch.is_tensor(y) else y))
    if t.ndim != 1 or t.is_floating_point() or t.dtype == torch.bool:
        raise DataError(f"{what} labels must be integer class ids of shape (N,); got {t.dtype} {tuple(t.shape)}.")
    return t.long()


def _images(x: Any, what: str) -> torch.Tensor:
    """Images as an ``(N, C, H, W)`` tensor on the CPU (uint8 kept, floats checked); other shapes are a DataError."""
    t = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    t = t.detach().cpu()
    if t.ndim not in (3, 4):
        raise DataError(f"{what} images must be (N, C, H, W), (N, H, W, C) or (N, H, W); got shape {tuple(t.shape)}.")
    if t.dtype == torch.uint8:
        return to_nchw(t)
    if not t.is_floating_point():
        raise DataError(f"{what} images are {t.dtype}: give uint8 pixels or floats.")
    return to_nchw(t.float())


def assemble(name: str, x_train: Any, y_train: Any, x_test: Any = None, y_test: Any = None, *,
             num_classes: int | None = None, class_names: Sequence[str] | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None, flip: bool | None = None,
             source: dict[str, Any] | None = None) -> RealData:
    """Images and labels (tensors or arrays) -> :class:`RealData` (see the module docstring for the pixel rules)."""
    xtr, ytr = _images(x_train, f"{name} train"), _labels(y_train, f"{name} train")
    if (x_test is None) != (y_test is None):
        raise ConfigError("Give both x_test and y_test, or neither (the data then has no test split).")
    if x_test is None:
        xte, yte = xtr[:0].clone(), ytr[:0].clone()
    else:
        xte, yte = _images(x_test, f"{name} test"), _labels(y_test, f"{name} test")
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{name} {split}: {x.shape[0]} images but {y.shape[0]} labels.")
    if xtr.shape[0] == 0:
        raise DataError(f"{name}: the training split is empty.")
    if xte.shape[0] and xte.shape[1:] != xtr.shape[1:]:
        raise DataError(f"{name}: train images are {tuple(xtr.shape[1:])} but test images are {tuple(xte.shape[1:])}.")
    if xte.dtype != xtr.dtype and xte.shape[0]:
        raise DataError(f"{name}: train images are {xtr.dtype} but test images are {xte.dtype}; give both alike.")
    top = int(max(ytr.max(), yte.max() if yte.numel() else 0))
    k = int(num_classes) if num_classes is not None else (len(class_names) if class_names else top + 1)
    if int(min(ytr.min(), yte.min() if yte.numel() else 0)) < 0 or top >= k:
        raise DataError(f"{name}: labels must lie in [0, {k}); got [{int(ytr.min())}, {top}].")
    if k < 2:
        raise DataError(f"{name} has one class: classification needs at least two.")
    if xtr.dtype == torch.uint8:
        if mean is None or std is None:
            mean, std = channel_stats(xtr)
    else:
        xtr, mean, std = normalize(xtr, tuple(mean) if mean is not None else None, tuple(std) if std is not None else None)
        xte = normalize(xte, mean, std)[0] if xte.shape[0] else xte.float()
    real = RealData(name=name, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, num_classes=k, mean=tuple(mean),
                    std=tuple(std), class_names=[str(c) for c in class_names] if class_names else None,
                    flip_invariant=_default_flip(xtr.shape[1], flip))
    real.source = {**(source or {"kind": "tensors"}), "fingerprint": real.fingerprint()}
    return real


def from_tensors(x_train: Any, y_train: Any, x_test: Any = None, y_test: Any = None, *, name: str = "tensors",
                 num_classes: int | None = None, class_names: Sequence[str] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 flip: bool | None = None) -> RealData:
    """Tensors or numpy arrays -> :class:`RealData`. Images (N, C, H, W), (N, H, W, C) or (N, H, W): uint8 stays
    uint8; floats (e.g. in [0, 1]) are normalised with the training split's statistics (or ``mean``/``std``).
    Without a test split the data can be distilled but not evaluated."""
    return assemble(name, x_train, y_train, x_test, y_test, num_classes=num_classes, class_names=class_names,
                    mean=mean, std=std, flip=flip, source={"kind": "tensors"})


# ---------------------------------------------------------------------- per-item conversion
def _item_image(img: Any, where: str) -> np.ndarray:
    """One image (PIL, tensor, array, nested list) -> a (C, H, W) uint8 or float32 array."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(img, Image.Image):
        if img.mode in ("I", "F") or img.mode.startswith("I;"):
            raise DataError(f"{where} is a {img.mode} PIL image (more than 8 bits): convert it to 8-bit first.")
        a = np.asarray(img.convert("L" if img.mode in ("1", "L", "LA", "La") else "RGB"))
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    if torch.is_tensor(img):
        a = img.detach().cpu().numpy()
        chw = True
    elif isinstance(img, (np.ndarray, list)):
        a = np.asarray(img)
        chw = False
    else:
        raise ConfigError(f"{where} is a {type(img).__name__}; images must be PIL images, tensors or arrays. Add a "
                          "transform that returns one (e.g. torchvision.transforms.PILToTensor()).")
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and not (chw and a.shape[0] in (1, 3)) and a.shape[-1] in (1, 3):
        a = a.transpose(2, 0, 1)  # arrays are (H, W, C) by convention, tensors (C, H, W)
    if a.ndim != 3:
        raise DataError(f"{where} has shape {a.shape}; expected one image (C, H, W) or (H, W[, C]).")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.integer) and a.size and a.min() >= 0 and a.max() <= 255:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32)
    raise DataError(f"{where} holds {a.dtype} values outside 0..255; give uint8 pixels or floats.")


def _collect(items, n: int, where: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill preallocated (N, C, H, W) images and (N,) labels from an iterator of (image, label)."""
    x = y = None
    first_shape = None
    it = items
    if progress and n > 2000:
        from tqdm.auto import tqdm

        it = tqdm(items, total=n, desc=f"converting {where}", leave=False)
    for i, (img, label) in enumerate(it):
        a = _item_image(img, f"{where} item {i}")
        if x is None:
            first_shape = a.shape
            x = np.empty((n, *a.shape), dtype=a.dtype)
            y = np.empty(n, dtype=np.int64)
        elif a.shape != first_shape:
            raise DataError(f"Images of different sizes in {where}: item {i} is {a.shape} (C, H, W) but item 0 is "
                            f"{first_shape}. Resize them in the dataset (e.g. a torchvision Resize/CenterCrop "
                            "transform), or load an image folder with --image-size.")
        elif a.dtype != x.dtype:
            raise DataError(f"{where}: item {i} is {a.dtype} but item 0 is {x.dtype}; give every image alike.")
        y[i] = _scalar_label(label, f"{where} item {i}")
        x[i] = a
    if x is None:
        raise DataError(f"{where} is empty.")
    return torch.from_numpy(x), torch.from_numpy(y)


def _scalar_label(label: Any, where: str) -> int:
    """One item's label as an int; tensors of more than one value, floats and bools are refused."""
    if torch.is_tensor(label) or isinstance(label, np.ndarray):
        if label.size == 1 if isinstance(label, np.ndarray) else label.numel() == 1:
            label = label.item()
        else:
            raise ConfigError(f"{where}: the label has shape {tuple(label.shape)}; from_torch and from_hf take one "
                              "class id per image (multi-label data is not supported by them).")
    if isinstance(label, (bool, float)) or not isinstance(label, (int, np.integer)):
        raise DataError(f"{where}: the label {label!r} is not an integer class id.")
    return int(label)


# ---------------------------------------------------------------------- torch Datasets
def _is_map_style(ds: Any) -> bool:
    """Whether ``ds`` is a map-style dataset (``__getitem__`` and ``__len__``, not iterable-style)."""
    return hasattr(ds, "__getitem__") and hasattr(ds, "__len__") and not isinstance(ds, torch.utils.data.IterableDataset)


def _torch_fast(ds: Any) -> tuple[Any, Any] | None:
    """torchvision datasets without transforms keep their pixels in ``.data`` and labels in ``.targets``."""
    if any(getattr(ds, a, None) is not None for a in ("transform", "transforms", "target_transform")):
        return None
    data, targets = getattr(ds, "data", None), getattr(ds, "targets", getattr(ds, "labels", None))
    if data is None or targets is None or len(targets) != len(ds):
        return None
    arr = data.numpy() if torch.is_tensor(data) else data
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim not in (3, 4) or len(arr) != len(ds):
        return None
    return arr, np.asarray(targets.cpu() if torch.is_tensor(targets) else targets)


def _torch_split(ds: Any, what: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one torch dataset: read in bulk from ``.data``/``.targets`` when possible, else item by
    item."""
    if isinstance(ds, torch.utils.data.IterableDataset) or not _is_map_style(ds):
        raise ConfigError(f"{what} is a {type(ds).__name__}, not a map-style Dataset (with __len__ and __getitem__): "
                          "collect it into tensors and call da.from_tensors(x, y).")
    fast = _torch_fast(ds)
    if fast is not None:
        return to_nchw(fast[0]), torch.as_tensor(fast[1]).long()

    def items():
        """Yield ``(image, label)`` of every item, refusing dict items and items that are not pairs."""
        for i in range(len(ds)):
            item = ds[i]
            if isinstance(item, dict):
                raise ConfigError(f"{what} item {i} is a dict ({', '.join(map(str, item))}); from_torch takes datasets "
                                  "yielding (image, label). For a Hugging Face dataset call da.from_hf(ds, "
                                  "image_column=..., label_column=...).")
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise ConfigError(f"{what} item {i} is a {type(item).__name__}; from_torch takes datasets yielding "
                                  "(image, label) pairs.")
            yield item[0], item[1]

    return _collect(items(), len(ds), what, progress)


def from_torch(train: Any, test: Any = None, *, name: str | None = None, num_classes: int | None = None,
               class_names: Sequence[str] | None = None, flip: bool | None = None, progress: bool = True) -> RealData:
    """Map-style torch ``Dataset``s yielding ``(image, label)`` -> :class:`RealData` (read once, item by item, or
    straight from ``.data``/``.targets`` for torchvision datasets without transforms). Images may be PIL images,
    uint8 tensors (kept as uint8) or float tensors (normalised with the training split's statistics); all must
    share one size. Without ``test`` the data can be distilled but not evaluated."""
    name = name or type(train).__name__.lower()
    xtr, ytr = _torch_split(train, f"{name} (train)", progress)
    xte, yte = _torch_split(test, f"{name} (test)", progress) if test is not None else (None, None)
    names = class_names or getattr(train, "classes", None)
    return assemble(name, xtr, ytr, xte, yte, num_classes=num_classes, class_names=names, flip=flip,
                    source={"kind": "torch", "class": f"{type(train).__module__}.{type(train).__qualname__}"})


# ---------------------------------------------------------------------- Hugging Face datasets
def _is_hf(obj: Any) -> bool:
    """Whether ``obj`` is a Hugging Face ``Dataset`` or ``DatasetDict`` (checked without importing ``datasets``)."""
    return type(obj).__module__.split(".")[0] == "datasets" and type(obj).__name__ in ("Dataset", "DatasetDict")


def _hf_columns(ds: Any) -> tuple[str | None, str | None]:
    """The image and label columns of a Hugging Face dataset, when its features make them unambiguous."""
    feats = getattr(ds, "features", {}) or {}
    kinds = {k: type(v).__name__ for k, v in feats.items()}
    img = [k for k, t in kinds.items() if t == "Image"] or [k for k in ("image", "img") if k in feats]
    lab = [k for k, t in kinds.items() if t == "ClassLabel"] or [k for k in ("label", "labels") if k in feats]
    return (img[0] if len(img) == 1 else None), (lab[0] if len(lab) == 1 else None)


def _hf_split(ds: Any, image_column: str, label_column: str, what: str, progress: bool):
    """Images and labels of one Hugging Face split, read in batches; a missing column is a DataError naming the columns
    there are."""
    cols = list(ds.column_names)
    for role, col in (("image", image_column), ("label", label_column)):
        if col not in cols:
            guess = _hf_columns(ds)[0 if role == "image" else 1]
            hint = f" (this one looks like {role}_column={guess!r})" if guess else ""
            raise DataError(f"The Hugging Face dataset {what} has no {role} column {col!r}; its columns are "
                            f"{', '.join(cols)}. Pass da.from_hf(ds, {role}_column=<the {role} column>){hint}.")
    n = len(ds)

    def items():
        """Yield ``(image, label)`` pairs, 512 rows at a time."""
        for i in range(0, n, 512):
            batch = ds[i:i + 512]
            yield from zip(batch[image_column], batch[label_column])

    return _collect(items(), n, f"{what}", progress)


def from_hf(ds: Any, image_column: str = "image", label_column: str = "label", test: Any = None, *,
            name: str | None = None, flip: bool | None = None, progress: bool = True) -> RealData:
    """A Hugging Face ``datasets.Dataset`` (with ``test``: a second one) or a ``DatasetDict`` (its ``train`` and
    ``test``/``validation`` splits) with an image and a class-label column -> :class:`RealData`. Needs the ``hf``
    extra (``pip install 'distill-apps[hf]'``) only to have built ``ds``; nothing is downloaded here."""
    if not _is_hf(ds):
        raise ConfigError(f"from_hf takes a Hugging Face datasets.Dataset or DatasetDict; got {type(ds).__name__}. "
                          f"Accepted data: {ACCEPTED}.")
    if type(ds).__name__ == "DatasetDict":
        if "train" not in ds:
            raise DataError(f"The DatasetDict has splits {', '.join(ds)} but no 'train': pass from_hf(ds['<split>']).")
        test = test if test is not None else (ds["test"] if "test" in ds else ds.get("validation"))
        ds = ds["train"]
    name = name or (getattr(getattr(ds, "info", None), "dataset_name", None) or "hf")
    xtr, ytr = _hf_split(ds, image_column, label_column, f"{name} (train)", progress)
    xte, yte = _hf_split(test, image_column, label_column, f"{name} (test)", progress) if test is not None else (None, None)
    feat = ds.features.get(label_column)
    names = list(feat.names) if type(feat).__name__ == "ClassLabel" else None
    return assemble(name, xtr, ytr, xte, yte, class_names=names, flip=flip,
                    source={"kind": "hf", "image_column": image_column, "label_column": label_column})


# ---------------------------------------------------------------------- the dispatcher
def as_real_data(obj: Any, data_root: str | os.PathLike | None = None, download: bool = False,
                 **options) -> RealData:
    """Any accepted data object -> :class:`RealData` (see the module docstring); ``options`` go to
    :func:`~distill_apps.data.registry.load_dataset` for names."""
    from .registry import load_dataset

    if isinstance(obj, (str, os.PathLike)) or isinstance(obj, RealData):
        return load_dataset(obj if isinstance(obj, RealData) else str(obj), data_root, download, **options)
    if _is_hf(obj):
        probe = obj["train"] if type(obj).__name__ == "DatasetDict" and "train" in obj else obj
        img, lab = _hf_columns(probe)
        if img is None or lab is None:
            raise ConfigError(f"This Hugging Face dataset's image and label columns are not clear from its features "
                              f"(columns: {', '.join(probe.column_names)}): call da.from_hf(ds, image_column=..., "
                              "label_column=...) and pass the result.")
        real = from_hf(obj, img, lab)
    elif isinstance(obj, (tuple, list)) and len(obj) in (2, 4) and all(torch.is_tensor(o) or isinstance(o, np.ndarray)
                                                                      for o in obj):
        real = from_tensors(*obj)
    elif isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(o, torch.utils.data.Dataset) for o in obj):
        real = from_torch(obj[0], obj[1])
    elif isinstance(obj, torch.utils.data.DataLoader):
        raise ConfigError("Got a DataLoader; pass its dataset instead: da.from_torch(loader.dataset, test_dataset).")
    elif isinstance(obj, torch.utils.data.Dataset) and _is_map_style(obj):
        real = from_torch(obj)
    elif torch.is_tensor(obj) or isinstance(obj, np.ndarray):
        raise ConfigError("Got a single tensor; pass images with their labels: da.from_tensors(x_train, y_train, "
                          "x_test, y_test), or the tuple (x_train, y_train).")
    else:
        raise ConfigError(f"Unsupported data object of type {type(obj).__module__}.{type(obj).__name__}. Accepted: "
                          f"{ACCEPTED}.")
    return load_dataset(real, data_root, download, **options) if options else real


# ---------------------------------------------------------------------- finding a summary's data again
def data_for_summary(summary: Any, dataset: Any = None, data_root: str | os.PathLike | None = None,
                     progress: bool = False) -> RealData:
    """The data to evaluate ``summary`` on: ``dataset`` when given (converted), else the source its metadata
    records; then the summary's transform (ZCA) is rebuilt on it and checked. Refuses, saying exactly what to
    pass, when the source cannot be found."""
    from .folder import from_folder
    from .registry import load_dataset
    from .transforms import same_transform, transform_from_spec

    meta = summary.meta or {}
    data = meta.get("data") or {}
    src = data.get("source") or {}
    if dataset is not None:
        real = as_real_data(dataset, data_root)
    elif src.get("kind") == "registered":
        real = load_dataset(src["name"], data_root)
    elif src.get("kind") == "imagefolder":
        path = Path(src["path"])
        size = src.get("image_size")
        if not path.is_dir():
            raise DataError(
                f"The summary was distilled from the image folder {path}, which is not there now: pass --dataset "
                f"imagefolder:<its path>" + (f" --image-size {size[0]}" if size else "") + " (in Python: "
                "da.evaluate(summary, da.from_folder(path" + (f", image_size={size[0]}" if size else "") + "))).")
        real = from_folder(path, image_size=tuple(size) if size else None, split_seed=src.get("split_seed", 0),
                           test_fraction=src.get("test_fraction", 0.2), max_per_class=src.get("max_per_class"),
                           progress=progress)
        if real.source.get("cache_key") != src.get("cache_key"):
            warnings.warn(f"The image folder {path} changed since the summary was distilled (its files, sizes or "
                          "modification times differ): the test split may not be the one of the original run.",
                          stacklevel=3)
    elif src.get("kind") in ("tensors", "torch", "hf", "object"):
        raise DataError(
            f"The summary was distilled from in-memory data ({src['kind']}, fingerprint {src.get('fingerprint', '?')}), "
            "which distill-apps cannot find by itself. On the command line pass --dataset with a registered name or "
            "imagefolder:<path> holding the same data; in Python call da.evaluate(summary, data) with data from "
            "da.from_tensors(x_train, y_train, x_test, y_test), da.from_torch(train, test) or da.from_hf(ds).")
    elif meta.get("dataset"):
        real = load_dataset(meta["dataset"], data_root)  # summaries written before data provenance was recorded
    else:
        raise DataError("The summary does not record its dataset: pass one (--dataset NAME or imagefolder:<path>; "
                        "in Python da.evaluate(summary, dataset)).")
    if dataset is None and "flip_invariant" in data:
        real = real.with_flip(bool(data["flip_invariant"]))
    spec = data.get("transform")
    if spec is not None and real.transform is None:
        real = real.with_transform(transform_from_spec(real, spec, progress=progress))
    elif not same_transform(spec, real.transform):
        have = "no transform" if real.transform is None else f"a {real.transform.kind} transform (reg {real.transform.reg})"
        want = "no transform" if spec is None else f"{spec['kind']} (reg {spec.get('reg')})"
        raise DataError(f"The summary was distilled on data with {want} but {real.name} has {have}: load the data "
                        "as the summary was made (e.g. without zca=..., or with the same zca regulariser).")
    return real
