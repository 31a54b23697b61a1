"""``SyntheticSet``: the one object every method returns and every adapter consumes.

A summary holds images (``x``) or a factorised form (``params`` + a registered ``decoder``), hard labels ``y``
and optional soft labels (``soft``: logits or regression targets), an optional learned learning rate, the
normalisation statistics of the real data, and ``meta`` (method, dataset, ipc, steps, seed, config, versions,
and ``privacy`` when DP was used). It saves to one safetensors file with a JSON header.
"""
from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch.utils.data import TensorDataset

from . import safe_io
from .errors import DataError, DistillError, SummaryFormatError
from .registry import Registry
from .summaries import Summary, register_summary

FORMAT_VERSION = 1
KIND = "summary"
LABEL_KINDS = ("hard", "logits", "regression", "multilabel")

Decoder = Callable[[dict[str, torch.Tensor], dict[str, Any]], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
DECODERS: Registry[Decoder] = Registry("decoder")
register_decoder = DECODERS.register
DECODE_CHUNK = 4096  # decoded images per chunk when a whole summary is decoded
DECODE_CACHE_MB = 1024  # evaluation decodes once (in chunks) up to this many MB of images, per minibatch beyond


@dataclass(frozen=True)
class ChunkedDecoder:
    """A decoder that can decode any subset of a summary's images, so summaries decode (and train) in chunks.

    ``labels(params, spec) -> (y, soft)`` gives every decoded image's labels without decoding an image;
    ``bind(params, spec, device) -> images`` does the one-off work (moving the parameters, loading a generator
    file) and returns ``images(idx)``, the decoded images at the decoded-image indices ``idx``. Calling the
    decoder like a plain one, ``decoder(params, spec)``, decodes everything in chunks of :data:`DECODE_CHUNK`.
    Decoding is deterministic, so any image can be decoded again when it is needed.
    """

    labels: Callable[[dict[str, torch.Tensor], dict[str, Any]], tuple[torch.Tensor, torch.Tensor | None]]
    bind: Callable[..., Callable[[torch.Tensor], torch.Tensor]]

    def __call__(self, params: dict[str, torch.Tensor], spec: dict[str, Any], chunk: int = DECODE_CHUNK,
                 device: torch.device | str | None = None):
        y, soft = self.labels(params, spec)
        images = self.bind(params, spec, device)
        with torch.no_grad():
            parts = [images(idx) for idx in torch.arange(len(y)).split(max(1, int(chunk)))]
        return torch.cat(parts) if parts else torch.empty(0), y, soft


class DecodedImages:
    """The images of a factorised summary, decoded on demand: ``src[idx]`` decodes just the images ``idx``.

    What :func:`distill_apps.train.fit` takes in place of an image tensor when decoding every image at once would
    not fit in memory: each minibatch decodes its own images (without a graph), so memory does not grow with the
    number of decoded images. ``len(src)`` is the number of decoded images.
    """

    def __init__(self, summary: "SyntheticSet", device: torch.device | str = "cpu") -> None:
        dec = DECODERS.get(summary.decoder)
        if not isinstance(dec, ChunkedDecoder):
            raise DataError(f"Decoder {summary.decoder!r} decodes whole summaries only; use materialize().")
        self.summary, self.device = summary, torch.device(device)
        self._n = len(dec.labels(summary.params, summary.decoder_spec)[0])
        self._images = dec.bind(summary.params, summary.decoder_spec, self.device)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._images(torch.as_tensor(idx, dtype=torch.long).reshape(-1).cpu())

    def to(self, device: torch.device | str) -> "DecodedImages":
        return self if torch.device(device) == self.device else DecodedImages(self.summary, device)


def library_versions() -> dict[str, str]:
    """Versions of torch, torchvision, numpy and distill-apps, recorded in every summary's metadata."""
    import numpy

    from . import __version__

    return {"distill_apps": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


@register_summary
@dataclass(repr=False)
class SyntheticSet(Summary):
    """A distilled image summary. ``x`` is normalised ``(N, C, H, W)``; ``y`` int64 ``(N,)``."""

    kind: ClassVar[str] = KIND

    x: torch.Tensor | None
    y: torch.Tensor
    num_classes: int
    image_shape: tuple[int, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    soft: torch.Tensor | None = None
    label_kind: str = "hard"
    lr: float | None = None
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    decoder: str | None = None
    decoder_spec: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(s) for s in self.image_shape)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        self.validate()

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        """Shapes, dtypes, label range and finiteness; raises :class:`DataError` naming what is wrong."""
        if self.x is None and self.decoder is None:
            raise DataError("A SyntheticSet needs images (x) or a factorised form (params + decoder).")
        if self.label_kind not in LABEL_KINDS:
            raise DataError(f"label_kind must be one of {LABEL_KINDS}; got {self.label_kind!r}.")
        if self.y.dtype != torch.int64 or self.y.ndim != 1:
            raise DataError(f"y must be int64 class ids of shape (N,); got {self.y.dtype} {tuple(self.y.shape)}.")
        if self.y.numel() and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise DataError(f"labels must lie in [0, {self.num_classes}); got range "
                            f"[{int(self.y.min())}, {int(self.y.max())}].")
        n = self.y.shape[0]
        if self.x is not None:
            if self.x.ndim != 4 or tuple(self.x.shape[1:]) != self.image_shape or self.x.shape[0] != n:
                raise DataError(f"x must be ({n}, {', '.join(map(str, self.image_shape))}); got {tuple(self.x.shape)}.")
            if not self.x.is_floating_point():
                raise DataError(f"x must be floating point; got {self.x.dtype}.")
            if not torch.isfinite(self.x).all():
                raise DataError("The synthetic images hold NaN/Inf; refusing to build or save such a summary.")
        if self.soft is not None:
            if self.soft.shape != (n, self.num_classes) or not self.soft.is_floating_point():
                raise DataError(f"soft labels must be float ({n}, {self.num_classes}); got "
                                f"{self.soft.dtype} {tuple(self.soft.shape)}.")
            if not torch.isfinite(self.soft).all():
                raise DataError("The soft labels hold NaN/Inf.")
            if self.label_kind == "hard":
                raise DataError("soft labels are given, so label_kind must be 'logits', 'regression' or 'multilabel'.")
        elif self.label_kind != "hard" and self.decoder is None:
            raise DataError(f"label_kind {self.label_kind!r} needs soft labels (soft), and there are none: use "
                            "label_kind='hard' for class ids alone.")
        for k, v in self.params.items():
            if not torch.isfinite(v).all():
                raise DataError(f"Factorised parameter {k!r} holds NaN/Inf.")
        if self.lr is not None and not (self.lr > 0 and self.lr < float("inf")):
            raise DataError(f"The learned learning rate must be positive and finite; got {self.lr}.")

    # ---------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.decoded_labels()[0])

    @property
    def ipc(self) -> int:
        """Images per class: the metadata's ``ipc``, else the labels' count per class."""
        return int(self.meta.get("ipc", max(1, len(self.y) // max(1, self.num_classes))))

    def materialize(self, chunk: int = DECODE_CHUNK) -> "SyntheticSet":
        """The plain-image form (decodes a factorised summary, ``chunk`` images at a time where its decoder can;
        returns ``self`` when already plain)."""
        if self.decoder is None:
            return self
        dec = DECODERS.get(self.decoder)
        try:
            x, y, soft = dec(self.params, self.decoder_spec, chunk) if isinstance(dec, ChunkedDecoder) else \
                dec(self.params, self.decoder_spec)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            from .memory import is_out_of_memory

            if isinstance(exc, DistillError) or is_out_of_memory(exc):
                raise
            kind = type(exc).__name__
            raise SummaryFormatError(f"The {self.decoder!r} decoder could not decode this summary ({kind}: {exc}): "
                                     "its decoder_spec or parameters are malformed. Re-create the summary.") from exc
        return replace(self, x=x, y=y, soft=soft, params={}, decoder=None, decoder_spec={},
                       label_kind=self.label_kind if soft is not None else "hard")

    def decoded_labels(self) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """``(y, soft, label_kind)`` of the images a training run sees, without decoding images where the
        decoder can tell them apart."""
        if self.decoder is None:
            return self.y, self.soft, self.label_kind
        dec = DECODERS.get(self.decoder)
        if isinstance(dec, ChunkedDecoder):
            y, soft = dec.labels(self.params, self.decoder_spec)
        else:
            _, y, soft = dec(self.params, self.decoder_spec)
        return y, soft, self.label_kind if soft is not None else "hard"

    def training_data(self, device: torch.device | str = "cpu", cache_mb: float = DECODE_CACHE_MB):
        """``(images, target, label_kind)`` for :func:`distill_apps.train.fit`: ``target`` the soft labels when
        present, else the class ids. ``images`` is a tensor on ``device`` (plain summaries, and factorised ones
        whose decoded images take at most ``cache_mb`` MB: decoded once, in chunks) or a :class:`DecodedImages`
        that decodes each minibatch (memory flat in the number of decoded images; decoding is deterministic)."""
        y, soft, kind = self.decoded_labels()
        target = (soft if soft is not None else y).to(device)
        if self.decoder is None:
            return self.x.to(device), target, kind
        dec = DECODERS.get(self.decoder)
        decoded_mb = len(y) * math.prod(self.image_shape) * 4 / 2**20
        if isinstance(dec, ChunkedDecoder) and decoded_mb > cache_mb:
            return DecodedImages(self, device), target, kind
        return self.materialize().x.to(device), target, kind

    def as_dataset(self) -> TensorDataset:
        """A ``TensorDataset`` of (image, target): target is the soft label row when present, else the class id."""
        m = self.materialize()
        return TensorDataset(m.x.detach(), (m.soft if m.soft is not None else m.y).detach())

    def storage_floats(self) -> int:
        """Stored floats of the image part (images or factorised parameters), the unit budgets are counted in."""
        return (self.x.numel() if self.x is not None else 0) + sum(v.numel() for v in self.params.values())

    def label_floats(self) -> int:
        """The soft labels as float32 (hard labels: None)."""
        return 0 if self.soft is None else self.soft.numel()

    def to(self, device: torch.device | str) -> "SyntheticSet":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, x=mv(self.x), y=self.y.to(device), soft=mv(self.soft),
                       params={k: v.to(device) for k, v in self.params.items()})

    def detach(self) -> "SyntheticSet":
        dt = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        return replace(self, x=dt(self.x), y=self.y.detach().cpu().clone(), soft=dt(self.soft),
                       params={k: v.detach().cpu().clone() for k, v in self.params.items()})

    # ---------------------------------------------------------------- classes
    #: soft-label value of a class a summary knows nothing about (see :meth:`relabel`): for ``logits`` a logit
    #: whose softmax weight is exactly 0 in float32 yet finite; for ``multilabel`` and ``regression`` targets 0
    #: ("not this label" / the one-hot component of another class)
    ABSENT_SOFT: ClassVar[dict[str, float]] = {"logits": -1.0e4, "multilabel": 0.0, "regression": 0.0}

    @classmethod
    def absent_value(cls, label_kind: str) -> float:
        """The soft-label value :meth:`relabel` gives classes absent from a summary of ``label_kind``."""
        if label_kind not in cls.ABSENT_SOFT:
            raise DataError(f"Summaries with {label_kind!r} labels carry no soft labels to fill; "
                            f"known soft kinds: {', '.join(cls.ABSENT_SOFT)}.")
        return cls.ABSENT_SOFT[label_kind]

    def restrict(self, classes) -> "SyntheticSet":
        """The images of ``classes`` only, renumbered ``0..k-1`` in the order given (soft labels keep those
        classes' columns); the inverse of :meth:`relabel` for the classes kept. Factorised summaries are
        decoded first."""
        m = self.materialize()
        ids = self._check_ids(classes, self.num_classes, "restrict")
        keep = torch.tensor(ids, dtype=torch.long, device=m.y.device)
        lookup = torch.full((self.num_classes,), -1, dtype=torch.long, device=m.y.device)
        lookup[keep] = torch.arange(len(ids), device=m.y.device)
        rows = torch.isin(m.y, keep)
        soft = None if m.soft is None else m.soft[rows][:, keep]
        return replace(m, x=m.x[rows], y=lookup[m.y[rows]], num_classes=len(ids), soft=soft,
                       meta={**m.meta, "classes_of_source": ids})

    def relabel(self, mapping, num_classes: int, *, dataset: str | None = None) -> "SyntheticSet":
        """The summary with class ``j`` renamed ``mapping[j]``, in a label space of ``num_classes`` classes.

        The usual use: a summary distilled from :meth:`RealData.restrict(classes) <distill_apps.data.RealData.
        restrict>` goes back to the dataset's class ids with ``relabel(classes, real.num_classes,
        dataset=real.name)``. Soft labels grow to ``num_classes`` columns; classes the summary knows nothing
        about get :meth:`absent_value` (the same for every adapter). ``dataset`` sets ``meta["dataset"]``, the
        data :meth:`evaluate` uses by default. Factorised summaries are decoded first.
        """
        m = self.materialize()
        if len(mapping) != self.num_classes:
            raise DataError(f"relabel() needs one new id for each of the summary's {self.num_classes} classes; "
                            f"got {len(mapping)}.")
        ids = self._check_ids(mapping, num_classes, "relabel")
        new = torch.tensor(ids, dtype=torch.long, device=m.y.device)
        soft = None
        if m.soft is not None:
            soft = torch.full((len(m.y), num_classes), self.absent_value(m.label_kind), dtype=m.soft.dtype,
                              device=m.soft.device)
            soft[:, new] = m.soft
        meta = {k: v for k, v in m.meta.items() if k != "classes_of_source"}
        if dataset is not None:
            meta["dataset"] = dataset
        return replace(m, y=new[m.y], num_classes=int(num_classes), soft=soft, meta=meta)

    @staticmethod
    def _check_ids(ids, num_classes: int, what: str) -> list[int]:
        out = [int(c) for c in ids]
        if not out or len(set(out)) != len(out) or any(not 0 <= c < num_classes for c in out):
            raise DataError(f"{what}() takes distinct class ids in [0, {num_classes}); got {out}.")
        return out

    def contents(self) -> dict[str, Any]:
        """Images (or factorised parameters), classes, image shape and label kind."""
        return {"images": len(self.y) if self.decoder is None else None, "classes": self.num_classes,
                "image_shape": list(self.image_shape), "label_kind": self.label_kind, "decoder": self.decoder,
                "stored_floats": self.storage_floats()}

    def __repr__(self) -> str:
        """``SyntheticSet(dm, digits, 10 classes x 10 ipc, 1x8x8, hard labels, 6.3 KB)``."""
        from .reprs import shape, summary_repr

        form = f"factorised ({self.decoder} decoder, {self.storage_floats()} floats)" if self.decoder else None
        return summary_repr(self, [f"{self.num_classes} classes x {self.ipc} ipc", shape(self.image_shape),
                                   f"{self.label_kind} labels", form,
                                   f"learned lr {self.lr:.3g}" if self.lr is not None else None])

    def evaluate(self, data: Any = None, **kw):
        """:func:`distill_apps.evaluate.evaluate` on ``data`` (default: the dataset it was distilled from)."""
        from .evaluate import evaluate

        return evaluate(self, data, **kw)

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write one safetensors file (atomic, checksummed) with a JSON header."""
        self.validate()
        tensors = {"y": self.y}
        if self.x is not None:
            tensors["x"] = self.x.float()
        if self.soft is not None:
            tensors["soft"] = self.soft.float()
        tensors.update({f"param/{k}": v for k, v in self.params.items()})
        header = {
            "num_classes": self.num_classes, "image_shape": list(self.image_shape), "mean": list(self.mean),
            "std": list(self.std), "label_kind": self.label_kind, "lr": self.lr, "decoder": self.decoder,
            "decoder_spec": self.decoder_spec, "meta": self.meta,
        }
        assert set(header) == set(HEADER_FIELDS), "keep HEADER_FIELDS in step with what save writes"
        return safe_io.write(path, tensors, header, KIND, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SyntheticSet":
        """Read a summary; refuse corrupt, truncated, foreign or newer-format files, and any header field of the
        wrong type or out of range (:func:`validate_header`), with a clear error."""
        tensors, h = safe_io.read(path, KIND, FORMAT_VERSION)
        fields = validate_header(path, h, tensors)
        params = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("param/")}
        try:
            out = cls(x=tensors.get("x"), y=tensors["y"], soft=tensors.get("soft"), params=params, **fields)
        except DataError as exc:
            raise SummaryFormatError(f"{path}: {exc} The file is damaged or was edited: re-create it.") from exc
        return out

    def pixels(self, transform: Any = None) -> torch.Tensor:
        """The (materialised) images as pixels in [0, 1], ``(N, C, H, W)`` on the CPU: the whitening undone with
        ``transform`` (``real.transform``; required when the summary records one), then the normalisation."""
        x = self.materialize().x.detach().float().cpu()
        recorded = (self.meta.get("data") or {}).get("transform")
        if recorded is not None and transform is None:
            raise DataError(f"This summary's images are {recorded.get('kind')}-whitened: its data (loaded with the "
                            "same zca option) is needed to turn them back into pixels; pass it (--dataset, or "
                            "transform=real.transform).")
        if transform is not None:
            x = transform.invert(x)
        if self.mean and self.std:
            x = x * torch.tensor(self.std).view(1, -1, 1, 1) + torch.tensor(self.mean).view(1, -1, 1, 1)
        return x.clamp(0, 1)

    def image_grid(self, path: str | os.PathLike, per_class: int | None = None, transform: Any = None, *,
                   scale: int | None = None, labels: Any = True) -> Path:
        """Write a PNG grid of the (materialised, de-normalised) images, one row per class. A summary of
        whitened data (``meta["data"]["transform"]``) needs that ``transform`` (``real.transform``) to undo it.

        ``scale`` up-scales every pixel to ``scale x scale`` (default: the factor that makes each image at least 64
        pixels wide); ``labels`` puts a label left of each row: a list of class names (e.g. ``real.class_names``),
        ``True`` for the class indices, ``False`` for none."""
        m = self.materialize()
        x = self.pixels(transform)
        rows, ncol = [], per_class or max(1, max(int((m.y == c).sum()) for c in range(self.num_classes)))
        for c in range(self.num_classes):
            xc = x[m.y == c][:ncol]
            pad = torch.zeros(ncol - len(xc), *x.shape[1:])
            rows.append(torch.cat([xc, pad]))
        from .figures import auto_scale, label_rows, upscale

        k = auto_scale(x.shape[-1]) if scale is None else int(scale)
        if k < 1:
            raise DataError(f"image_grid scale must be a whole number >= 1; got {scale}.")
        grid = upscale(torch.cat(rows).clamp(0, 1), k)
        if labels is False or labels is None:
            return safe_io.write_png(path, grid, nrow=ncol, padding=1)
        names = [str(c) for c in range(self.num_classes)] if labels is True else [str(n) for n in labels]
        if len(names) != self.num_classes:
            raise DataError(f"image_grid got {len(names)} labels for {self.num_classes} classes: pass one name per "
                            "class (e.g. real.class_names), True for class indices or False for none.")
        from torchvision.utils import make_grid

        sheet = make_grid(grid, nrow=ncol, padding=1)
        return safe_io.write_png(path, label_rows(sheet, names, grid.shape[-2], 1))


HEADER_FIELDS = ("num_classes", "image_shape", "mean", "std", "label_kind", "lr", "decoder", "decoder_spec", "meta")
_META_TYPES: dict[str, tuple[str, dict[str, Any]]] = {  # meta fields the package reads back, by type (None allowed
    # where the readers accept it; ``ipc`` is read with int())
    "dataset": ("str", {"optional": True}), "method": ("str", {"optional": True}),
    "model": ("str", {"optional": True}), "family": ("str", {"optional": True}), "ipc": ("int", {"lo": 1}),
    "steps": ("int", {"lo": 0, "optional": True}), "seed": ("int", {"optional": True}),
    "skipped_steps": ("int", {"lo": 0, "optional": True}), "eval_augment": ("str", {"optional": True}),
    "kernel": ("str", {"optional": True}), "kernel_model": ("str", {"optional": True}),
    "kernel_reg": ("float", {"lo": 0.0, "optional": True}), "inner_epochs": ("int", {"lo": 1, "optional": True}),
    "inner_lrs": ("floats", {}), "privacy": ("dict", {"optional": True}), "data_source": ("dict", {"optional": True}),
    "config": ("dict", {"optional": True}), "versions": ("dict", {"optional": True}),
}


def validate_header(path: str | os.PathLike, h: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Check every field of a summary header by type and range (and the tensor names); returns the constructor
    arguments. Anything else is a :class:`SummaryFormatError` naming the file, the field and the fix."""
    from .validation import HeaderFields

    f = HeaderFields(path, "summary", h)
    f.only((*HEADER_FIELDS, "kind", "format_version", "sha256"))
    extra = sorted(k for k in tensors if k not in ("x", "y", "soft") and not k.startswith("param/"))
    if extra or "y" not in tensors:
        raise SummaryFormatError(f"{path}: a summary holds tensors y, x, soft and param/*; found {sorted(tensors)}. "
                                 "The file is damaged or was not written by distill-apps: re-create it.")
    num_classes = f.int("num_classes", 1, 1_000_000)
    shape = f.ints("image_shape", 1, 1 << 16, min_len=1, max_len=4)
    if math.prod(shape) > 1 << 31:
        raise f.fail("image_shape", "at most 2^31 values per image", shape)
    mean = f.floats("mean")
    std = f.floats("std", lo=0.0, lo_open=True)
    if len(mean) != len(std) or len(mean) not in (0, shape[0]):
        raise f.fail("mean/std", f"two lists of {shape[0]} numbers (one per channel), or both empty",
                     {"mean": mean, "std": std})
    label_kind = f.str("label_kind", LABEL_KINDS)
    if label_kind != "hard" and "soft" not in tensors and f.raw("decoder") is None:
        raise f.fail("label_kind", "'hard' when the file holds no soft labels", label_kind)
    lr = f.float("lr", 0.0, lo_open=True, optional=True)
    decoder = f.str("decoder", DECODERS.names(), optional=True, max_len=200)
    spec = f.dict("decoder_spec")
    if decoder is None and spec:
        raise f.fail("decoder_spec", "empty when there is no decoder", spec)
    meta = f.dict("meta")
    m = HeaderFields(path, "summary meta", meta)
    for key, (kind, rng) in _META_TYPES.items():
        if key in meta:
            if kind == "floats":
                if meta[key] is not None:
                    m.floats(key, lo=0.0)
            else:
                getattr(m, kind)(key, **rng)
    return {"num_classes": num_classes, "image_shape": tuple(shape), "mean": tuple(mean), "std": tuple(std),
            "label_kind": label_kind, "lr": lr, "decoder": decoder, "decoder_spec": spec, "meta": meta}
