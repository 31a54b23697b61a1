"""Images people read: nearest-pixel up-scaling, row labels for grids, and labelled image-pair figures (the
nearest-neighbour audits). Everything is written atomically through :mod:`distill_apps.safe_io`."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import torch

from . import safe_io

__all__ = ["auto_scale", "upscale", "label_rows", "pairs_png"]


def auto_scale(size: int, target: int = 64) -> int:
    """The integer factor that brings an image side of ``size`` pixels to at least ``target`` (1 if already)."""
    return max(1, -(-target // max(1, size)))


def upscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Nearest-pixel up-scaling of (..., H, W) images by an integer factor (pixels stay crisp squares)."""
    return x if scale == 1 else x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def label_rows(grid: torch.Tensor, names: Sequence[str], row_height: int, padding: int) -> torch.Tensor:
    """Prepend a white margin to a (C, H, W) grid in [0, 1] holding ``names[i]`` beside row ``i`` (rows of
    ``row_height`` pixels separated by ``padding``); returns an RGB (3, H, W') tensor."""
    from PIL import Image, ImageDraw

    img = grid.clamp(0, 1).mul(255).round().byte()
    img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
    pil = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy(), "RGB")
    font = _font(max(10, min(18, row_height // 3)))
    draw = ImageDraw.Draw(pil)
    width = max(int(draw.textlength(str(n), font=font)) for n in names) + 12
    out = Image.new("RGB", (pil.width + width, pil.height), "white")
    out.paste(pil, (width, 0))
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(names):
        y = padding + i * (row_height + padding) + row_height // 2
        draw.text((width - 6, y), str(name), fill="black", font=font, anchor="rm")
    return torch.from_numpy(__import__("numpy").asarray(out).copy()).permute(2, 0, 1).float() / 255


def pairs_png(left: torch.Tensor, right: torch.Tensor, path: str | os.PathLike, *, left_titles: Sequence[str],
              right_titles: Sequence[str], suptitle: str | None = None, target: int = 96) -> Path:
    """A readable figure of image pairs in [0, 1]: one row per pair (``left[i]`` beside ``right[i]``), each image
    up-scaled with nearest pixels to about ``target`` pixels and titled (class, distance, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(left)
    fig, axes = plt.subplots(max(n, 1), 2, figsize=(4.4, 1.9 * max(n, 1) + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i in range(n):
        for ax, img, title in ((axes[i][0], left[i], left_titles[i]), (axes[i][1], right[i], right_titles[i])):
            img = upscale(img.detach().float().cpu().clamp(0, 1), auto_scale(img.shape[-1], target))
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    for ax in axes.flat[2 * n:]:
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return safe_io.write_bytes(path, buf.getvalue())
