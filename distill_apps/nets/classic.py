"""The cross-architecture zoo of the DC/DSA/DM papers: MLP, LeNet, AlexNet, VGG11, ResNet18.

Sized for small inputs (8x8 to 64x64) and any channel count; each exposes ``embed`` and ``classifier``.
"""
from __future__ import annotations

import torch
from torch import nn

from .convnet import make_norm
from .registry import register_model


class _Embedder(nn.Module):
    """Shared shape: ``forward = classifier(embed(x))``."""

    features: nn.Module
    classifier: nn.Module

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class MLP(_Embedder):
    def __init__(self, in_channels, num_classes, image_size, width: int = 128, depth: int = 3, act: str = "relu"):
        super().__init__()
        d = in_channels * image_size[0] * image_size[1]
        layers: list[nn.Module] = [nn.Flatten()]
        for _ in range(depth - 1):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.features, self.classifier, self.feature_dim = nn.Sequential(*layers), nn.Linear(d, num_classes), d


class LeNet(_Embedder):
    def __init__(self, in_channels, num_classes, image_size):
        super().__init__()
        h, w = image_size
        pad = 2 if min(h, w) < 32 else 0
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
        )
        d = _flat_dim(self.features, in_channels, image_size)
        self.classifier = nn.Sequential(nn.Linear(d, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                        nn.Linear(84, num_classes))
        self.feature_dim = d


class AlexNet(_Embedder):
    def __init__(self, in_channels, num_classes, image_size):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 128, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(128, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(192, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(),
            nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
        )
        self.feature_dim = _flat_dim(self.features, in_channels, image_size)
        self.classifier = nn.Linear(self.feature_dim, num_classes)


class VGG11(_Embedder):
    CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, in_channels, num_classes, image_size, norm: str = "instance"):
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = in_channels, image_size
        for v in self.CFG:
            if v == "M":
                if min(h, w) >= 2:
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), make_norm(norm, v, (h, w)), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, spatial: tuple[int, int]):
        super().__init__()
        out_sp = (max(1, spatial[0] // stride), max(1, spatial[1] // stride))
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), make_norm(norm, cout, out_sp), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), make_norm(norm, cout, out_sp),
        )
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout, out_sp))

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


class ResNet18(_Embedder):
    """ResNet-18 for small images (3x3 stem, no max-pool), instance norm by default as in DC's zoo."""

    def __init__(self, in_channels, num_classes, image_size, norm: str = "instance", width: int = 64):
        super().__init__()
        sp = tuple(image_size)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), make_norm(norm, width, sp),
                                   nn.ReLU()]
        c = width
        for i, mult in enumerate((1, 2, 4, 8)):
            stride = 1 if i == 0 else 2
            for j in range(2):
                s = stride if j == 0 else 1
                layers.append(_Block(c, width * mult, s, norm, sp))
                sp = (max(1, sp[0] // s), max(1, sp[1] // s))
                c = width * mult
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)


def _flat_dim(features: nn.Module, c: int, size: tuple[int, int]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, c, *size)).shape[1])


for _name, _cls in {"mlp": MLP, "lenet": LeNet, "alexnet": AlexNet, "vgg11": VGG11, "resnet18": ResNet18}.items():
    register_model(_name)(_cls)
