"""The real dataset every method reads: a compact per-split image store, per-class indexing, batches on demand.

Images are kept as they came: **uint8** pixels wherever the source is 8-bit (normalised on the fly, on the target
device, only in the batch that is drawn: CIFAR-10's training set costs 150 MB instead of 600 MB) or float32 that
is already normalised (tensors built by older code). Hot paths draw batches with :meth:`RealData.images` or
hand :meth:`RealData.view` (a tensor-like lazy view) to ``train.fit``/``train.predict``; ``x_train``/``x_test``
remain as a compatibility accessor that materialises the whole normalised float split once.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..runtime import memory_format

SPLITS = ("train", "test", "val")


class RealData:
    """Train/test (and optional val) images of one image-classification dataset, with labels and statistics.

    ``x_*`` given as uint8 ``(N, C, H, W)`` are raw pixels, normalised in each drawn batch as
    ``(x / 255 - mean) / std`` and then passed through ``transform`` (e.g. :class:`~distill_apps.data.transforms.ZCA`);
    float ``x_*`` are taken as already normalised. ``y_*`` are int64 class ids, or multi-hot ``(N, L)`` rows when
    ``task`` is ``multilabel``. ``task`` is ``multiclass`` (default), ``binary``, ``multilabel`` or ``ordinal``
    (MedMNIST carries these). For multi-label data ``by_class[c]`` holds the images positive for label ``c``, so
    per-label budgets and class-balanced batches work unchanged. ``source`` says where the data came from (a
    summary records it, so evaluation can find the same data again).
    """

    def __init__(self, name: str, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                 class_names: list[str] | None = None, flip_invariant: bool = False, task: str = "multiclass",
                 x_val: torch.Tensor | None = None, y_val: torch.Tensor | None = None, *,
                 source: dict[str, Any] | None = None, transform: Any = None, memory_mapped: bool = False) -> None:
        """Wrap the splits (uint8 or float images, labels) with their normalisation, class names and provenance; shapes
        and labels are checked."""
        self.name = name
        self._x: dict[str, torch.Tensor] = {"train": x_train, "test": x_test}
        if x_val is not None:
            self._x["val"] = x_val
        self.y_train, self.y_test, self.y_val = y_train, y_test, y_val
        self.num_classes = int(num_classes)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        self.flip_invariant, self.task = bool(flip_invariant), task
        self.source = dict(source) if source else {"kind": "object", "name": name}
        self.transform = transform
        self.memory_mapped = memory_mapped
        self._by_class: list[torch.Tensor] | None = None
        self._float: dict[str, torch.Tensor] = {}
        self._stats: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._check()

    def _check(self) -> None:
        """Refuse splits whose images are not ``(N, C, H, W)``, whose labels do not match them, or whose labels are out
        of range."""
        labels = {"train": self.y_train, "test": self.y_test, "val": self.y_val}
        for split, x in self._x.items():
            y = labels[split]
            if x.ndim != 4:
                raise DataError(f"{self.name} {split} images must be (N, C, H, W); got shape {tuple(x.shape)}.")
            if y is None or y.shape[0] != x.shape[0]:
                raise DataError(f"{self.name} {split}: {x.shape[0]} images but "
                                f"{'no' if y is None else y.shape[0]} labels.")
            if x.dtype != torch.uint8 and not x.is_floating_point():
                raise DataError(f"{self.name} {split} images are {x.dtype}: give uint8 pixels or normalised floats.")
            if x.is_floating_point() and not torch.isfinite(x).all():
                bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
                raise DataError(f"{self.name} {split} has NaN/Inf in {bad} images: clean or drop them before distilling.")
        if len(self.mean) not in (1, self._x["train"].shape[1]) or len(self.std) != len(self.mean):
            raise DataError(f"{self.name}: mean/std have {len(self.mean)}/{len(self.std)} values for "
                            f"{self._x['train'].shape[1]} channels.")
        if self._x["train"].shape[1:] != self._x["test"].shape[1:]:
            raise DataError(f"{self.name}: train images are {tuple(self._x['train'].shape[1:])} but test images are "
                            f"{tuple(self._x['test'].shape[1:])}.")

    def __repr__(self) -> str:
        """Name, split sizes, image shape, classes and pixel kind; never the tensors."""
        n = {s: int(x.shape[0]) for s, x in self._x.items()}
        return (f"RealData({self.name!r}, {n}, image_shape={self.image_shape}, classes={self.num_classes}, "
                f"pixels={self.pixels}{', transform=' + self.transform.kind if self.transform else ''})")

    # ------------------------------------------------------------------ shape and storage
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self._x["train"].shape[1:])  # type: ignore[return-value]

    @property
    def pixels(self) -> str:
        """``uint8`` (raw 8-bit pixels, normalised per batch) or ``float`` (stored already normalised)."""
        return "uint8" if self._x["train"].dtype == torch.uint8 else "float"

    @property
    def splits(self) -> tuple[str, ...]:
        """The names of the splits this data holds (``train``, ``test`` and maybe ``val``)."""
        return tuple(self._x)

    def size(self, split: str = "train") -> int:
        """Number of images in ``split`` (0 for a split that is absent)."""
        return int(self._x[split].shape[0]) if split in self._x else 0

    def stored(self, split: str = "train") -> torch.Tensor:
        """The stored tensor of ``split`` as it is kept (uint8 pixels or normalised floats); do not modify it."""
        return self._store(split)

    def nbytes(self) -> int:
        """Bytes held by the image stores (memory-mapped stores count their file size)."""
        return sum(x.numel() * x.element_size() for x in self._x.values())

    def _store(self, split: str) -> torch.Tensor:
        """The stored (possibly uint8) image tensor of ``split``; an absent split is a DataError."""
        if split not in self._x:
            raise DataError(f"{self.name} has no {split!r} split (it has {', '.join(self._x)}).")
        return self._x[split]

    # ------------------------------------------------------------------ batches (the hot path)
    def _norm_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as ``(1, C, 1, 1)`` float32 tensors on ``device``, cached per device."""
        key = (str(device), "f32")
        if key not in self._stats:
            self._stats[key] = (torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1),
                                torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1))
        return self._stats[key]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Stored values -> model inputs: uint8 pixels become ``(x / 255 - mean) / std``, then the transform."""
        if x.dtype == torch.uint8:
            m, s = self._norm_stats(x.device)
            x = x.float().div_(255.0).sub_(m).div_(s)
        if self.transform is not None:
            x = self.transform.apply(x)
        return x

    def images(self, index: Any = None, split: str = "train", device: torch.device | str | None = None
               ) -> torch.Tensor:
        """Normalised float32 images ``index`` of ``split`` (all when ``None``; a tensor, list or slice), on
        ``device`` (default: where the store is). Only the drawn rows are copied, moved and normalised: the uint8
        batch travels to the device and is normalised there. A fresh tensor, except for ``index=None`` on a float
        store without transform, which returns the stored tensor itself."""
        x = self._store(split)
        if index is not None:
            if torch.is_tensor(index):
                index = index.to(x.device) if index.device != x.device else index
            elif not isinstance(index, slice):
                index = torch.as_tensor(index, dtype=torch.long, device=x.device)
            x = x[index]
        if device is not None:
            x = x.to(device, non_blocking=True)
        return memory_format(self.normalize(x), x.device)

    def labels(self, index: Any = None, split: str = "train", device: torch.device | str | None = None
               ) -> torch.Tensor:
        """Labels of ``split`` (all, or those at ``index``), optionally moved to ``device``."""
        y = {"train": self.y_train, "test": self.y_test, "val": self.y_val}[split]
        if y is None:
            raise DataError(f"{self.name} has no {split!r} split.")
        if index is not None:
            if torch.is_tensor(index) and index.device != y.device:
                index = index.to(y.device)
            y = y[index]
        return y if device is None else y.to(device)

    def view(self, split: str = "train", device: torch.device | str | None = None,
             index: torch.Tensor | None = None) -> "ImageView":
        """A tensor-like lazy view of ``split`` (optionally of its rows ``index``): ``view[i]`` is a normalised
        float batch on ``device``. ``train.fit`` and ``train.predict`` accept it wherever they take images."""
        return ImageView(self, split, None if device is None else torch.device(device), index)

    def batches(self, split: str = "test", batch_size: int = 1024, device: torch.device | str | None = None):
        """Iterate ``(x, y)`` over ``split`` in order, ``batch_size`` normalised images at a time."""
        for i in range(0, self.size(split), batch_size):
            sl = slice(i, i + batch_size)
            yield self.images(sl, split, device), self.labels(sl, split, device)

    # ------------------------------------------------------------------ compatibility: whole float splits
    def materialize(self, split: str = "train") -> torch.Tensor:
        """The whole normalised float32 split, computed once and kept (4 bytes per pixel: CIFAR-10's training
        set is 600 MB). For code that needs every image at once; batch code uses :meth:`images`/:meth:`view`."""
        x = self._store(split)
        if x.is_floating_point() and self.transform is None:
            return x
        if split not in self._float:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
            for i in range(0, x.shape[0], 4096):
                out[i:i + 4096] = self.images(slice(i, i + 4096), split)
            self._float[split] = out
        return self._float[split]

    @property
    def x_train(self) -> torch.Tensor:
        """Compatibility accessor: the whole normalised training split (see :meth:`materialize`)."""
        return self.materialize("train")

    @property
    def x_test(self) -> torch.Tensor:
        """Compatibility accessor: the whole normalised test split (see :meth:`materialize`)."""
        return self.materialize("test")

    @property
    def x_val(self) -> torch.Tensor | None:
        """Compatibility accessor: the whole normalised validation split, or ``None``."""
        return self.materialize("val") if "val" in self._x else None

    # ------------------------------------------------------------------ labels and classes
    @property
    def multilabel(self) -> bool:
        """True for multi-label data (multi-hot label rows)."""
        return self.task == "multilabel" and self.y_train.ndim == 2

    @property
    def target_kind(self) -> str:
        """The loss the training labels call for: ``hard`` class ids or ``multilabel`` multi-hot rows."""
        return "multilabel" if self.multilabel else "hard"

    @property
    def by_class(self) -> list[torch.Tensor]:
        """Indices (CPU) of the training images of each class (computed once)."""
        if self._by_class is None and self.multilabel:
            y = self.y_train.cpu()
            self._by_class = [torch.nonzero(y[:, c] > 0).flatten() for c in range(self.num_classes)]
        if self._by_class is None:
            y = (self.y_train if self.y_train.ndim == 1 else self.y_train[:, 0]).cpu()
            order = torch.argsort(y, stable=True)
            counts = torch.bincount(y, minlength=self.num_classes).tolist()
            self._by_class = list(torch.split(order, counts))
        return self._by_class

    def class_counts(self) -> list[int]:
        """Number of training images of each class."""
        return [len(ix) for ix in self.by_class]

    def check_ipc(self, ipc: int) -> None:
        """Refuse an IPC of 0 or larger than the smallest class, naming the class."""
        if not isinstance(ipc, int) or ipc < 1:
            raise ConfigError(f"IPC must be a positive integer (images per class); got {ipc!r}.")
        counts = self.class_counts()
        smallest = min(range(len(counts)), key=counts.__getitem__)
        if ipc > counts[smallest]:
            raise ConfigError(
                f"IPC {ipc} is larger than class {self.class_names[smallest]!r} of {self.name}, which has only "
                f"{counts[smallest]} training images: use --ipc {counts[smallest]} or less."
            )

    def sample(self, cls: int, n: int, g: torch.Generator) -> torch.Tensor:
        """``n`` random training indices of class ``cls`` (without replacement when the class is big enough)."""
        ix = self.by_class[cls]
        if n <= len(ix):
            pick = torch.randperm(len(ix), generator=g)[:n]
        else:
            pick = torch.randint(len(ix), (n,), generator=g)
        return ix[pick]

    def sample_balanced(self, n: int, g: torch.Generator, classes: list[int] | None = None) -> torch.Tensor:
        """``n`` indices per class, concatenated class by class: shape ``(len(classes) * n,)``."""
        classes = list(range(self.num_classes)) if classes is None else classes
        return torch.cat([self.sample(c, n, g) for c in classes])

    # ------------------------------------------------------------------ derived datasets
    def _replace(self, **kw) -> "RealData":
        """A copy with some constructor arguments replaced (shares the unchanged tensors)."""
        args = dict(name=self.name, x_train=self._x["train"], y_train=self.y_train, x_test=self._x["test"],
                    y_test=self.y_test, num_classes=self.num_classes, mean=self.mean, std=self.std,
                    class_names=self.class_names, flip_invariant=self.flip_invariant, task=self.task,
                    x_val=self._x.get("val"), y_val=self.y_val, source=self.source, transform=self.transform,
                    memory_mapped=self.memory_mapped)
        args.update(kw)
        return RealData(**args)

    def restrict(self, classes) -> "RealData":
        """The dataset reduced to ``classes``, renumbered ``0..k-1`` in the order given.

        Every split keeps its *real* images of those classes (train, test and, when present, val), so a method
        or an evaluation on the result sees the same data it would see on a dataset that only ever had those
        classes. For multi-label data the label columns of ``classes`` are kept, with the images positive for at
        least one of them. The name becomes ``<name>[c1,c2,...]`` (so caches keyed by the dataset name never mix
        the two); map a summary of the result back with :meth:`SyntheticSet.relabel(classes, num_classes)
        <distill_apps.summary.SyntheticSet.relabel>`.
        """
        ids = [int(c) for c in classes]
        if not ids:
            raise ConfigError(f"restrict() needs at least one class of {self.name}; got none.")
        bad = [c for c in ids if not 0 <= c < self.num_classes]
        if bad or len(set(ids)) != len(ids):
            raise ConfigError(f"restrict() takes distinct class ids in [0, {self.num_classes}) of {self.name}; "
                              f"got {ids}.")
        keep = torch.tensor(ids, dtype=torch.long)
        lookup = torch.full((self.num_classes,), -1, dtype=torch.long)
        lookup[keep] = torch.arange(len(ids))

        def split(x: torch.Tensor | None, y: torch.Tensor | None):
            """Keep the rows of the kept classes (for multi-hot labels: their columns, and rows positive for one of
            them)."""
            if x is None or y is None:
                return x, y
            if y.ndim == 2:  # multi-hot rows: keep the classes' columns and the rows positive for one of them
                cols = y[:, keep.to(y.device)]
                rows = (cols > 0).any(1)
                return x[rows.to(x.device)], cols[rows]
            rows = torch.isin(y, keep.to(y.device))
            return x[rows.to(x.device)], lookup.to(y.device)[y[rows]]

        (xtr, ytr), (xte, yte), (xva, yva) = (split(self._x["train"], self.y_train), split(self._x["test"], self.y_test),
                                              split(self._x.get("val"), self.y_val))
        return self._replace(name=f"{self.name}[{','.join(map(str, ids))}]", x_train=xtr, y_train=ytr, x_test=xte,
                             y_test=yte, num_classes=len(ids), class_names=[self.class_names[c] for c in ids],
                             x_val=xva, y_val=yva, memory_mapped=False)

    def subset(self, train_index: torch.Tensor, name: str | None = None) -> "RealData":
        """A copy of this dataset whose training split is ``train_index`` (test split shared)."""
        idx = train_index.to(self._x["train"].device)
        return self._replace(name=name or self.name, x_train=self._x["train"][idx],
                             y_train=self.y_train[train_index.to(self.y_train.device)], memory_mapped=False)

    def with_transform(self, transform: Any) -> "RealData":
        """The same stores seen through ``transform`` (``None`` removes it)."""
        return self._replace(transform=transform)

    def with_flip(self, flip_invariant: bool) -> "RealData":
        """The same data with DSA's flip switched on (``True``) or off for it."""
        return self._replace(flip_invariant=bool(flip_invariant))

    def to(self, device: torch.device | str) -> "RealData":
        """The stores on ``device``. A memory-mapped store stays mapped on the host (its batches travel when
        drawn) unless ``device`` is a GPU with room for it (at most a quarter of its free memory)."""
        device = torch.device(device)
        keep_host = self.memory_mapped and (device.type == "cpu" or not _fits_on(device, self.nbytes()))
        if keep_host and self.y_train.device == device:
            return self
        if not keep_host and self._x["train"].device == device:
            return self
        mv = (lambda t: t) if keep_host else (lambda t: None if t is None else t.to(device))
        return self._replace(x_train=mv(self._x["train"]), x_test=mv(self._x["test"]), x_val=mv(self._x.get("val")),
                             y_train=self.y_train.to(device), y_test=self.y_test.to(device),
                             y_val=None if self.y_val is None else self.y_val.to(device), memory_mapped=keep_host)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs -> pixel intensities in [0, 1] (undoes the transform, then the normalisation)."""
        if self.transform is not None:
            x = self.transform.invert(x)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x * std + mean

    # ------------------------------------------------------------------ identity (for summaries and caches)
    def fingerprint(self) -> str:
        """A stable hash of the stored data (shapes, every label, a strided sample of the stored pixels) and the
        normalisation, independent of device; identifies in-memory data in a summary's metadata."""
        h = hashlib.sha256()
        for split, x in self._x.items():
            h.update(f"{split}{tuple(x.shape)}{x.dtype}".encode())
            y = self.labels(None, split)
            h.update(y.detach().cpu().contiguous().numpy().tobytes())
            stride = max(1, x.shape[0] // 1024)
            h.update(x[::stride].detach().cpu().contiguous().numpy().tobytes())
        h.update(repr((self.mean, self.std)).encode())
        return h.hexdigest()[:16]

    def provenance(self) -> dict[str, Any]:
        """What a summary records about its data: the source, the normalisation and the transform."""
        return {"source": self.source, "name": self.name, "image_shape": list(self.image_shape),
                "num_classes": self.num_classes, "class_names": self.class_names,
                "normalization": {"pixels": "uint8/255" if self.pixels == "uint8" else "float (pre-normalised)",
                                  "mean": list(self.mean), "std": list(self.std)},
                "flip_invariant": self.flip_invariant,
                "transform": None if self.transform is None else self.transform.spec()}


class ImageView:
    """A read-only, tensor-like view of one split of a :class:`RealData`.

    ``view[idx]`` returns normalised float32 images on the view's device; ``shape``, ``len``, ``to(device)`` and
    ``detach()`` behave as on a tensor, so ``train.fit(model, real.view("train"), real.y_train, ...)`` trains on
    the uint8 store without ever holding the float split.
    """

    dtype = torch.float32

    def __init__(self, data: RealData, split: str, device: torch.device | None = None,
                 index: torch.Tensor | None = None) -> None:
        """A lazy view of ``data``'s ``split`` (optionally a subset ``index``) that normalises rows on indexing."""
        self.data, self.split, self._device, self.index = data, split, device, index
        n = data.size(split) if index is None else int(index.shape[0])
        self.shape = torch.Size((n, *data.image_shape))
        self.ndim = 4

    @property
    def device(self) -> torch.device:
        """The device rows are returned on."""
        return self._device or self.data.stored(self.split).device

    def __repr__(self) -> str:
        from ..reprs import shape

        sub = ", a subset" if self.index is not None else ""
        return f"ImageView({self.data.name!r} {self.split}, {shape(self.shape)}, {self.device}{sub})"

    def __len__(self) -> int:
        """Number of images in the view."""
        return self.shape[0]

    def __getitem__(self, idx: Any) -> torch.Tensor:
        """Normalised float images at ``idx`` (through the view's index, if any)."""
        if self.index is not None:
            idx = self.index[idx.to(self.index.device) if torch.is_tensor(idx) else idx]
        return self.data.images(idx, self.split, self._device)

    def to(self, device: torch.device | str, *args, **kw) -> "ImageView":
        """The same view returning rows on ``device`` (nothing is copied now)."""
        return ImageView(self.data, self.split, torch.device(device), self.index)

    def detach(self) -> "ImageView":
        """The view itself: rows are produced without autograd history."""
        return self

    def float(self) -> "ImageView":
        """The view itself: rows are already float32."""
        return self

    def size(self, dim: int | None = None):
        """``torch.Size`` of the view, or its extent along ``dim``."""
        return self.shape if dim is None else self.shape[dim]


def _fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` fit comfortably (a quarter of the free memory) on a CUDA device; always True off CUDA."""
    if device.type != "cuda":
        return True
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError):
        return False
    return nbytes <= free // 4


def channel_stats(x: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std of uint8 images ``x`` (N, C, H, W) scaled to [0, 1], computed exactly
    from 256-bin histograms in chunks (no float copy of the data)."""
    if x.dtype != torch.uint8:
        raise TypeError("channel_stats takes uint8 images")
    c = x.shape[1]
    hist = torch.zeros(c, 256, dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        part = x[i:i + chunk].cpu()
        for ch in range(c):
            hist[ch] += torch.bincount(part[:, ch].reshape(-1), minlength=256).double()
    v = torch.arange(256, dtype=torch.float64) / 255.0
    n = hist.sum(1)
    mean = (hist * v).sum(1) / n
    var = (hist * (v - mean[:, None]) ** 2).sum(1) / (n - 1).clamp(min=1)
    return tuple(mean.tolist()), tuple(max(s, 1e-6) for s in var.sqrt().tolist())


def to_nchw(a: Any) -> torch.Tensor:
    """Images as (N, H, W), (N, H, W, C) or (N, C, H, W) (numpy or torch) -> a contiguous (N, C, H, W) tensor."""
    t = torch.as_tensor(np.asarray(a)) if not torch.is_tensor(a) else a
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4 and t.shape[-1] in (1, 3, 4) and t.shape[1] not in (1, 3, 4):
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def normalize(x: torch.Tensor, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
    """Per-channel normalisation; statistics from ``x`` when not given. Returns (x, mean, std)."""
    if mean is None or std is None:
        mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
        std = tuple(max(s, 1e-6) for s in x.std(dim=(0, 2, 3)).tolist())
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s, mean, std
