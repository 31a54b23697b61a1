"""Tileable textures from a class of a dataset (the "exotic textures for clothing design" use of distillation;
trajectory matching's tileable textures, Cazenavette et al., CVPR 2022): the real data are crops of one class,
the distillation network pads circularly (``convnet-circular``), so each synthetic image is optimised as a torus
and tiles without a seam. :func:`seam_gaps` measures that; :func:`tile` builds the tiled preview."""
from __future__ import annotations

import torch

from .data.real import RealData
from .errors import ConfigError

__all__ = ["texture_data", "mirror_tile", "seam_gaps", "tile"]


def mirror_tile(x: torch.Tensor) -> torch.Tensor:
    """``(..., h, w)`` -> ``(..., 2h, 2w)``: the image beside its left-right mirror, above their up-down mirror.
    The result is periodic with no seam (its last column is its first, its last row its first): the classic way
    to make a photograph tile, applied to the real crops so that the data a texture is matched to hold no seams."""
    top = torch.cat([x, x.flip(-1)], -1)
    return torch.cat([top, top.flip(-2)], -2)


def texture_data(real: RealData, cls: int | str, size: int, crops: int = 1024, seed: int = 0,
                 tileable: bool = True) -> RealData:
    """One class of ``real`` as ``crops`` random ``size x size`` crops taken from the middle half of its images
    (the garment, not the empty border), labelled as a single class; ``cls`` is an index or a class name. With
    ``tileable`` (the default) each crop is ``size/2`` pixels mirrored to ``size`` (:func:`mirror_tile`), so the
    real textures tile themselves; otherwise plain crops, whose opposite edges do not meet."""
    if isinstance(cls, str) and not cls.isdigit():
        if cls not in real.class_names:
            raise ConfigError(f"{real.name} has no class {cls!r}; its classes: {', '.join(real.class_names)}.")
        cls = real.class_names.index(cls)
    cls = int(cls)
    if not 0 <= cls < real.num_classes:
        raise ConfigError(f"--class {cls} is out of range: {real.name} has classes 0..{real.num_classes - 1}.")
    _, h, w = real.image_shape
    if not 4 <= size <= min(h, w):
        raise ConfigError(f"--size {size} must lie in [4, {min(h, w)}] for {real.name} images of {h}x{w}.")
    if tileable and size % 2:
        raise ConfigError(f"--size {size} must be even: a tileable crop is a {size}/2-pixel crop mirrored to {size}.")
    size = size // 2 if tileable else size
    x = real.images((real.y_train.cpu() == cls).nonzero().squeeze(1), "train", device="cpu")  # just this class
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(x), (crops,), generator=g)
    # crop corners inside the central region: an image's middle half is where the fabric is
    lo_y, lo_x = max(0, h // 4 - size // 4), max(0, w // 4 - size // 4)
    hi_y = max(lo_y, min(h - size, 3 * h // 4 - 3 * size // 4))
    hi_x = max(lo_x, min(w - size, 3 * w // 4 - 3 * size // 4))
    oy = torch.randint(lo_y, hi_y + 1, (crops,), generator=g)
    ox = torch.randint(lo_x, hi_x + 1, (crops,), generator=g)
    out = torch.stack([x[i, :, a:a + size, b:b + size] for i, a, b in zip(pick.tolist(), oy.tolist(), ox.tolist())])
    if tileable:
        out = mirror_tile(out)
    y = torch.zeros(crops, dtype=torch.long)
    n_test = max(1, crops // 8)
    return RealData(f"{real.name}:{real.class_names[cls]}-textures", out, y, out[:n_test], y[:n_test], 1, real.mean,
                    real.std, class_names=[real.class_names[cls]], flip_invariant=real.flip_invariant)


def seam_gaps(x: torch.Tensor) -> dict[str, float]:
    """Mean absolute differences of (..., H, W) images: across the wrap-around edges (last column vs first, last
    row vs first) and between adjacent columns / rows inside. A tile joins without a seam when the wrap gap is no
    larger than the inside gap."""
    x = x.detach().float()
    return {"wrap_columns": float((x[..., :, 0] - x[..., :, -1]).abs().mean()),
            "inside_columns": float((x[..., :, 1:] - x[..., :, :-1]).abs().mean()),
            "wrap_rows": float((x[..., 0, :] - x[..., -1, :]).abs().mean()),
            "inside_rows": float((x[..., 1:, :] - x[..., :-1, :]).abs().mean())}


def tile(x: torch.Tensor, times: int = 3) -> torch.Tensor:
    """A (..., C, H, W) image repeated ``times x times`` edge to edge (the preview of how the texture tiles)."""
    return x.repeat(*([1] * (x.dim() - 2)), times, times)
