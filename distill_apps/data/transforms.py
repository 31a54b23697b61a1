"""Dataset transforms applied after normalisation, in every drawn batch: ZCA whitening.

ZCA whitening is the convention of KIP (Nguyen et al. 2021), MTT (Cazenavette et al. 2022), FRePO (Zhou et al.
2022) and RFAD (Loo et al. 2022) on CIFAR: fit on the normalised training images, ``W = U (S + reg)^-1/2 U^T``
from the eigendecomposition ``U S U^T`` of their covariance (MTT's ``kornia.enhance.ZCAWhitening(eps=0.1)``:
unbiased covariance, absolute regulariser 0.1), applied as ``(x - mu) W`` to every image, train and test.

Storage: a 3072x3072 float32 matrix is 37 MB, thirty times a CIFAR-10 IPC-10 summary, so a summary does not
carry it. The fitted transform (mean, matrix, inverse) is cached under ``<cache root>/zca/`` keyed by the data's
fingerprint and the regulariser; the summary records ``{"kind": "zca", "reg", "sha256", "probe"}``: the SHA-256
of the exact matrix and a probe (the matrix applied to a fixed pseudo-random vector). Evaluation rebuilds the
transform from the same data (from the cache: same SHA-256; or refitted on another machine: the probe must agree
to 1e-3), and refuses data whose transform differs. The fit is deterministic for the same data and library.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import safe_io
from ..errors import DataError, SummaryFormatError
from .registry import cache_root

KIND = "zca"
VERSION = 1
PROBE_TOL = 1e-3


@dataclass(repr=False)
class ZCA:
    """A fitted ZCA whitening: ``apply(x) = ((x.flatten(1) - mean) @ matrix).view_as(x)``; ``invert`` undoes it."""

    reg: float
    mean: torch.Tensor  # (D,)
    matrix: torch.Tensor  # (D, D), symmetric
    inverse: torch.Tensor  # (D, D)
    kind: str = "zca"

    def __post_init__(self) -> None:
        """Start the per-device cache of the whitening tensors."""
        self._on: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"ZCA(reg {self.reg:g}, {self.mean.numel()} dimensions)"

    def _at(self, device: torch.device):
        """Mean, whitening matrix and inverse on ``device`` (copied once per device)."""
        k = str(device)
        if k not in self._on:
            self._on[k] = (self.mean.to(device), self.matrix.to(device), self.inverse.to(device))
        return self._on[k]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten ``x`` (in float32, also inside autocast)."""
        mean, w, _ = self._at(x.device)
        with torch.autocast(x.device.type, enabled=False):  # whitening in float32, even inside an autocast region
            return ((x.flatten(1).float() - mean) @ w).view(x.shape)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`apply` (for viewing and exporting whitened images)."""
        mean, _, inv = self._at(x.device)
        with torch.autocast(x.device.type, enabled=False):
            return (x.flatten(1).float() @ inv + mean).view(x.shape)

    def sha256(self) -> str:
        """SHA-256 of the mean and whitening matrix: identifies the transform in a summary's metadata."""
        h = hashlib.sha256()
        for t in (self.mean, self.matrix):
            h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
        return h.hexdigest()

    def probe(self) -> list[float]:
        """The matrix applied to a fixed pseudo-random unit vector (first 16 values and the norm)."""
        v = torch.from_numpy(np.random.default_rng(0).standard_normal(self.matrix.shape[0])).float()
        out = self.matrix.float().cpu() @ (v / v.norm())
        return [float(f) for f in out[:16]] + [float(out.norm())]

    def spec(self) -> dict[str, Any]:
        """What a summary records (a reference, not the 4 D^2 bytes of the matrix)."""
        return {"kind": "zca", "reg": self.reg, "dim": int(self.matrix.shape[0]), "sha256": self.sha256(),
                "probe": self.probe()}


def same_transform(recorded: dict[str, Any] | None, t: Any) -> bool:
    """Whether transform ``t`` (or ``None``) is the one a summary recorded (exact hash, or probe within 1e-3)."""
    if recorded is None or t is None:
        return recorded is None and t is None
    if recorded.get("kind") != t.kind or float(recorded.get("reg", -1)) != float(t.reg):
        return False
    if recorded.get("sha256") == t.sha256():
        return True
    a, b = np.asarray(recorded.get("probe", []), dtype=np.float64), np.asarray(t.probe(), dtype=np.float64)
    return a.shape == b.shape and bool(np.abs(a - b).max() <= PROBE_TOL * max(1.0, float(np.abs(b).max())))


def fit_zca(real, reg: float = 0.1, batch: int = 2048, progress: bool = True, cache: bool = True) -> ZCA:
    """Fit ZCA whitening on ``real``'s normalised training images (streamed: the float split is never held), or
    load it from the cache when this data was whitened with this ``reg`` before."""
    if reg <= 0:
        raise DataError(f"The ZCA regulariser must be positive; got {reg}.")
    base = real.with_transform(None) if real.transform is not None else real
    path = cache_root() / "zca" / f"{base.fingerprint()}-reg{reg:g}.safetensors"
    if cache and path.exists():
        try:
            t, h = safe_io.read(path, KIND, VERSION, {"mean", "matrix", "inverse"})
            return ZCA(float(h["reg"]), t["mean"], t["matrix"], t["inverse"])
        except SummaryFormatError:
            pass  # rebuilt below and rewritten atomically
    n, d = base.size("train"), int(np.prod(base.image_shape))
    s = torch.zeros(d, dtype=torch.float64)
    cov = torch.zeros(d, d, dtype=torch.float64)
    it = range(0, n, batch)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"fitting ZCA on {real.name}", leave=False)
    for i in it:
        x = base.images(slice(i, i + batch)).flatten(1).cpu()
        s += x.sum(0, dtype=torch.float64)
        cov += (x.T @ x).double()
    mean = s / n
    cov = (cov - n * torch.outer(mean, mean)) / max(1, n - 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp(min=0)
    w = (evecs * (evals + reg).rsqrt()) @ evecs.T
    inv = (evecs * (evals + reg).sqrt()) @ evecs.T
    out = ZCA(float(reg), mean.float(), w.float().contiguous(), inv.float().contiguous())
    if cache:
        safe_io.write(path, {"mean": out.mean, "matrix": out.matrix, "inverse": out.inverse},
                      {"reg": float(reg), "data": real.name}, KIND, VERSION)
    return out


def transform_from_spec(real, spec: dict[str, Any] | None, progress: bool = True):
    """The transform a summary recorded, rebuilt on ``real`` (which must be the untransformed data); refuses a
    mismatch with a message naming it."""
    if spec is None:
        return None
    if spec.get("kind") != "zca":
        raise DataError(f"The summary records a data transform {spec.get('kind')!r} this version does not know.")
    t = fit_zca(real, float(spec["reg"]), progress=progress)
    if not same_transform(spec, t):
        raise DataError(f"The summary was distilled on ZCA-whitened data (reg {spec['reg']}) whose whitening differs "
                        f"from the one fitted on {real.name} now: it was made from other data. Evaluate it on the "
                        "dataset it was distilled from.")
    return t
