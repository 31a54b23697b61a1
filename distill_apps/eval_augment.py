"""Evaluation-time augmentations, by name: ``none``, ``dsa`` and ``dc`` (and the ``auto`` rule that picks one).

The field's protocol trains fresh networks on a summary *with the augmentation its paper evaluated with*, and
for 1,000 epochs when augmenting (300 otherwise). Each entry of :data:`EVAL_AUGMENTS` turns a dataset and the
network about to be trained into an :class:`EvalAugmentation`: a transform ``(images, generator) -> images``
called on every minibatch (fresh parameters per call, one draw per image; labels never pass through it).

- ``none``: no augmentation.
- ``dsa``: Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021) with its default strategy, flip only on
  flip-invariant data; the evaluation of DSA, DM, MTT and their descendants.
- ``dc``: the augmentation of DC's evaluation (Zhao, Mopuri & Bilen, ICLR 2021; ``get_daparam``/``augment`` in
  its reference code): each image gets *one* op drawn at random from the strategy, where crop shifts by up to
  4 px, scale stretches each axis by x[0.8, 1.2], rotate turns by up to 45 degrees and noise adds N(0, 0.001^2).
  The strategy is the reference code's: ``crop_noise`` for networks with BatchNorm, ``crop_scale_rotate`` on
  handwritten digits (MNIST, and the 8x8 ``digits``), otherwise no augmentation at all (e.g. Fashion-MNIST or
  CIFAR-10 with ConvNet: 300 epochs). Shifts are scaled to the image for sides under 28 (1 px on 8x8).

``auto`` reads the summary's method: ``dc`` for DC and DP-DC (PSG builds on DC's code and evaluates with its
``get_daparam``), ``dsa`` for DSA/DCC/IDC (DCC's released runs are its DSA variant; IDC evaluates with DSA) and
the DM/MTT families, ``none`` for the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .augment import DSA
from .errors import ConfigError
from .registry import Registry

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
DC_OPS = ("crop", "scale", "rotate", "noise")
DIGIT_DATASETS = ("mnist", "digits")  # where DC's evaluation uses crop_scale_rotate (its code: MNIST)
EPOCHS_AUGMENTED, EPOCHS_PLAIN = 1000, 300


@dataclass(frozen=True)
class EvalAugmentation:
    """What one evaluation trains with: the registry ``name``, what it does here (``detail``) and the transform."""

    name: str
    detail: str
    transform: Transform | None = None

    @property
    def active(self) -> bool:
        return self.transform is not None

    @property
    def label(self) -> str:
        """``dc (crop_scale_rotate)``, ``dsa (color_crop_...)`` or ``none``."""
        return self.name if self.detail in ("", self.name) else f"{self.name} ({self.detail})"

    def default_epochs(self) -> int:
        """The field's epoch count: 1,000 when augmenting (DC/DSA protocol), 300 otherwise."""
        return EPOCHS_AUGMENTED if self.active else EPOCHS_PLAIN


EVAL_AUGMENTS: Registry[Callable[[Any, nn.Module], EvalAugmentation]] = Registry("evaluation augmentation")
register_eval_augment = EVAL_AUGMENTS.register


def augment_choices() -> list[str]:
    """Names an evaluation accepts for ``augment``: ``auto`` and every registered augmentation."""
    return ["auto", *EVAL_AUGMENTS.names()]


def check_augment(name: str | None) -> str:
    """Normalise an ``augment`` argument (``None`` means ``none``); unknown names raise listing the choices."""
    key = "none" if name is None else str(name).lower()
    if key != "auto" and key not in EVAL_AUGMENTS:
        raise ConfigError(f"Unknown evaluation augmentation {name!r}: choose one of {', '.join(augment_choices())} "
                          "(auto: the one the summary's paper evaluates with).")
    return key


def auto_augment(summary) -> str:
    """The augmentation the summary's paper evaluates with: its ``eval_augment`` metadata, else its method's."""
    meta = getattr(summary, "meta", {}) or {}
    name = meta.get("eval_augment")
    if name is None and meta.get("method"):  # summaries written before a method declared its augmentation
        from .engine import METHODS

        if meta["method"] in METHODS:
            name = METHODS.get(meta["method"]).eval_augment
    name = "none" if name is None else str(name).lower()
    if name not in EVAL_AUGMENTS:
        raise ConfigError(f"The summary asks for evaluation augmentation {name!r}, which this version does not "
                          f"have: pass augment= one of {', '.join(EVAL_AUGMENTS.names())}.")
    return name


def resolve_augment(name: str, summary, real, net: nn.Module) -> EvalAugmentation:
    """The augmentation ``name`` (or ``auto`` for ``summary``) for training ``net`` on data like ``real``."""
    key = check_augment(name)
    if key == "auto":
        key = auto_augment(summary)
    return EVAL_AUGMENTS.get(key)(real, net)


