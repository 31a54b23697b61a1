"""Random-resized crops, flips and CutMix on image batches: the augmentations of the teacher-based methods.

SRe2L (Yin et al., NeurIPS 2023) recovers images through random-resized crops and flips of the synthetic batch;
RDED (Sun et al., CVPR 2024) scores random-resized crops of real images; their students (FKD-style, Shen & Xing
2022) train on random-resized crops, flips and CutMix (Yun et al. 2019) of the summary, relabelled by the teacher.

Crop boxes follow torchvision's ``RandomResizedCrop.get_params`` (area fraction in ``scale``, aspect ratio
log-uniform in ``ratio``, ten tries then a centre crop), drawn from an explicit ``torch.Generator``.
:func:`resized_crops` is differentiable (one batched ``affine_grid``/``grid_sample``) for recovery and
students; :func:`crop_box` + :func:`resize` cut integer boxes (pixel-exact when no resizing is needed) for RDED.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_boxes(n: int, size: tuple[int, int], g: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """``(n, 4)`` int64 boxes ``(top, left, height, width)`` inside an image of ``size`` (H, W)."""
    h, w = size
    tries = 10
    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=g, dtype=torch.float64))
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    ar = torch.exp(lr0 + (lr1 - lr0) * torch.rand(n, tries, generator=g, dtype=torch.float64))
    cw, ch = torch.round(torch.sqrt(area * ar)).long(), torch.round(torch.sqrt(area / ar)).long()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    # the fallback of torchvision: a centre crop at the nearest allowed aspect ratio
    in_r = w / h
    fw, fh = (w, round(w / ratio[0])) if in_r < ratio[0] else ((round(h * ratio[1]), h) if in_r > ratio[1] else (w, h))
    fh, fw = min(fh, h), min(fw, w)
    rows = torch.arange(n)
    pick = first.clamp(min=0)
    bh = torch.where(first >= 0, ch[rows, pick], torch.full((n,), fh))
    bw = torch.where(first >= 0, cw[rows, pick], torch.full((n,), fw))
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    top = torch.where(first >= 0, (u[:, 0] * (h - bh + 1)).floor().long(), (h - bh) // 2)
    left = torch.where(first >= 0, (u[:, 1] * (w - bw + 1)).floor().long(), (w - bw) // 2)
    return torch.stack([top, left, bh, bw], 1)


def crop_box(x: torch.Tensor, box: torch.Tensor | tuple[int, int, int, int]) -> torch.Tensor:
    """The pixels of ``x`` (C, H, W) inside ``box`` = (top, left, height, width), exactly."""
    t, left, h, w = (int(v) for v in box)
    return x[:, t:t + h, left:left + w]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of ``(N, C, h, w)`` to ``size``; the input itself when the
    size already matches (so a crop of the right size stays pixel-exact)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def resized_crops(x: torch.Tensor, g: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                  ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = False) -> torch.Tensor:
    """A random-resized crop (and, with ``flip``, a horizontal flip with p=0.5) of every image of ``x``,
    resized back to the input size; differentiable with respect to ``x`` (one batched bilinear resampling)."""
    n, _, h, w = x.shape
    boxes = sample_boxes(n, (h, w), g, scale, ratio).float()
    top, left, ch, cw = boxes.unbind(1)
    # affine map from output [-1, 1] coordinates to the box in input coordinates (align_corners=False)
    sx, sy = cw / w, ch / h
    tx = (2 * left + cw) / w - 1
    ty = (2 * top + ch) / h - 1
    fx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx * fx, tx
    theta[:, 1, 1], theta[:, 1, 2] = sy, ty
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter(x: torch.Tensor, g: torch.Generator, limit: int) -> torch.Tensor:
    """Roll the whole batch by a random offset in ``[0, limit]`` pixels along each axis (SRe2L's jitter)."""
    if limit <= 0:
        return x
    dy, dx = (int(v) for v in torch.randint(0, limit + 1, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def cutmix(x: torch.Tensor, g: torch.Generator, beta: float = 1.0) -> torch.Tensor:
    """CutMix the batch with a shuffled copy of itself: one box of area fraction ``1 - lam``, ``lam ~ Beta(beta,
    beta)``. Labels are not mixed here: the teacher relabels the mixed images (FKD/RDED)."""
    n, _, h, w = x.shape
    if n < 2:
        return x
    lam = _beta(beta, g)
    perm = torch.randperm(n, generator=g).to(x.device)
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(0, h, (), generator=g)), int(torch.randint(0, w, (), generator=g))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    return out


def _beta(a: float, g: torch.Generator) -> float:
    """A Beta(a, a) draw from ``g``, as the ratio of two Gamma(a) draws (torch's Beta has no generator)."""
    u = torch._standard_gamma(torch.full((2,), float(a)), generator=g)
    return float(u[0] / u.sum())
