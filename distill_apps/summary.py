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
from typing import Any, Callable

import torch
from torch.utils.data import TensorDataset

from . import safe_io
from .errors import DataError, SummaryFormatError
from .registry import Registry

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
    import numpy

    from . import __version__

    return {"distill_apps": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


@dataclass
class SyntheticSet:
    """A distilled summary. ``x`` is normalised ``(N, C, H, W)``; ``y`` int64 ``(N,)``."""

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
        return int(self.meta.get("ipc", max(1, len(self.y) // max(1, self.num_classes))))

    def materialize(self, chunk: int = DECODE_CHUNK) -> "SyntheticSet":
        """The plain-image form (decodes a factorised summary, ``chunk`` images at a time where its decoder can;
        returns ``self`` when already plain)."""
        if self.decoder is None:
            return self
        dec = DECODERS.get(self.decoder)
        x, y, soft = dec(self.params, self.decoder_spec, chunk) if isinstance(dec, ChunkedDecoder) else \
            dec(self.params, self.decoder_spec)
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
        return 0 if self.soft is None else self.soft.numel()

    def to(self, device: torch.device | str) -> "SyntheticSet":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, x=mv(self.x), y=self.y.to(device), soft=mv(self.soft),
                       params={k: v.to(device) for k, v in self.params.items()})

    def detach(self) -> "SyntheticSet":
        dt = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        return replace(self, x=dt(self.x), y=self.y.detach().cpu().clone(), soft=dt(self.soft),
                       params={k: v.detach().cpu().clone() for k, v in self.params.items()})

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
        return safe_io.write(path, tensors, header, KIND, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SyntheticSet":
        """Read a summary; refuse corrupt, truncated, foreign or newer-format files with a clear error."""
        tensors, h = safe_io.read(path, KIND, FORMAT_VERSION)
        try:
            params = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("param/")}
            out = cls(x=tensors.get("x"), y=tensors["y"], num_classes=int(h["num_classes"]),
                      image_shape=tuple(h["image_shape"]), mean=tuple(h["mean"]), std=tuple(h["std"]),
                      soft=tensors.get("soft"), label_kind=h["label_kind"], lr=h["lr"], params=params,
                      decoder=h["decoder"], decoder_spec=h["decoder_spec"], meta=h["meta"])
        except (KeyError, TypeError) as exc:
            raise SummaryFormatError(f"{path}: summary header lacks or mangles field {exc}; the file is corrupt.") from exc
        except DataError as exc:
            raise SummaryFormatError(f"{path}: {exc}") from exc
        return out

    def image_grid(self, path: str | os.PathLike, per_class: int | None = None) -> Path:
        """Write a PNG grid of the (materialised, de-normalised) images, one row per class."""
        from torchvision.utils import save_image

        m = self.materialize()
        x = m.x.detach().float().cpu()
        if self.mean and self.std:
            x = x * torch.tensor(self.std).view(1, -1, 1, 1) + torch.tensor(self.mean).view(1, -1, 1, 1)
        rows, ncol = [], per_class or max(1, max(int((m.y == c).sum()) for c in range(self.num_classes)))
        for c in range(self.num_classes):
            xc = x[m.y == c][:ncol]
            pad = torch.zeros(ncol - len(xc), *x.shape[1:])
            rows.append(torch.cat([xc, pad]))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(torch.cat(rows).clamp(0, 1), str(path), nrow=ncol, padding=1)
        return path
