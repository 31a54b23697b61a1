"""The one supervised training loop: evaluation, inner loops and adapters all train through :func:`fit`.

Targets may be hard class ids, soft-label logits (trained with soft cross-entropy, as TESLA/Sucholutsky) or
regression targets (MSE, as KIP/RFAD/FRePO labels). The field's schedule is built in: SGD with momentum and
weight decay, learning rate x0.1 at half of the epochs; a cosine schedule, any optimiser, and targets computed
per minibatch by a teacher (the soft-label protocol of SRe2L/RDED) are options of the same loop.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .runtime import autocast


def target_loss(logits: torch.Tensor, target: torch.Tensor, label_kind: str = "hard",
                temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy for hard ids, soft cross-entropy for logit targets, MSE for regression targets, and the
    per-label binary cross-entropy for multi-hot ``multilabel`` targets.

    ``temperature`` divides both the student's and the target logits of ``logits`` targets (knowledge
    distillation's temperature; soft cross-entropy equals the KL divergence up to a constant)."""
    logits = logits.float()
    if label_kind == "hard":
        return F.cross_entropy(logits, target)
    if label_kind == "logits":
        t = float(temperature)
        return -(F.softmax(target.float() / t, dim=1) * F.log_softmax(logits / t, dim=1)).sum(1).mean()
    if label_kind == "regression":
        return F.mse_loss(logits, target.float())
    if label_kind == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target.float())
    raise ValueError(f"unknown label kind {label_kind!r}")


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int | None = None, steps: int | None = None,
        lr: float = 0.01, batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 5e-4,
        label_kind: str = "hard", augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        generator: torch.Generator | None = None, decay_at_half: bool = True, amp: bool = True,
        optimizer: torch.optim.Optimizer | None = None, progress: bool = False,
        schedule: str | Sequence[float] | None = None,
        target_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, temperature: float = 1.0,
        shuffle: bool = True) -> nn.Module:
    """Train ``model`` on tensors ``(x, y)`` for ``epochs`` passes or ``steps`` minibatches; returns the model.

    ``x`` may also be an image *source*: any object with ``len(x)``, ``x[idx] -> images`` for a LongTensor of
    indices, and ``x.to(device)`` (e.g. :class:`distill_apps.summary.DecodedImages`, which decodes each minibatch
    of a factorised summary on demand). ``augment(xb, generator)`` is applied to every minibatch (e.g. DSA with a
    fresh draw per image).
    ``schedule``: ``"step"`` (lr x0.1 at half, the field's default), ``"cosine"`` (cosine decay to 0 over the
    run, as SRe2L/RDED's students), ``"none"``, or a sequence of per-step learning rates, one per step (DD's
    learned step sizes); ``None`` follows ``decay_at_half``. ``shuffle=False`` takes the minibatches in order
    (with ``batch_size >= len(x)``: the whole set, as is, every step). ``target_fn(xb)``, when
    given, computes the targets of each (augmented) minibatch instead of reading ``y`` (FKD-style relabelling
    by a teacher); ``temperature`` is passed to :func:`target_loss`.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs or steps")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    dev = next(model.parameters()).device
    x, y = x.detach().to(dev) if torch.is_tensor(x) else x.to(dev), y.detach().to(dev)
    n = len(x)
    bs = min(batch_size, n)
    per_epoch = max(1, -(-n // bs))
    total = steps if steps is not None else epochs * per_epoch
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    per_step = None
    if schedule is not None and not isinstance(schedule, str):
        per_step, schedule = [float(v) for v in schedule], "per-step"
        if len(per_step) != total:
            raise ValueError(f"a per-step schedule needs one learning rate per step: {total} steps, "
                             f"{len(per_step)} rates")
    schedule = schedule or ("step" if decay_at_half else "none")
    if schedule not in ("step", "cosine", "none", "per-step"):
        raise ValueError(f"unknown schedule {schedule!r}: use step, cosine, none or a list of per-step rates")
    base_lrs = [group["lr"] for group in opt.param_groups]
    model.train()
    draw = (lambda: torch.randperm(n, generator=g)) if shuffle else (lambda: torch.arange(n))
    order = draw()
    pos = 0
    it = range(total)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="train", leave=False)
    for step in it:
        if schedule == "step" and step == total // 2 and total > 1:
            for group in opt.param_groups:
                group["lr"] *= 0.1
        elif schedule == "cosine":
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * step / total))
        elif per_step is not None:
            for group in opt.param_groups:
                group["lr"] = per_step[step]
        if pos + bs > n:
            order, pos = draw(), 0
        idx = order[pos:pos + bs].to(dev)
        pos += bs
        xb, yb = x[idx], y[idx]
        if augment is not None:
            xb = augment(xb, g)
        if target_fn is not None:
            yb = target_fn(xb)
        with autocast(dev, amp):
            out = model(xb)
        loss = target_loss(out, yb, label_kind, temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, amp: bool = True) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched (float32)."""
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    for i in range(0, x.shape[0], batch_size):
        with autocast(dev, amp):
            outs.append(model(x[i:i + batch_size].to(dev)).float())
    return torch.cat(outs)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy for class ids ``(N,)``; for multi-hot ``(N, L)`` targets the per-label accuracy at logit 0
    averaged over labels (MedMNIST's multi-label ACC)."""
    out = predict(model, x, batch_size).cpu()
    if y.ndim == 2:
        return float(((out > 0).float() == y.cpu().float()).float().mean())
    return float((out.argmax(1) == y.cpu()).float().mean())
