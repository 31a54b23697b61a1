"""The in-memory real dataset every method reads, with per-class indexing for balanced sampling."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, DataError


@dataclass
class RealData:
    """Normalised train/test tensors of one image-classification dataset.

    ``x_*`` are float32 ``(N, C, H, W)`` already normalised with ``mean``/``std``; ``y_*`` are int64 class ids,
    or multi-hot ``(N, L)`` rows when ``task`` is ``multilabel``. ``task`` is ``multiclass`` (default),
    ``binary``, ``multilabel`` or ``ordinal`` (MedMNIST carries these). For multi-label data ``by_class[c]``
    holds the images positive for label ``c``, so per-label budgets and class-balanced batches work unchanged.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    flip_invariant: bool = False
    task: str = "multiclass"
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.ndim != 4:
                raise DataError(f"{self.name} {split} images must be (N, C, H, W); got shape {tuple(x.shape)}.")
            if y.shape[0] != x.shape[0]:
                raise DataError(f"{self.name} {split}: {x.shape[0]} images but {y.shape[0]} labels.")
            if not torch.isfinite(x).all():
                bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
                raise DataError(f"{self.name} {split} has NaN/Inf in {bad} images: clean or drop them before distilling.")
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        self._by_class: list[torch.Tensor] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel" and self.y_train.ndim == 2

    @property
    def target_kind(self) -> str:
        """The loss the training labels call for: ``hard`` class ids or ``multilabel`` multi-hot rows."""
        return "multilabel" if self.multilabel else "hard"

    @property
    def by_class(self) -> list[torch.Tensor]:
        """Indices of the training images of each class (computed once)."""
        if self._by_class is None and self.multilabel:
            self._by_class = [torch.nonzero(self.y_train[:, c] > 0).flatten() for c in range(self.num_classes)]
        if self._by_class is None:
            y = self.y_train if self.y_train.ndim == 1 else self.y_train[:, 0]
            order = torch.argsort(y, stable=True)
            counts = torch.bincount(y, minlength=self.num_classes).tolist()
            self._by_class = list(torch.split(order, counts))
        return self._by_class

    def class_counts(self) -> list[int]:
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

    def subset(self, train_index: torch.Tensor, name: str | None = None) -> "RealData":
        """A view of this dataset whose training split is ``train_index`` (test split shared)."""
        return RealData(
            name=name or self.name, x_train=self.x_train[train_index], y_train=self.y_train[train_index],
            x_test=self.x_test, y_test=self.y_test, num_classes=self.num_classes, mean=self.mean, std=self.std,
            class_names=self.class_names, flip_invariant=self.flip_invariant, task=self.task,
            x_val=self.x_val, y_val=self.y_val,
        )

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
            if x is None or y is None:
                return x, y
            if y.ndim == 2:  # multi-hot rows: keep the classes' columns and the rows positive for one of them
                cols = y[:, keep.to(y.device)]
                rows = (cols > 0).any(1)
                return x[rows], cols[rows]
            rows = torch.isin(y, keep.to(y.device))
            return x[rows], lookup.to(y.device)[y[rows]]

        (xtr, ytr), (xte, yte), (xva, yva) = (split(self.x_train, self.y_train), split(self.x_test, self.y_test),
                                              split(self.x_val, self.y_val))
        return RealData(
            name=f"{self.name}[{','.join(map(str, ids))}]", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
            num_classes=len(ids), mean=self.mean, std=self.std, class_names=[self.class_names[c] for c in ids],
            flip_invariant=self.flip_invariant, task=self.task, x_val=xva, y_val=yva,
        )

    def to(self, device: torch.device) -> "RealData":
        if self.x_train.device == device:
            return self
        out = RealData(
            name=self.name, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
            x_test=self.x_test.to(device), y_test=self.y_test.to(device), num_classes=self.num_classes,
            mean=self.mean, std=self.std, class_names=self.class_names, flip_invariant=self.flip_invariant,
            task=self.task, x_val=None if self.x_val is None else self.x_val.to(device),
            y_val=None if self.y_val is None else self.y_val.to(device),
        )
        return out

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x * std + mean


def normalize(x: torch.Tensor, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
    """Per-channel normalisation; statistics from ``x`` when not given. Returns (x, mean, std)."""
    if mean is None or std is None:
        mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
        std = tuple(max(s, 1e-6) for s in x.std(dim=(0, 2, 3)).tolist())
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s, mean, std
