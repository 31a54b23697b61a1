"""Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021, "Dataset Condensation with DSA").

Parameters are sampled once (``DSA.sample``) and applied to any number of batches (``DSA.apply``), so real and
synthetic images see the same transform. Images are split into *groups* (e.g. one per class): every image in a
group shares one parameter draw, which is DSA's Siamese rule, and all classes go through one batched call.

The ops and magnitudes are the paper's: colour (brightness +-0.5, saturation x[0,2], contrast x[0.5,1.5]),
crop (translation up to 1/8 of the side, zero padding), cutout (a square of half the side), flip (p=0.5),
scale (x[1/1.2, 1.2] per axis) and rotate (+-15 degrees). Geometric ops are fused into one affine
``grid_sample``; all ops are differentiable with respect to the images. In ``single`` mode (DSA's default) each
group applies one op drawn at random; in ``multi`` mode every op is applied.

We write these few ops ourselves instead of using kornia because DSA's colour ops and its integer-shift crop differ
from kornia's, and the fused single ``grid_sample`` is faster than chaining kornia modules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


@dataclass
class DSAParams:
    """One draw of augmentation parameters for ``groups`` groups of images."""

    active: torch.Tensor  # (G, len(OPS)) bool: which ops each group applies
    brightness: torch.Tensor  # (G,)
    saturation: torch.Tensor
    contrast: torch.Tensor
    theta: torch.Tensor  # (G, 2, 3) fused affine (crop, flip, scale, rotate)
    cutout_center: torch.Tensor  # (G, 2) in [0, 1)

    @property
    def groups(self) -> int:
        """Number of groups (each drew its own parameters)."""
        return self.active.shape[0]


class DSA:
    """Sample-once, apply-many differentiable augmentation."""

    def __init__(self, strategy: str = DEFAULT_STRATEGY, mode: str = "single", scale: float = 1.2,
                 rotate: float = 15.0, crop: float = 0.125, cutout: float = 0.5, brightness: float = 1.0,
                 saturation: float = 2.0, contrast: float = 0.5, flip: bool = True) -> None:
        """Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021) with ops from ``strategy`` (``_``-separated),
        one per group (``single``) or all (``multi``)."""
        ops = [o for o in strategy.split("_") if o and o != "none"]
        unknown = [o for o in ops if o not in OPS]
        if unknown:
            raise ConfigError(f"Unknown DSA op(s) {unknown}: choose from {', '.join(OPS)}.")
        if not flip:
            ops = [o for o in ops if o != "flip"]
        if mode not in ("single", "multi"):
            raise ConfigError(f"DSA mode must be 'single' or 'multi'; got {mode!r}.")
        self.ops, self.mode = ops, mode
        self.scale, self.rotate, self.crop, self.cutout = scale, rotate, crop, cutout
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast

    @classmethod
    def for_dataset(cls, flip_invariant: bool, **kw) -> "DSA":
        """DSA with flip only where the dataset is flip-invariant (never for digits)."""
        return cls(flip=flip_invariant, **kw)

    def sample(self, groups: int, generator: torch.Generator, image_size: tuple[int, int]) -> DSAParams:
        """Draw one parameter set per group from ``generator``; real and synthetic batches of a group then share it."""
        g = generator
        on = torch.zeros(groups, len(OPS), dtype=torch.bool)
        idx = [OPS.index(o) for o in self.ops]
        if idx:
            if self.mode == "single":
                pick = torch.tensor(idx)[torch.randint(len(idx), (groups,), generator=g)]
                on[torch.arange(groups), pick] = True
            else:
                on[:, idx] = True
        r = lambda: torch.rand(groups, generator=g)  # noqa: E731
        bright = (r() - 0.5) * self.brightness
        sat = r() * self.saturation
        con = r() + self.contrast
        # geometric ops, each contributing an affine map that is the identity where inactive
        h, w = image_size
        shift = torch.stack([
            torch.randint(-int(w * self.crop), int(w * self.crop) + 1, (groups,), generator=g) * 2.0 / w,
            torch.randint(-int(h * self.crop), int(h * self.crop) + 1, (groups,), generator=g) * 2.0 / h,
        ], 1)
        flip = torch.where(r() < 0.5, -1.0, 1.0)
        sx, sy = (r() * (self.scale - 1 / self.scale) + 1 / self.scale), (r() * (self.scale - 1 / self.scale) + 1 / self.scale)
        ang = (r() - 0.5) * 2 * self.rotate * math.pi / 180
        centre = torch.rand(groups, 2, generator=g)
        a = on.float()
        crop_on, flip_on, scale_on, rot_on = a[:, 1], a[:, 3], a[:, 4], a[:, 5]
        fx = flip_on * flip + (1 - flip_on)
        sx = scale_on * sx + (1 - scale_on)
        sy = scale_on * sy + (1 - scale_on)
        ang = rot_on * ang
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.zeros(groups, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = sx * cos * fx, -sin * sy
        theta[:, 1, 0], theta[:, 1, 1] = sin * sx * fx, cos * sy
        theta[:, :, 2] = shift * crop_on[:, None]
        return DSAParams(on, bright, sat, con, theta, centre)

    def apply(self, x: torch.Tensor, params: DSAParams, groups: torch.Tensor | None = None) -> torch.Tensor:
        """Augment ``x`` (N,C,H,W); ``groups[i]`` says which parameter draw image ``i`` uses (default: all 0)."""
        if not self.ops:
            return x
        n, c, h, w = x.shape
        dev = x.device
        gi = torch.zeros(n, dtype=torch.long, device=dev) if groups is None else groups.to(dev)
        on = params.active.to(dev)[gi].to(x.dtype)  # (N, ops)
        # colour: brightness, saturation, contrast (DSA's three colour ops, in its order)
        col = on[:, 0].view(n, 1, 1, 1)
        if bool(col.any()):
            b = params.brightness.to(dev, x.dtype)[gi].view(n, 1, 1, 1)
            s = params.saturation.to(dev, x.dtype)[gi].view(n, 1, 1, 1)
            k = params.contrast.to(dev, x.dtype)[gi].view(n, 1, 1, 1)
            y = x + b
            m = y.mean(dim=1, keepdim=True)
            y = (y - m) * s + m
            m = y.mean(dim=(1, 2, 3), keepdim=True)
            y = (y - m) * k + m
            x = col * y + (1 - col) * x
        geo = on[:, [1, 3, 4, 5]].sum(1) > 0
        if bool(geo.any()):
            grid = F.affine_grid(params.theta.to(dev, x.dtype)[gi], [n, c, h, w], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        cut = on[:, 2]
        if bool(cut.any()):
            ch, cw = max(1, int(h * self.cutout + 0.5)), max(1, int(w * self.cutout + 0.5))
            cen = params.cutout_center.to(dev, x.dtype)[gi]
            cy = (cen[:, 0] * h).floor().view(n, 1, 1)
            cx = (cen[:, 1] * w).floor().view(n, 1, 1)
            yy = torch.arange(h, device=dev, dtype=x.dtype).view(1, h, 1)
            xx = torch.arange(w, device=dev, dtype=x.dtype).view(1, 1, w)
            inside = ((yy - cy).abs() < ch / 2) & ((xx - cx).abs() < cw / 2)
            mask = 1 - inside.to(x.dtype) * cut.view(n, 1, 1)
            x = x * mask.unsqueeze(1)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator, groups: torch.Tensor | None = None,
                 num_groups: int | None = None) -> torch.Tensor:
        """Sample and apply in one go (evaluation-time augmentation: one draw per image)."""
        if groups is None:
            groups = torch.arange(x.shape[0])
            num_groups = x.shape[0]
        p = self.sample(num_groups or int(groups.max()) + 1, generator, tuple(x.shape[-2:]))
        return self.apply(x, p, groups)
