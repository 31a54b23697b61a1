"""The cross-architecture zoo of the DC/DSA/DM papers: MLP, LeNet, AlexNet, VGG11, ResNet18 (+ BatchNorm variants).

Defaults follow the zoo of Zhao et al.'s reference code (DC, ICLR 2021; DSA, ICML 2021; DM, WACV 2023): MLP with
two hidden layers of 128, LeNet-5 (6/16 channels, 120/84 hidden), AlexNet with 128/192/256/192/192 channels and
no norm, VGG11 and ResNet18 (3x3 stem, no max-pool) with instance norm (GroupNorm with one group per channel), and
``-bn`` variants with BatchNorm (``convnet-bn``, ``alexnet-bn``, ``vgg11-bn``, ``resnet18-bn``) as used by the
teacher-based methods and DM's BatchNorm evaluation pool.

Input sizes 8x8 (digits), 28x28 (MNIST), 32x32 and 64x64 all work:

- 28x28 to 31x31 inputs are zero-padded to 32x32 for LeNet, AlexNet and VGG11, as DC's code does for MNIST (it
  widens the first convolution's padding), so these nets see the 32x32 geometry they were designed for.
- VGG11 upsamples smaller inputs (nearest neighbour, 8x8 digits -> 32x32): natively, six of its eight
  instance-normed convolutions would run on 2x2 maps, where it does not learn.
- Otherwise small inputs keep their size, and a downsampling step (pooling, or a strided stage of ResNet18) is
  skipped where it would leave a following convolution and its norm on a 1x1 map: instance norm on a 1x1 map
  outputs zeros (one value per channel minus its own mean), which silenced VGG11 on MNIST and ResNet18 on 8x8
  inputs. Downsampling *after* the last normalised layer is kept, so the head still sees a small map.
- LeNet, AlexNet and VGG11 start from He initialisation (:func:`relu_init`) instead of PyTorch's default, which
  left LeNet/AlexNet near chance and made VGG11's features collapse in the first steps at the protocol's lr 0.01.
- Each net exposes ``embed`` (features) and ``classifier``; ``width`` scales VGG11/ResNet18/AlexNet/MLP.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .convnet import make_norm
from .registry import register_model

ZOO_SIZE = 32  # the input side the zoo's LeNet/AlexNet/VGG were laid out for


class _Embedder(nn.Module):
    """Shared shape: ``forward = classifier(embed(x))``."""

    features: nn.Module
    classifier: nn.Module

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.classifier(self.embed(x))


def pad_to_zoo_size(image_size: tuple[int, int]) -> tuple[list[nn.Module], tuple[int, int]]:
    """Zero-padding that turns a 28..31-pixel side into 32 (DC's MNIST handling); other sizes are left alone."""
    pads = []
    for s in image_size:
        extra = ZOO_SIZE - s if 28 <= s < ZOO_SIZE else 0
        pads.append((extra // 2, extra - extra // 2))
    (top, bottom), (left, right) = pads
    if top + bottom + left + right == 0:
        return [], tuple(image_size)
    return [nn.ZeroPad2d((left, right, top, bottom))], (image_size[0] + top + bottom, image_size[1] + left + right)


def upsample_to_zoo_size(image_size: tuple[int, int]) -> tuple[list[nn.Module], tuple[int, int]]:
    """Nearest-neighbour upsampling by the smallest integer factor that brings a side under 28 to 28 or more
    (8x8 digits -> 32x32); larger inputs are left alone."""
    k = max(1, -(-28 // min(image_size)))
    if k == 1:
        return [], tuple(image_size)
    return [nn.Upsample(scale_factor=k, mode="nearest")], (image_size[0] * k, image_size[1] * k)


def keeps_map(h: int, w: int, more_blocks: bool) -> bool:
    """Whether halving an ``h x w`` map is allowed: never below 2x2 while normalised convolutions follow."""
    if min(h, w) < 2:
        return False
    return not more_blocks or min(h, w) // 2 >= 2


class MLP(_Embedder):
    """Multi-layer perceptron on the flattened image: ``depth - 1`` hidden ReLU layers of ``width`` (DC: 128)."""

    def __init__(self, in_channels, num_classes, image_size, width: int = 128, depth: int = 3, act: str = "relu"):
        """``depth`` fully connected layers of ``width`` units on the flattened image."""
        super().__init__()
        from .convnet import make_act

        d = in_channels * image_size[0] * image_size[1]
        layers: list[nn.Module] = [nn.Flatten()]
        for _ in range(depth - 1):
            layers += [nn.Linear(d, width), make_act(act)]
            d = width
        self.features, self.classifier, self.feature_dim = nn.Sequential(*layers), nn.Linear(d, num_classes), d


class LeNet(_Embedder):
    """LeNet-5 (LeCun et al. 1998): conv5(6)-pool-conv5(16)-pool, then 120-84-classes.

    At 32x32 (and 28x28, padded to 32) both convolutions are unpadded, as in the original and in DC's zoo; on
    smaller inputs they are "same"-padded so the second one still has a map to run on.
    """

    def __init__(self, in_channels, num_classes, image_size):
        """LeNet-5 (LeCun et al., 1998): two 5x5 conv + max-pool stages and three linear layers."""
        super().__init__()
        pad_layers, (h, w) = pad_to_zoo_size(tuple(image_size))
        p = 0 if min(h, w) >= ZOO_SIZE else 2
        self.features = nn.Sequential(
            *pad_layers,
            nn.Conv2d(in_channels, 6, 5, padding=p), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(6, 16, 5, padding=p), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
        )
        d = _flat_dim(self.features, in_channels, image_size)
        self.classifier = nn.Sequential(nn.Linear(d, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                        nn.Linear(84, num_classes))
        self.feature_dim = d
        relu_init(self, skip=self.classifier[-1])


class AlexNet(_Embedder):
    """AlexNet of DC's zoo (Krizhevsky et al. 2012, sized for 32x32): conv5-pool-conv5-pool-conv3x3-pool.

    Channels ``width x (1, 1.5, 2, 1.5, 1.5)`` (DC: 128/192/256/192/192); no norm by default (``alexnet-bn``:
    BatchNorm after every convolution, DC's AlexNetBN).
    """

    def __init__(self, in_channels, num_classes, image_size, width: int = 128, norm: str = "none"):
        """AlexNet (Krizhevsky et al., NeurIPS 2012) scaled to small images, as in the DC benchmark's zoo."""
        super().__init__()
        c1, c2, c3, c4, c5 = (width, width * 3 // 2, width * 2, width * 3 // 2, width * 3 // 2)
        layers, (h, w) = pad_to_zoo_size(tuple(image_size))
        plan = [(c1, 5, True), (c2, 5, True), (c3, 3, False), (c4, 3, False), (c5, 3, True)]
        c = in_channels
        for i, (cout, k, pool) in enumerate(plan):
            layers += [nn.Conv2d(c, cout, k, padding=k // 2), make_norm(norm, cout, (h, w)), nn.ReLU()]
            c = cout
            if pool and keeps_map(h, w, more_blocks=i < len(plan) - 1):
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        relu_init(self, skip=self.classifier)


class VGG11(_Embedder):
    """VGG11 (Simonyan & Zisserman 2015) as in DC's zoo: conv3x3-norm-ReLU blocks, five max-pools, linear head.

    Instance norm by default (``vgg11-bn``: BatchNorm); ``width`` is the first block's channels (64).
    """

    CFG = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")

    def __init__(self, in_channels, num_classes, image_size, norm: str = "instance", width: int = 64):
        """VGG-11 (Simonyan & Zisserman, ICLR 2015) with the given norm, for small images."""
        super().__init__()
        up, size = upsample_to_zoo_size(tuple(image_size))
        pad, (h, w) = pad_to_zoo_size(size)
        layers, c = up + pad, in_channels
        for i, v in enumerate(self.CFG):
            if v == "M":
                if keeps_map(h, w, more_blocks=i < len(self.CFG) - 1):
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(c, width * v, 3, padding=1), make_norm(norm, width * v, (h, w)), nn.ReLU()]
                c = width * v
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        relu_init(self, skip=self.classifier)


class _Block(nn.Module):
    """ResNet basic block: conv3x3(stride)-norm-ReLU-conv3x3-norm plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, out_spatial: tuple[int, int]):
        """ResNet basic block: two 3x3 convs with norm and a projection shortcut when the shape changes."""
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), make_norm(norm, cout, out_spatial), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), make_norm(norm, cout, out_spatial),
        )
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), make_norm(norm, cout, out_spatial))

    def forward(self, x):
        """``relu(body(x) + shortcut(x))``."""
        return torch.relu(self.body(x) + self.short(x))


class ResNet18(_Embedder):
    """ResNet-18 (He et al. 2016) for small images as in DC's zoo: 3x3 stem, no max-pool, four stages of two
    basic blocks (``width`` x 1/2/4/8 channels), global average pooling. Instance norm by default
    (``resnet18-bn``: BatchNorm). A stage keeps stride 1 where stride 2 would leave it a 1x1 map (8x8 inputs)."""

    def __init__(self, in_channels, num_classes, image_size, norm: str = "instance", width: int = 64):
        """ResNet-18 (He et al., CVPR 2016) with a 3x3 stem for small images, as in the DC benchmark's zoo."""
        super().__init__()
        h, w = image_size
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                   make_norm(norm, width, (h, w)), nn.ReLU()]
        c = width
        for i, mult in enumerate((1, 2, 4, 8)):
            stride = 2 if i > 0 and keeps_map(h, w, more_blocks=True) else 1
            h, w = -(-h // stride), -(-w // stride)  # stride-2 3x3 conv with padding 1: ceil(h / 2)
            for j in range(2):
                layers.append(_Block(c, width * mult, stride if j == 0 else 1, norm, (h, w)))
                c = width * mult
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c
        self.classifier = nn.Linear(c, num_classes)


def relu_init(model: nn.Module, skip: nn.Module) -> None:
    """He initialisation (He et al. 2015: normal, fan-in, ReLU gain; zero bias) of every conv/linear layer but
    the output layer ``skip``.

    PyTorch's default (which DC's reference code inherits) draws a sixth of that variance. Without norm layers
    the signal then shrinks layer by layer and LeNet/AlexNet sat near chance for hundreds of steps at the
    protocol's lr 0.01; before a norm layer the small weights make each SGD step move them ~6x further in
    relative terms, and VGG11's instance-normed 2x2 maps collapsed to image-independent features in the first
    steps. ConvNet (existing figures depend on it), MLP and ResNet18 (its skip connections keep it learning;
    He init slowed it) keep PyTorch's default, as in DC's zoo."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not skip:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _flat_dim(features: nn.Module, c: int, size: tuple[int, int]) -> int:
    """Length of the flattened output of ``features`` for one ``(c, *size)`` input."""
    with torch.no_grad():
        return int(features(torch.zeros(1, c, *size)).shape[1])


for _name, _cls in {"mlp": MLP, "lenet": LeNet, "alexnet": AlexNet, "vgg11": VGG11, "resnet18": ResNet18}.items():
    register_model(_name)(_cls)
for _name, _cls in {"alexnet-bn": AlexNet, "vgg11-bn": VGG11, "resnet18-bn": ResNet18}.items():
    register_model(_name)(partial(_cls, norm="batch"))
