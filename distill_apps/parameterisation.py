"""Image tensors, the plain parameterisation of a synthetic set: one learnable image per (class, slot), class-major.

Plain functions that methods compose (rather than base-class helpers they override): :func:`draw_real` (real
images of every class, all ranks agreeing), :func:`init_pixels` (those images, or Gaussian noise of their shape),
:func:`pixel_state` (the usual start of an image method: learnable pixels and their SGD optimiser) and
:func:`training_targets` (what the synthetic images are trained to predict). The other parameterisations live with
their methods: factorised bases (:class:`~distill_apps.methods.factorized.Factorised`), IDC's multi-formation
(:mod:`~distill_apps.methods.gradient_variants`) and generator latents (:mod:`~distill_apps.methods.generative`);
each exports through :meth:`~distill_apps.engine.Distiller.synthetic`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .data import RealData
    from .engine import Distiller, DistillState

INITS = ("real", "noise")


def draw_real(real: "RealData", k: int, g: torch.Generator, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``k`` random real images of every class, class-major, on ``device``: ``(x, class ids, label rows)``.

    The label rows are ``real``'s labels of the drawn images (multi-hot rows for multi-label data, else the class
    ids). Every rank draws all classes from the same generator, so all ranks agree.
    """
    idx = real.sample_balanced(k, g)
    y = torch.arange(real.num_classes).repeat_interleave(k)  # == y_train[idx] for single-label data
    return real.images(idx, device=device), y.to(device), real.labels(idx, device=device).clone()


def init_pixels(real: "RealData", k: int, g: torch.Generator, device: torch.device, init: str = "real",
                who: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Initial synthetic images, as :func:`draw_real` returns them: the real images (``init="real"``) or Gaussian
    noise of their shape drawn after them (``init="noise"``), so both starts consume the same real draw."""
    if init not in INITS:
        raise ConfigError(f"{who + ': ' if who else ''}init must be 'real' or 'noise'; got {init!r}.")
    x, y, rows = draw_real(real, k, g, device)
    if init == "noise":
        x = torch.randn(x.shape, generator=g).to(x)
    return x, y, rows


def pixel_state(d: "Distiller", g: torch.Generator, init: str = "real", lr: float | None = None,
                momentum: float | None = None) -> "DistillState":
    """The usual start of an image method: ``d.ipc`` learnable images per class (:func:`init_pixels`) in
    ``params["x"]``, class ids in ``buffers["y"]`` (and multi-hot rows in ``buffers["multi_hot"]`` for multi-label
    data), and an SGD optimiser ``"syn"`` at ``lr``/``momentum`` (default ``cfg.lr_img``/``cfg.momentum_img``)."""
    from .engine import DistillState

    x, y, rows = init_pixels(d.real, d.ipc, g, d.device, init, d.name)
    x.requires_grad_(True)
    lr = d.cfg.lr_img if lr is None else lr
    momentum = getattr(d.cfg, "momentum_img", 0.5) if momentum is None else momentum
    opt = torch.optim.SGD([x], lr=lr, momentum=momentum)
    buffers = {"y": y, "multi_hot": rows.float()} if d.real.multilabel else {"y": y}
    return DistillState(params={"x": x}, optimizers={"syn": opt}, buffers=buffers)


def training_targets(state: "DistillState") -> torch.Tensor:
    """What the synthetic images are trained to predict: learned labels (``params["soft"]``, TESLA), else the
    multi-hot rows of multi-label data, else the class ids."""
    if "soft" in state.params:
        return state.params["soft"]
    return state.buffers.get("multi_hot", state.buffers["y"])
