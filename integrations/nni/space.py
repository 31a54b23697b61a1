"""The model space: the distillation literature's ConvNet as an NNI ``ModelSpace``, and how to sample, key and
build its candidates."""
from __future__ import annotations

import math
from typing import Any, Sequence

import nni
import numpy as np
import torch
from nni.mutable import ensure_frozen
from nni.nas.nn.pytorch import LayerChoice, ModelSpace
from nni.nas.space import model_context
from torch import nn

from distill_apps import RealData
from distill_apps.errors import ConfigError
from distill_apps.nets.convnet import make_act, make_norm
from distill_apps.runtime import seeded_global_rng

__all__ = ["ConvNetSpace", "space_choices", "arch_key", "sample_architectures", "build_candidate", "reinit_"]


class ConvNetSpace(ModelSpace):
    """The ConvNet of the distillation literature as an NNI model space.

    Blocks of conv3x3(width) -> norm -> act -> pool, then a linear classifier. ``depth``, ``width`` and
    ``pool`` are ``nni.choice`` values (they change shapes, so they are frozen with ``ensure_frozen``);
    ``norm`` and ``act`` are ``LayerChoice``s whose label is shared by every block (one decision each).
    A sample is a dict ``{depth, width, pool, norm, act}``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: Sequence[int],
                 depths: Sequence[int] = (1, 2, 3), widths: Sequence[int] = (16, 32, 64),
                 norms: Sequence[str] = ("instance", "batch", "none"),
                 acts: Sequence[str] = ("relu", "leakyrelu", "sigmoid", "gelu"),
                 pools: Sequence[str] = ("avg", "max")) -> None:
        """A space over the field's ConvNet: depth, width and pooling as ``nni.choice`` (frozen, they change shapes),
        normalisation and activation as shared-label ``LayerChoice``s."""
        super().__init__()
        for name, vals in (("depths", depths), ("widths", widths), ("norms", norms), ("acts", acts),
                           ("pools", pools)):
            if len(vals) == 0:
                raise ConfigError(f"ConvNetSpace needs at least one value for {name}.")
        depth = ensure_frozen(self.add_mutable(nni.choice("depth", list(depths))))
        width = ensure_frozen(self.add_mutable(nni.choice("width", list(widths))))
        pool = ensure_frozen(self.add_mutable(nni.choice("pool", list(pools))))
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(depth):
            layers.append(nn.Conv2d(c, width, 3, padding=1))
            layers.append(LayerChoice({n: make_norm(n, width, (h, w)) for n in norms}, label="norm"))
            layers.append(LayerChoice({a: make_act(a) for a in acts}, label="act"))
            c = width
            if pool != "none" and min(h, w) >= 2:  # never pool a 1x1 map away (8x8 digits at depth 4)
                layers.append(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    @classmethod
    def for_data(cls, real: RealData, **choices) -> "ConvNetSpace":
        """The space for ``real``'s image shape and class count."""
        c, h, w = real.image_shape
        return cls(c, real.num_classes, (h, w), **choices)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.classifier(self.embed(x))


def space_choices(space: ModelSpace) -> dict[str, list[Any]]:
    """``{label: candidate values}`` of every decision in ``space`` (NNI's ``simplify()``)."""
    return {label: list(m.values) for label, m in space.simplify().items()}


def arch_key(sample: dict[str, Any]) -> str:
    """A stable short name of an architecture sample, e.g. ``act=relu,depth=2,norm=batch,pool=avg,width=32``."""
    return ",".join(f"{k}={sample[k]}" for k in sorted(sample))


def sample_architectures(space: ModelSpace, k: int, seed: int = 0) -> list[dict[str, Any]]:
    """``k`` distinct uniform samples of ``space`` (all of it when it holds fewer), in a seeded order."""
    choices = space_choices(space)
    total = math.prod(len(v) for v in choices.values())
    if k < 1:
        raise ConfigError(f"k must be >= 1; got {k}.")
    k = min(k, total)
    rng = np.random.default_rng(seed)
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < k:
        s = {label: vals[int(rng.integers(len(vals)))] for label, vals in choices.items()}
        seen.setdefault(arch_key(s), s)
    return list(seen.values())


def build_candidate(space: ModelSpace, sample: dict[str, Any], g: torch.Generator,
                    device: torch.device | str = "cpu") -> nn.Module:
    """The concrete network of ``sample`` with initial weights drawn from ``g`` (global RNG untouched)."""
    with seeded_global_rng(g), model_context(sample):
        # what NNI's SimplifiedModelSpace.executable_model() does: re-run the space's __init__ with the sample
        return space.trace_copy().get(traceable=False).to(device)


def reinit_(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Re-draw every parameter of ``model`` from ``g`` (NNI builds candidates with the global RNG)."""
    with seeded_global_rng(g):
        for m in model.modules():
            if m is not model and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return model
