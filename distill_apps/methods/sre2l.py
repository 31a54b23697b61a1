"""SRe2L: Squeeze, Recover and Relabel (Yin, Xing & Shen, NeurIPS 2023, "Squeeze, Recover and Relabel: Dataset
Condensation at ImageNet Scale From A New Perspective").

*Squeeze*: a teacher with BatchNorm is trained on the real data (:mod:`distill_apps.teachers`). *Recover*:
synthetic images start from Gaussian noise and are optimised so that, at every BatchNorm layer of the frozen
teacher, the mean and variance of the synthetic batch's inputs match the layer's running statistics
(``||mu_l(x) - mu_l||_2 + ||sigma^2_l(x) - sigma^2_l||_2``, the first layer weighted ``first_bn_multiplier``)
while the teacher classifies each image as its target class (cross-entropy), seen through a random-resized
crop and flip (flip only on flip-invariant data) and a random roll (jitter) every iteration. Adam (betas 0.5,
0.9), cosine-decayed learning rate, pixels clipped to the valid range after each step (as the paper's code).
As in the paper, the statistics are those of one batch holding ``ipc_per_batch`` image(s) of every class;
the ``ipc / ipc_per_batch`` batches share one forward pass but keep separate statistics. *Relabel*: the
teacher's logits are the soft labels; ``protocol="softlabel"`` relabels every augmented batch (FKD).

A teacher without BatchNorm layers has no statistics to match and is refused.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..crops import jitter, resized_crops
from ..engine import DistillState, register_method
from ..errors import ConfigError
from ..parameterisation import pixel_state
from ..teachers import has_batchnorm
from .teacher_based import TeacherMethod, TeacherOptions


@dataclass
class SRe2LConfig(TeacherOptions):
    """Options of SRe2L (Yin, Xing & Shen, NeurIPS 2023): recovery rate, BN weight, crops, jitter, batches."""
    steps: int = 1000  # recovery iterations (paper: 1000)
    quick_steps: int = 200
    lr_img: float = 0.25  # Adam on the pixels (paper's CIFAR setting)
    r_bn: float = 0.01  # weight of the BatchNorm-statistics loss (paper's CIFAR setting)
    first_bn_multiplier: float = 10.0
    jitter: int = field(default=4, metadata={"min": 0})  # random roll in pixels (paper's CIFAR setting)
    crop: bool = True  # random-resized crop of the synthetic batch every iteration
    crop_min_scale: float = 0.5  # smallest crop area fraction (torchvision's default 0.08 is for 224 px)
    ipc_per_batch: int = 1  # images of each class in one statistics batch (paper: 1)


@contextlib.contextmanager
def bn_statistics(model: nn.Module, groups: int):
    """Collect, at every BatchNorm layer of ``model``, ``(mean, var, running_mean, running_var)`` of its input,
    the batch split into ``groups`` equal consecutive groups (statistics per group: ``(G, C)``)."""
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def hook(mod, inputs, _out):
        x = inputs[0].float()
        xs = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
        dims = [1] + list(range(3, xs.ndim))  # batch (within the group) and spatial dims
        mean = xs.mean(dims)
        var = (xs - mean.view(groups, 1, -1, *([1] * (xs.ndim - 3)))).pow(2).mean(dims)
        found.append((mean, var, mod.running_mean.float(), mod.running_var.float()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def bn_matching_loss(stats, first_multiplier: float = 10.0) -> torch.Tensor:
    """SRe2L's R_BN summed over groups: ``sum_l w_l (||mu_l - mu_l^run||_2 + ||var_l - var_l^run||_2)``."""
    total = 0.0
    for i, (mean, var, rm, rv) in enumerate(stats):
        w = first_multiplier if i == 0 else 1.0
        total = total + w * ((mean - rm).norm(dim=1) + (var - rv).norm(dim=1)).sum()
    return total


