"""Avalanche integration: a distilled replay memory behind Avalanche's own storage-policy extension point.

Avalanche (Lomonaco et al., CVPR-W 2021) keeps a rehearsal memory as an ``ExemplarsBuffer`` that a strategy
(``Naive`` + ``ReplayPlugin``, ``ER_ACE``, ...) refreshes after (or before) each experience. :class:`DistilledBuffer`
is such a buffer: instead of raw exemplars it stores, for every class seen so far, a summary distilled from that
class's experience with any registered distill-apps method (DM, DSA, ...), in the same memory budget. This follows
the "distilled replay" idea of Rosasco et al. (2021, "Distilled Replay: Overcoming Forgetting through Synthetic
Samples") and the continual-learning evaluations of DC/DSA/DM (Zhao & Bilen 2021, 2023).

Budget: ``max_size`` is counted in *images-worth of stored floats*: the buffer never holds more than
``max_size * C * H * W`` image floats (``stored_floats() <= budget_floats()``). It is split equally over the classes
seen so far (``max_size // classes_seen`` images per class, the remainder unused), as Avalanche's
``ClassBalancedBuffer`` does. Soft labels, when a method produces them, cost ``num_classes`` floats per image and
are reported separately (``label_floats()``), the field's convention for IPC budgets.

Baselines come from Avalanche itself: :func:`reservoir_buffer`, :func:`class_balanced_buffer` and
:func:`herding_buffer` (``ParametricBuffer`` + ``HerdingSelectionStrategy``). Benchmarks come from Avalanche's
``class_incremental_benchmark`` over distill-apps datasets (:func:`split_benchmark`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, TensorDataset

from distill_apps.quiet import quieted

try:
    with quieted():  # qpsolvers' 'no QP solver found', raised while Avalanche imports (distill_apps.quiet)
        from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
        from avalanche.benchmarks.utils import DataAttribute
        from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
        from avalanche.models.utils import avalanche_forward
        from avalanche.training.plugins import ReplayPlugin
        from avalanche.training.storage_policy import (
            ClassBalancedBuffer,
            ExemplarsBuffer,
            HerdingSelectionStrategy,
            ParametricBuffer,
            ReservoirSamplingBuffer,
        )
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("The Avalanche integration needs avalanche-lib: pip install 'distill-apps[avalanche]'") from _exc

import distill_apps as da
from distill_apps import RealData, SyntheticSet
from distill_apps.data import class_incremental_order
from distill_apps.errors import ConfigError, DataError, DistillError
from distill_apps.train import target_loss

__all__ = [
    "DistilledBuffer", "DistilledReplayPlugin", "tensor_dataset", "split_benchmark", "split_mnist",
    "split_fashion_mnist", "split_digits", "reservoir_buffer", "class_balanced_buffer", "herding_buffer",
    "make_memory", "MEMORIES",
]

# method families whose loss is defined for a single class (per-class embedding statistics or selection);
# gradient/trajectory matching trains a classifier, which is constant on a one-class experience
SINGLE_CLASS_FAMILIES = ("distribution", "coreset")


# ---------------------------------------------------------------------- datasets and benchmarks
def tensor_dataset(x: torch.Tensor, y: torch.Tensor, task_labels: int | torch.Tensor = 0, *,
                   task_in_item: bool = True) -> ClassificationDataset:
    """An Avalanche ``ClassificationDataset`` from tensors: items ``(x, y, task_label)`` (Avalanche's own
    benchmarks' shape), or ``(x, y)`` pairs with ``task_in_item=False`` (the task label stays a data attribute)."""
    n = len(y)
    t = [int(task_labels)] * n if not torch.is_tensor(task_labels) else [int(v) for v in task_labels.tolist()]
    return ClassificationDataset(
        [TensorDataset(x, y.long())],
        data_attributes=[DataAttribute([int(v) for v in y.tolist()], "targets"),
                         DataAttribute(t, "targets_task_labels", use_in_getitem=task_in_item)])


def split_benchmark(dataset: str | RealData = "digits", num_experiences: int = 5, seed: int = 0,
                    data_root: str | None = None, train_per_class: int | None = None):
    """A class-incremental stream (Split-<dataset>) from Avalanche's ``class_incremental_benchmark``.

    The class order is ``distill_apps.data.splits.class_incremental_order(num_classes, num_experiences, seed)``;
    ``train_per_class`` keeps a seeded random subset of that many training images per class (CPU budgets).
    Returns ``(benchmark, real)`` where ``real`` is the (possibly subsampled) :class:`RealData`.
    """
    real = da.load_dataset(dataset, data_root) if isinstance(dataset, str) else dataset
    if real.y_train.ndim != 1:
        raise DataError(f"{real.name} has multi-label targets; class-incremental streams need one class per image.")
    if train_per_class is not None:
        if train_per_class < 1:
            raise ConfigError(f"train_per_class must be >= 1; got {train_per_class}.")
        g = torch.Generator().manual_seed(seed)
        keep = torch.cat([ix[torch.randperm(len(ix), generator=g)[:train_per_class]] for ix in real.by_class])
        real = real.subset(keep.sort().values)
    order = class_incremental_order(real.num_classes, num_experiences, seed)
    bm = class_incremental_benchmark(
        {"train": tensor_dataset(real.x_train, real.y_train), "test": tensor_dataset(real.x_test, real.y_test)},
        class_order=[c for group in order for c in group], num_experiences=num_experiences)
    return bm, real


def split_mnist(num_experiences: int = 5, seed: int = 0, data_root: str | None = None, **kw):
    """Split-MNIST: 5 experiences of 2 classes (seeded order)."""
    return split_benchmark("mnist", num_experiences, seed, data_root, **kw)


def split_fashion_mnist(num_experiences: int = 5, seed: int = 0, data_root: str | None = None, **kw):
    """Split-Fashion-MNIST: 5 experiences of 2 classes (seeded order)."""
    return split_benchmark("fashion_mnist", num_experiences, seed, data_root, **kw)


def split_digits(num_experiences: int = 5, seed: int = 0, **kw):
    """Split-digits: scikit-learn's 8x8 digits (bundled) in 5 experiences; the fast default."""
    return split_benchmark("digits", num_experiences, seed, **kw)


def item_fields(dataset) -> int:
    """How many fields an item of ``dataset`` has: 2 for ``(x, y)``, 3 for ``(x, y, task_label)``."""
    if len(dataset) == 0:
        raise DataError("The experience holds no samples; there is nothing to distil into the replay memory.")
    n = len(dataset[0])
    if n not in (2, 3):
        raise DataError(f"DistilledBuffer serves (x, y) or (x, y, task_label) items, the shapes of Avalanche's "
                        f"benchmarks; this experience's items have {n} fields. Use a raw-exemplar buffer (e.g. "
                        "ReservoirSamplingBuffer) for such items.")
    return n


def experience_tensors(dataset, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, task_labels)`` tensors of an Avalanche dataset, read with its eval transforms (no augmentation).

    For ``(x, y)`` items the task labels come from the dataset's ``targets_task_labels`` attribute (0 without).
    """
    ds = dataset.eval() if hasattr(dataset, "eval") else dataset
    xs, ys, ts = [], [], []
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=getattr(ds, "collate_fn", None)):
        if len(batch) < 2:
            raise DataError("Experience items must be (x, y[, task_label]) tuples; got a single field.")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]))
        if len(batch) > 2:
            ts.append(torch.as_tensor(batch[2]))
    if not xs:
        raise DataError("The experience holds no samples; there is nothing to distil into the replay memory.")
    x, y = torch.cat(xs).float(), torch.cat(ys)
    if ts:
        t = torch.cat(ts).long()
    else:
        attr = getattr(ds, "targets_task_labels", None)
        t = torch.zeros(len(y), dtype=torch.long) if attr is None else torch.as_tensor(list(attr)).long()
    if x.ndim != 4:
        raise DataError(f"DistilledBuffer distils images (N, C, H, W); this experience's inputs have shape "
                        f"{tuple(x.shape)}. Use a raw-exemplar buffer for other inputs.")
    if y.ndim != 1 or y.is_floating_point():
        raise DataError(f"Experience targets must be integer class ids of shape (N,); got {y.dtype} {tuple(y.shape)}.")
    return x, y.long(), t


# ---------------------------------------------------------------------- the distilled memory
@dataclass
class _ClassMemory:
    """What the buffer keeps for one class: images, optional soft targets, the summary's learned lr."""

    x: torch.Tensor
    soft: torch.Tensor | None  # (n, num_classes) over *global* classes, or None
    lr: float | None
    task: int
    experience: int
    source: str  # method name, or "real" when stored as real exemplars (documented fallbacks)


class _PixelHerding(HerdingSelectionStrategy):
    """Avalanche's herding order over features given directly (no model to hook)."""

    def __init__(self) -> None:
        """Herding on raw pixels: no feature extractor needed."""
        pass


def _pixel_herding(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` of the images ``x`` chosen by herding in pixel space (Avalanche's herding order)."""
    if k >= len(x):
        return torch.arange(len(x))
    order = _PixelHerding().make_sorted_indices_from_features(x.flatten(1).float())
    return torch.as_tensor(list(order)[:k], dtype=torch.long)


class DistilledBuffer(ExemplarsBuffer):
    """An Avalanche storage policy whose memory holds a distilled summary of every class seen so far.

    After each experience (``post_adapt``; ``ReplayPlugin`` calls it after training, ``ER_ACE`` before) the
    experience's images are distilled with ``method`` (any registered image method: ``dm``, ``dsa``, ``dc``,
    ``herding``, ...) into ``max_size // classes_seen`` images per class, relabelled to the experience's own classes
    while distilling and mapped back after. Earlier classes are shrunk to the new share:

    * ``shrink="select"`` (default) keeps the images chosen by herding over the stored summary (its running
      mean tracks the summary's class mean, which is what DM matches);
    * ``shrink="redistill"`` distils the stored summary of each earlier experience again, with the same method,
      down to the new share.

    Growing the budget (``resize`` to a larger size) keeps the current summaries; later experiences use the larger
    share. A class that reappears in a later experience is distilled again from its newest data, replacing its
    earlier summary. When a class has fewer images than its share, the method distils ``min(share, class size)``.

    ``single_class`` sets what a one-class experience does with a method that needs two classes (gradient or
    trajectory matching trains a classifier, which is constant on one class): ``"error"`` (default) raises
    :class:`ConfigError`; ``"real"`` stores a random class-balanced subset of that class's real images instead
    (recorded in ``classes[c].source``). Distribution matching and coresets run on one class as usual.

    Items: the buffer serves items shaped like the stream's own, ``(x, y, task_label)`` (Avalanche's benchmarks)
    or ``(x, y)`` (a benchmark built from plain ``(x, y)`` datasets), so Avalanche's replay loader can collate
    memory rows with the experience's rows; ``y`` is the class each image was distilled for.

    Soft labels and learned learning rates: a plain ``ReplayPlugin`` trains memory rows with hard labels. A
    summary's soft targets (``soft_targets``, over the global classes; classes outside the experience get
    :meth:`SyntheticSet.absent_value <distill_apps.SyntheticSet.absent_value>`, logit -1e4) and its learned lr
    (``replay_weights = lr / base_lr``) are used by :class:`DistilledReplayPlugin`.
    """

    def __init__(self, max_size: int, method: str = "dm", *, steps: int | None = None, budget: str = "quick",
                 model: str = "convnet", config: dict[str, Any] | None = None, device: str = "auto", seed: int = 0,
                 shrink: str = "select", single_class: str = "error", num_classes: int | None = None,
                 mean: Sequence[float] = (), std: Sequence[float] = (), base_lr: float = 0.01,
                 progress: bool = False) -> None:
        """Check the budget and the method (an image method), and keep the distillation settings for later experiences.
        """
        if not isinstance(max_size, int) or max_size < 1:
            raise ConfigError("DistilledBuffer max_size (images-worth of memory) must be a positive int; "
                              f"got {max_size!r}.")
        cls = da.METHODS.get(method)  # unknown names raise ConfigError listing the known ones
        if cls.modality != "image":
            image_methods = ", ".join(n for n in da.METHODS.names() if da.METHODS.get(n).modality == "image")
            raise ConfigError(f"Method {method!r} distils {cls.modality} data; DistilledBuffer stores images. Use an "
                              f"image method ({image_methods}).")
        if shrink not in ("select", "redistill"):
            raise ConfigError(f"shrink must be 'select' or 'redistill'; got {shrink!r}.")
        if single_class not in ("error", "real"):
            raise ConfigError(f"single_class must be 'error' or 'real'; got {single_class!r}.")
        if base_lr <= 0:
            raise ConfigError(f"base_lr must be > 0 (the learner's lr, to weight memory rows); got {base_lr}.")
        super().__init__(max_size)
        self.method, self.family = method, cls.family
        self.steps, self.budget, self.model, self.config = steps, budget, model, dict(config or {})
        self.device, self.seed, self.shrink, self.single_class = device, seed, shrink, single_class
        self.num_classes, self.mean, self.std, self.base_lr = num_classes, tuple(mean), tuple(std), base_lr
        self.progress = progress
        self.classes: dict[int, _ClassMemory] = {}  # global class id -> its memory, in order of arrival
        self.image_shape: tuple[int, ...] | None = None
        self.item_fields: int | None = None  # 2: (x, y) items, 3: (x, y, task_label), as the stream's own
        self.label_kind = "hard"
        self.soft_targets: torch.Tensor | None = None
        self.replay_weights = torch.zeros(0)
        self._x = torch.zeros(0)
        self._y = torch.zeros(0, dtype=torch.long)
        self._t = torch.zeros(0, dtype=torch.long)
        self._updates = 0
        self.summaries: list[SyntheticSet] = []  # the raw summary of each experience, for inspection

    def __repr__(self) -> str:
        from distill_apps.reprs import one_line, shape

        held = f"{len(self._x)} images of {len(self.classes)} classes" + (
            f" ({shape(self.image_shape)})" if self.image_shape else "")
        return one_line("DistilledBuffer", [self.method, f"max {self.max_size}", held, f"{self.label_kind} labels",
                                            f"shrink {self.shrink}"])

    # ------------------------------------------------------------------ accounting
    def per_class(self, n_classes: int | None = None) -> int:
        """Images-worth of memory each class gets when ``n_classes`` classes share ``max_size``."""
        n = len(self.classes) if n_classes is None else n_classes
        if n and self.max_size < n:
            raise ConfigError(
                f"A replay memory of {self.max_size} images cannot hold one image for each of the {n} classes "
                f"seen so far: raise mem_size (and max_size) to at least {n}, e.g. images-per-class x total classes.")
        return self.max_size // n if n else self.max_size

    def image_floats(self) -> int:
        """Floats in one stored image."""
        return math.prod(self.image_shape) if self.image_shape else 0

    def stored_floats(self) -> int:
        """Image floats held now (the budgeted quantity)."""
        return sum(m.x.numel() for m in self.classes.values())

    def budget_floats(self) -> int:
        """The memory budget in floats (``max_size`` images)."""
        return self.max_size * self.image_floats()

    def label_floats(self) -> int:
        """Floats spent on soft labels (0 with hard labels)."""
        return 0 if self.soft_targets is None else self.soft_targets.numel()

    def images_per_class(self) -> dict[int, int]:
        """Stored images of each class."""
        return {c: len(m.x) for c, m in self.classes.items()}

    # ------------------------------------------------------------------ Avalanche's contract
    def post_adapt(self, agent_state, exp) -> None:
        """Distil ``exp``'s data into the memory and shrink earlier classes to the new per-class share."""
        fields = item_fields(exp.dataset)
        if self.item_fields is not None and fields != self.item_fields:
            raise DataError(f"This experience's items have {fields} fields but the earlier ones had "
                            f"{self.item_fields}; a replay memory serves one item shape to one stream.")
        self.item_fields = fields
        x, y, t = experience_tensors(exp.dataset)
        if self.image_shape is None:
            self.image_shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.image_shape:
            raise DataError(f"Experience images are {tuple(x.shape[1:])} but the memory holds {self.image_shape}.")
        if int(y.min()) < 0:
            raise DataError(f"Class ids must be >= 0; this experience has {int(y.min())}.")
        # soft targets span num_classes; without it given, it grows with the largest class id seen (padded)
        self.num_classes = max(self.num_classes or 0, int(y.max()) + 1)
        classes = sorted(int(c) for c in torch.unique(y))
        for c in classes:  # a reappearing class is distilled again from its newest data
            self.classes.pop(c, None)
        share = self.per_class(len(self.classes) + len(classes))
        exp_id = int(getattr(exp, "current_experience", self._updates))
        new = self._distil_experience(x, y, t, classes, share, exp_id)
        self._shrink(share)
        self.classes.update(new)
        self._updates += 1
        self._rebuild()

    def update(self, strategy, **kwargs) -> None:
        """What ``ReplayPlugin`` and ``ER_ACE`` call in Avalanche 0.6: ``post_adapt`` on the current experience."""
        self.post_adapt(strategy, strategy.experience)

    def resize(self, strategy, new_size: int) -> None:
        """Set the budget to ``new_size`` images-worth; shrinks every class to the new share when needed."""
        if not isinstance(new_size, int) or new_size < 1:
            raise ConfigError(f"new_size must be a positive int; got {new_size!r}.")
        self.max_size = new_size
        if self.classes:
            self._shrink(self.per_class())
            self._rebuild()

    # ------------------------------------------------------------------ internals
    def _distil_experience(self, x, y, t, classes, share, exp_id) -> dict[int, _ClassMemory]:
        """Distil the classes of one experience into ``share`` images per class (fewer when a class is smaller),
        relabelled locally while distilling."""
        k = len(classes)
        counts = [int((y == c).sum()) for c in classes]
        ipc = min(share, min(counts))
        task_of = {c: int(t[y == c].mode().values) for c in classes}
        if k == 1 and self.family not in SINGLE_CLASS_FAMILIES:
            if self.single_class == "error":
                raise ConfigError(
                    f"Experience {exp_id} holds a single class ({classes[0]}); method {self.method!r} "
                    f"({self.family} family) trains a classifier whose loss is constant on one class, so it cannot "
                    "distil it. Use a distribution-matching or coreset method (e.g. dm, herding), or "
                    "DistilledBuffer(..., single_class='real') to store real exemplars for such experiences.")
            g = torch.Generator().manual_seed(self.seed * 7919 + exp_id)
            pick = torch.randperm(len(x), generator=g)[:ipc]
            return {classes[0]: _ClassMemory(x[pick].clone(), None, None, task_of[classes[0]], exp_id, "real")}
        mean = self.mean or tuple(x.mean(dim=(0, 2, 3)).tolist())
        std = self.std or tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
        # the experience's training images only: the buffer never evaluates, so the test split is empty
        seen = RealData(name=f"experience{exp_id}", x_train=x, y_train=y, x_test=x[:0], y_test=y[:0],
                        num_classes=self.num_classes, mean=mean, std=std)
        summary = self._run_method(seen.restrict(classes), ipc, exp_id, classes)
        self.summaries.append(summary)
        return self._split_summary(summary.relabel(classes, self.num_classes), classes, ipc, task_of, exp_id)

    def _run_method(self, real: RealData, ipc: int, exp_id: int, classes: list[int]) -> SyntheticSet:
        """Run the method on one experience's data; its failures become a ConfigError naming the experience and classes.
        """
        try:
            return da.distill(self.method, real, ipc, steps=self.steps, budget=self.budget, model=self.model,
                              seed=self.seed * 7919 + exp_id, device=self.device, config=self.config,
                              progress=self.progress).detach()
        except (DistillError, RuntimeError, ValueError, IndexError) as exc:
            raise ConfigError(
                f"Method {self.method!r} could not distil experience {exp_id} (classes {classes}, {ipc} images per "
                f"class, images {tuple(real.image_shape)}, model {self.model!r}): {exc}. Pick a method and model "
                "that run on these images (e.g. method='dm' with a ConvNet whose depth suits the image size).") from exc

    def _split_summary(self, m: SyntheticSet, classes, ipc, task_of, exp_id) -> dict[int, _ClassMemory]:
        """One memory per class of a summary already in the stream's class ids (``relabel``)."""
        if m.soft is not None and self.label_kind not in ("hard", m.label_kind):
            raise ConfigError(f"Summaries with {self.label_kind} and {m.label_kind} soft labels cannot share one "
                              "memory; use one method per DistilledBuffer.")
        if m.soft is not None:
            self.label_kind = m.label_kind
        out = {}
        for c in classes:
            sel = torch.nonzero(m.y == c).flatten()
            if len(sel) == 0:
                raise DataError(f"Method {self.method!r} returned no image for class {c} of experience {exp_id}; "
                                "refusing to leave the class out of the replay memory.")
            xc = m.x[sel]
            keep = _pixel_herding(xc, ipc)  # factorised forms decode to more images: keep the share (docs)
            soft = None if m.soft is None else m.soft[sel][keep].float().clone()
            out[c] = _ClassMemory(xc[keep].float().clone(), soft, m.lr, task_of[c], exp_id, self.method)
        return out

    def _shrink(self, share: int) -> None:
        """Shrink earlier classes to ``share`` images each, by herding selection or by re-distilling."""
        over = [c for c, m in self.classes.items() if len(m.x) > share]
        if not over:
            return
        if self.shrink == "redistill":
            by_exp: dict[int, list[int]] = {}
            for c in over:
                by_exp.setdefault(self.classes[c].experience, []).append(c)
            for exp_id, cls in by_exp.items():
                if len(cls) > 1 or self.family in SINGLE_CLASS_FAMILIES:
                    self._redistill(sorted(cls), share, exp_id)
        for c in over:  # select (and the rest of redistill: single classes a classifier method cannot redo)
            m = self.classes[c]
            if len(m.x) > share:
                keep = _pixel_herding(m.x, share)
                m.x = m.x[keep].clone()
                m.soft = None if m.soft is None else m.soft[keep].clone()

    def _redistill(self, cls: list[int], share: int, exp_id: int) -> None:
        """Distil the stored summaries of classes ``cls`` again, down to ``share`` images each."""
        xs = torch.cat([self.classes[c].x for c in cls])
        ys = torch.cat([torch.full((len(self.classes[c].x),), i, dtype=torch.long) for i, c in enumerate(cls)])
        t = torch.cat([torch.full((len(self.classes[c].x),), self.classes[c].task) for c in cls])
        yg = torch.tensor(cls)[ys]
        old = {c: self.classes[c] for c in cls}
        new = self._distil_experience(xs, yg, t, cls, share, exp_id)
        for c in cls:
            if old[c].soft is not None and new[c].soft is None:
                new[c].soft = old[c].soft[_pixel_herding(old[c].x, len(new[c].x))]
            self.classes[c] = new[c]

    def _rebuild(self) -> None:
        """Serve the memory as an Avalanche dataset whose items have the stream's shape, ``(x, y, task)`` or
        ``(x, y)``, and check the invariants."""
        if self.stored_floats() > self.budget_floats():  # guaranteed by construction; never serve more
            raise DataError(f"Replay memory holds {self.stored_floats()} image floats, over its budget of "
                            f"{self.budget_floats()}; this is a bug in DistilledBuffer.")
        empty = [c for c, m in self.classes.items() if len(m.x) == 0]
        if empty:
            raise DataError(f"Classes {empty} ended with no image in the replay memory; refusing an empty summary.")
        mems = list(self.classes.items())
        self._x = torch.cat([m.x for _, m in mems])
        self._y = torch.cat([torch.full((len(m.x),), c, dtype=torch.long) for c, m in mems])
        self._t = torch.cat([torch.full((len(m.x),), m.task, dtype=torch.long) for _, m in mems])
        lr = [torch.full((len(m.x),), (m.lr or self.base_lr) / self.base_lr) for _, m in mems]
        self.replay_weights = torch.cat(lr)
        if any(m.soft is not None for _, m in mems):
            rows = []
            for c, m in mems:
                if m.soft is not None:
                    if m.soft.shape[1] < self.num_classes:  # classes that arrived later: absent for this row
                        pad = SyntheticSet.absent_value(self.label_kind)
                        extra = torch.full((len(m.soft), self.num_classes - m.soft.shape[1]), pad)
                        m.soft = torch.cat([m.soft, extra], 1)
                    rows.append(m.soft)
                elif self.label_kind == "logits":  # hard rows as logits: softmax is the one-hot label
                    row = torch.full((len(m.x), self.num_classes), SyntheticSet.absent_value("logits"))
                    rows.append(row.index_fill_(1, torch.tensor([c]), 0.0))
                else:
                    rows.append(torch.nn.functional.one_hot(torch.full((len(m.x),), c), self.num_classes).float())
            self.soft_targets = torch.cat(rows)
        else:
            self.soft_targets = None
        self.buffer = tensor_dataset(self._x, self._y, self._t, task_in_item=self.item_fields != 2)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The served memory as ``(x, y, task_labels)`` tensors."""
        return self._x, self._y, self._t


# ---------------------------------------------------------------------- soft labels / learned lr at replay time
class DistilledReplayPlugin(ReplayPlugin):
    """``ReplayPlugin`` that honours a :class:`DistilledBuffer`'s soft labels and learned learning rates.

    With hard labels and no learned lr it behaves exactly like ``ReplayPlugin`` (memory rows concatenated into the
    minibatch by Avalanche's ``ReplayDataLoader``). Otherwise the strategy's loader yields current data only, and
    before each backward pass the plugin draws ``batch_size_mem`` memory rows (seeded generator), trains on them
    with the summary's targets (soft cross-entropy for logits, MSE for regression, via ``train.target_loss``), each
    row weighted by ``lr_learned / base_lr``, and mixes the two losses in proportion to their rows — the mean a
    concatenated minibatch would give. ``memory_rows_seen`` counts the memory rows used.
    """

    def __init__(self, mem_size: int, storage_policy: DistilledBuffer, batch_size: int | None = None,
                 batch_size_mem: int | None = None, seed: int = 0) -> None:
        """``ReplayPlugin``'s arguments; ``storage_policy`` must be a DistilledBuffer; ``seed`` seeds the memory draws.
        """
        if not isinstance(storage_policy, DistilledBuffer):
            raise ConfigError("DistilledReplayPlugin needs a DistilledBuffer as storage_policy; use ReplayPlugin "
                              "for other storage policies.")
        super().__init__(mem_size=mem_size, batch_size=batch_size, batch_size_mem=batch_size_mem,
                         storage_policy=storage_policy)
        self._g = torch.Generator().manual_seed(seed)
        self.memory_rows_seen = 0

    def __repr__(self) -> str:
        return f"DistilledReplayPlugin(mem_size {self.mem_size}, {self.storage_policy!r})"

    def _custom(self) -> bool:
        """Whether the memory needs soft targets or weights (otherwise the plain ReplayPlugin path runs)."""
        sp = self.storage_policy
        return len(sp.buffer) > 0 and (sp.soft_targets is not None or bool((sp.replay_weights != 1).any()))

    def before_training_exp(self, strategy, num_workers: int = 0, shuffle: bool = True, drop_last: bool = False,
                            **kwargs):
        """ReplayPlugin's replay loader for plain memories; with soft targets or weights the strategy keeps its own
        loader."""
        if not self._custom():
            return super().before_training_exp(strategy, num_workers=num_workers, shuffle=shuffle,
                                               drop_last=drop_last, **kwargs)
        return None  # the strategy keeps its own loader; memory rows are added in before_backward

    def before_backward(self, strategy, **kwargs):
        """Add the loss of a seeded draw of memory rows (soft targets, per-row weights) to the minibatch loss, weighted
        by row counts."""
        if not self._custom():
            return
        sp: DistilledBuffer = self.storage_policy
        x, y, t = sp.tensors()
        n_mem = min(self.batch_size_mem or strategy.train_mb_size, len(x))
        idx = torch.randperm(len(x), generator=self._g)[:n_mem]
        dev = strategy.device
        out = avalanche_forward(strategy.model, x[idx].to(dev), t[idx].to(dev)).float()
        if sp.soft_targets is None:
            per_row = torch.nn.functional.cross_entropy(out, y[idx].to(dev), reduction="none")
        else:
            tgt = sp.soft_targets[idx].to(dev)
            per_row = torch.stack([target_loss(out[i:i + 1], tgt[i:i + 1], sp.label_kind) for i in range(n_mem)])
        mem_loss = (per_row * sp.replay_weights[idx].to(dev)).mean()
        n_data = len(strategy.mb_y)
        strategy.loss = (n_data * strategy.loss + n_mem * mem_loss) / (n_data + n_mem)
        self.memory_rows_seen += n_mem


# ---------------------------------------------------------------------- Avalanche's own baselines
class _FlatHerding(HerdingSelectionStrategy):
    """Avalanche's iCaRL herding over a layer's output flattened to one vector per image (ConvNet features)."""

    def make_sorted_indices_from_features(self, features: torch.Tensor):
        """Herding order on features flattened per image."""
        return super().make_sorted_indices_from_features(features.flatten(1))


def reservoir_buffer(max_size: int, **_) -> ReservoirSamplingBuffer:
    """Avalanche's reservoir sampling over the whole stream."""
    return ReservoirSamplingBuffer(max_size)


def class_balanced_buffer(max_size: int, **_) -> ClassBalancedBuffer:
    """Avalanche's class-balanced random memory (equal share per class seen)."""
    return ClassBalancedBuffer(max_size, adaptive_size=True)


def herding_buffer(max_size: int, *, learner: torch.nn.Module, layer: str = "features", **_) -> ParametricBuffer:
    """Avalanche's ``ParametricBuffer`` grouped by class with iCaRL herding on ``learner``'s ``layer`` output."""
    return ParametricBuffer(max_size, groupby="class", selection_strategy=_FlatHerding(learner, layer))


MEMORIES: dict[str, Callable[..., ExemplarsBuffer]] = {
    "reservoir": reservoir_buffer,
    "class_balanced": class_balanced_buffer,
    "herding": herding_buffer,
}


def make_memory(name: str, max_size: int, *, learner: torch.nn.Module | None = None, **kw) -> ExemplarsBuffer:
    """A storage policy by name: an Avalanche baseline (``MEMORIES``) or ``DistilledBuffer(method=name)``."""
    if name in MEMORIES:
        if name == "herding" and learner is None:
            raise ConfigError("The herding memory needs the learner model (learner=...) to compute features.")
        return MEMORIES[name](max_size, learner=learner)
    return DistilledBuffer(max_size, name, **kw)
