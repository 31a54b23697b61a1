"""ConvNet of the dataset-distillation literature (Gidaris & Komodakis 2018; used by DC/DSA/DM/MTT).

Blocks of conv3x3(width) -> norm -> act -> pool; a linear classifier on the flattened features.
The field's default is depth 3, width 128, instance norm, ReLU, average pooling.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..errors import ConfigError
from .registry import register_model


def make_norm(norm: str, channels: int, spatial: tuple[int, int]) -> nn.Module:
    """A normalisation layer by name: ``instance`` (GroupNorm with one group per channel, as in DC's code), ``group``,
    ``batch``, ``layer`` or ``none``."""
    if norm == "instance":  # GroupNorm with one group per channel == affine instance norm, as in DC's code
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(min(32, channels) if channels % min(32, channels) == 0 else 1, channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":
        return nn.LayerNorm([channels, *spatial])
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"Unknown norm {norm!r}: use instance, group, batch, layer or none.")


def make_act(act: str) -> nn.Module:
    """An activation by name: ``relu``, ``leakyrelu``, ``sigmoid`` or ``gelu``."""
    acts = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
    if act not in acts:
        raise ConfigError(f"Unknown activation {act!r}: use {', '.join(acts)}.")
    return acts[act]()


class ConvNet(nn.Module):
    """ConvNet-``depth`` with a feature extractor (``embed``) and a linear head (``classifier``)."""

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int], depth: int = 3,
                 width: int = 128, norm: str = "instance", act: str = "relu", pool: str = "avg",
                 padding_mode: str = "zeros") -> None:
        """``depth`` blocks of conv 3x3 (``width`` channels), norm, activation and 2x2 pooling, then one linear
        classifier."""
        super().__init__()
        if depth < 1 or width < 1:
            raise ConfigError(f"ConvNet needs depth >= 1 and width >= 1; got depth={depth}, width={width}.")
        if pool not in ("avg", "max", "none"):
            raise ConfigError(f"Unknown pooling {pool!r}: use avg, max or none.")
        layers: list[nn.Module] = []
        c, (h, w) = in_channels, image_size
        for i in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1, padding_mode=padding_mode), make_norm(norm, width, (h, w)), make_act(act)]
            c = width
            # pool unless that would leave a later block's conv and norm on a 1x1 map (instance norm outputs zeros
            # there): ConvNet-4 on 8x8 digits keeps its third map at 2x2; the last block may pool to 1x1
            if pool != "none" and min(h, w) >= 2 and (i == depth - 1 or min(h, w) // 2 >= 2):
                layers.append(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier (the embedding DM and NAS proxies use)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.classifier(self.embed(x))


register_model("convnet")(ConvNet)
# DC's ConvNetBN: the teacher-based methods' network and the first of DM's BatchNorm evaluation pool
register_model("convnet-bn")(partial(ConvNet, norm="batch"))
# circular padding: the network sees an image as a torus, so what it is optimised into tiles without a seam
# (trajectory matching's tileable textures, Cazenavette et al., CVPR 2022)
register_model("convnet-circular")(partial(ConvNet, padding_mode="circular"))