def has_batchnorm(net: nn.Module) -> bool:
    """Whether ``net`` holds a BatchNorm layer (DC's protocol then adds noise to its crop-scale-rotate)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


# ---------------------------------------------------------------------- registered augmentations
@register_eval_augment("none")
def _none(real, net: nn.Module) -> EvalAugmentation:
    return EvalAugmentation("none", "none", None)


@register_eval_augment("dsa")
def _dsa(real, net: nn.Module) -> EvalAugmentation:
    dsa = DSA.for_dataset(real.flip_invariant)
    return EvalAugmentation("dsa", "_".join(dsa.ops), lambda xb, gg: dsa(xb, gg))


@register_eval_augment("dc")
def _dc(real, net: nn.Module) -> EvalAugmentation:
    if has_batchnorm(net):
        strategy = "crop_noise"
    elif real.name.lower() in DIGIT_DATASETS:
        strategy = "crop_scale_rotate"
    else:
        return EvalAugmentation("dc", "none", None)
    side = min(real.image_shape[1:])
    aug = DCAugment(strategy, crop=DCAugment.crop_for(side))
    return EvalAugmentation("dc", strategy, aug)


# ---------------------------------------------------------------------- DC's augmentation
@dataclass
class DCParams:
    """One draw for a batch of ``N`` images: the op each image gets and that op's parameters."""

    op: torch.Tensor  # (N,) index into DC_OPS
    shift: torch.Tensor  # (N, 2) integer pixels (x, y) for crop
    scale: torch.Tensor  # (N, 2) factors (x, y) for scale
    angle: torch.Tensor  # (N,) radians for rotate
    noise: torch.Tensor | None  # (N, C, H, W) Gaussian noise for noise, None when the strategy has no noise


class DCAugment:
    """DC's evaluation augmentation: one op per image, drawn from ``strategy`` (``crop_scale_rotate`` ...).

    Pixels a shift, shrink or rotation uncovers take the batch's per-channel mean (DC fills crops and rotations
    with it). Geometric ops are one batched bilinear ``grid_sample``; a crop by whole pixels is exact.
    """

    def __init__(self, strategy: str = "crop_scale_rotate", crop: int = 4, scale: float = 0.2,
                 rotate: float = 45.0, noise: float = 0.001) -> None:
        ops = [o for o in strategy.split("_") if o]
        unknown = [o for o in ops if o not in DC_OPS]
        if unknown or not ops:
            raise ConfigError(f"Unknown DC augmentation op(s) {unknown or strategy!r}: choose from "
                              f"{', '.join(DC_OPS)}, joined by '_'.")
        if crop < 0 or not 0 <= scale < 1 or rotate < 0 or noise < 0:
            raise ConfigError(f"DC augmentation needs crop >= 0, 0 <= scale < 1, rotate >= 0 and noise >= 0; got "
                              f"crop={crop}, scale={scale}, rotate={rotate}, noise={noise}.")
        self.ops, self.crop, self.scale, self.rotate, self.noise = ops, int(crop), scale, rotate, noise

    @staticmethod
    def crop_for(side: int) -> int:
        """DC's 4-pixel shift for sides of 28 and more; proportionally fewer (at least 1) on smaller images."""
        return 4 if side >= 28 else max(1, round(4 * side / 32))

    def sample(self, shape: tuple[int, ...], generator: torch.Generator) -> DCParams:
        """Draw this batch's augmentation parameters from ``g`` (one draw per batch, as DC's protocol)."""
        n = shape[0]
        g = generator
        op = torch.tensor([DC_OPS.index(o) for o in self.ops])[torch.randint(len(self.ops), (n,), generator=g)]
        shift = torch.randint(-self.crop, self.crop + 1, (n, 2), generator=g)
        scale = 1 + (torch.rand(n, 2, generator=g) * 2 - 1) * self.scale
        angle = (torch.rand(n, generator=g) * 2 - 1) * self.rotate * math.pi / 180
        noise = torch.randn(tuple(shape), generator=g) * self.noise if "noise" in self.ops else None
        return DCParams(op, shift, scale, angle, noise)

    def apply(self, x: torch.Tensor, p: DCParams) -> torch.Tensor:
        """Augment ``x`` (N, C, H, W) with the draw ``p``; differentiable in ``x``."""
        n, c, h, w = x.shape
        dev, dt = x.device, x.dtype
        op = p.op.to(dev)
        out = x
        geo = (op != DC_OPS.index("noise")).nonzero().flatten()
        if geo.numel():
            theta = self._theta(p, h, w)[geo.cpu()].to(dev, dt)
            fill = x.mean(dim=(0, 2, 3), keepdim=True)
            xs = x[geo] - fill
            grid = F.affine_grid(theta, [geo.numel(), c, h, w], align_corners=False)
            moved = F.grid_sample(xs, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
            out = out.index_copy(0, geo, moved)
        if p.noise is not None:
            on = (op == DC_OPS.index("noise")).to(dt).view(n, 1, 1, 1)
            out = out + on * p.noise.to(dev, dt)
        return out

    @staticmethod
    def _theta(p: DCParams, h: int, w: int) -> torch.Tensor:
        """(N, 2, 3) maps from output to input coordinates (normalised, align_corners=False)."""
        n = p.op.shape[0]
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        crop, scale, rot = (p.op == DC_OPS.index(k) for k in ("crop", "scale", "rotate"))
        # crop: the output pixel (i, j) shows input pixel (i - dy, j - dx)
        theta[crop, 0, 2] = -p.shift[crop, 0].float() * 2 / w
        theta[crop, 1, 2] = -p.shift[crop, 1].float() * 2 / h
        # scale: content stretched by s per axis, about the centre
        theta[scale, 0, 0] = 1 / p.scale[scale, 0]
        theta[scale, 1, 1] = 1 / p.scale[scale, 1]
        # rotate by the angle in pixel space (normalised axes differ by h/w on non-square images)
        cos, sin = torch.cos(p.angle[rot]), torch.sin(p.angle[rot])
        theta[rot, 0, 0], theta[rot, 0, 1] = cos, -sin * h / w
        theta[rot, 1, 0], theta[rot, 1, 1] = sin * w / h, cos
        return theta

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Fresh parameters for this batch (one op and draw per image), applied to the images only."""
        return self.apply(x, self.sample(tuple(x.shape), generator))

    def __repr__(self) -> str:
        return (f"DCAugment(strategy={'_'.join(self.ops)!r}, crop={self.crop}, scale={self.scale}, "
                f"rotate={self.rotate}, noise={self.noise})")