@register_method("sre2l")
class SRe2L(TeacherMethod):
    """SRe2L (Yin, Xing & Shen, NeurIPS 2023): noise recovered to match a BN teacher's statistics, relabelled."""
    paper = "Yin, Xing & Shen, NeurIPS 2023, Squeeze, Recover and Relabel (SRe2L)"
    Config = SRe2LConfig

    def init(self, g: torch.Generator) -> DistillState:
        """The BN teacher, noise images within the valid pixel range, Adam (betas 0.5, 0.9) on them."""
        cfg = self.cfg
        if self.ipc % cfg.ipc_per_batch:
            raise ConfigError(f"sre2l: ipc ({self.ipc}) must be a multiple of ipc_per_batch ({cfg.ipc_per_batch}).")
        self._check_architecture()
        t = self.load_teacher()
        if not t.has_batchnorm():
            raise ConfigError(self._no_bn_message(t.meta.get("model")))
        state = pixel_state(self, g, "noise")
        state.optimizers["syn"] = torch.optim.Adam([state.params["x"]], lr=cfg.lr_img, betas=(0.5, 0.9), eps=1e-8)
        mean = torch.tensor(self.real.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.real.std, device=self.device).view(1, -1, 1, 1)
        self._lo, self._hi = (0 - mean) / std, (1 - mean) / std
        with torch.no_grad():
            state.params["x"].clamp_(self._lo, self._hi)
        return state

    def _check_architecture(self) -> None:
        """Refuse a teacher architecture without BatchNorm before spending time training it."""
        if self.cfg.teacher:
            return
        from ..nets import build_model

        r = self.real
        net = build_model(self.cfg.teacher_model, r.image_shape[0], r.num_classes, r.image_shape[1:])
        if not has_batchnorm(net):
            raise ConfigError(self._no_bn_message(self.cfg.teacher_model))

    @staticmethod
    def _no_bn_message(model: str | None) -> str:
        return (f"sre2l matches the BatchNorm statistics of its teacher, and the teacher model {model!r} has no "
                "BatchNorm layer. Use a BatchNorm teacher: --set teacher_model=convnet-bn (or resnet18-bn), or "
                "--set teacher=PATH to a teacher trained with `distill-apps teacher --model convnet-bn`.")

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One recovery iteration: cross-entropy plus BN statistics on an augmented batch, cosine lr, clipping."""
        cfg, x = self.cfg, state.params["x"]
        total = self.total_steps or cfg.steps
        lr = cfg.lr_img * 0.5 * (1 + math.cos(math.pi * state.step / max(1, total)))
        for group in state.optimizers["syn"].param_groups:
            group["lr"] = lr
        k, ipb = len(self.classes), cfg.ipc_per_batch
        n_groups = self.ipc // ipb
        cls = torch.tensor(self.classes, device=x.device)
        # (classes, ipc, ...) -> groups of ipb images of every class of this rank: (n_groups * k * ipb, ...)
        xs = x.view(self.real.num_classes, self.ipc, *x.shape[1:])[cls]
        xs = xs.view(k, n_groups, ipb, *x.shape[1:]).transpose(0, 1).reshape(-1, *x.shape[1:])
        ys = cls.view(1, k, 1).expand(n_groups, k, ipb).reshape(-1)
        if cfg.crop:
            xs = resized_crops(xs, g, scale=(cfg.crop_min_scale, 1.0), flip=self.real.flip_invariant)
        xs = jitter(xs, g, cfg.jitter)
        with bn_statistics(self.teacher.model, n_groups) as stats, self.autocast():
            out = self.teacher.model(xs)
        ce = F.cross_entropy(out.float(), ys, reduction="sum") / (k * ipb)  # sum over groups of per-group means
        bn = bn_matching_loss(stats, cfg.first_bn_multiplier)
        loss = ce + cfg.r_bn * bn
        self.update(state, loss)
        with torch.no_grad():
            x.clamp_(self._lo, self._hi)
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), "bn": float(bn.detach())}

    def export(self, state: DistillState):
        """The recovered images with the teacher's soft labels."""
        return self.relabelled(state, state.params["x"], state.buffers["y"])
