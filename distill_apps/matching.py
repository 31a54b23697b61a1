"""Matching objectives shared by the gradient- and distribution-matching families.

``gradient_distance`` is DC's layer-wise distance (Zhao et al., ICLR 2021, Eq. 10): for every weight tensor the
gradient is viewed as (out_channels, -1) and the per-output-channel cosine distances ``1 - cos`` are summed;
1-D tensors (biases, norm scales) are left out, as in the paper. ``mse`` and ``cos`` (whole-vector) variants are
the paper's ablations.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


def gradient_distance(gs: Sequence[torch.Tensor], gr: Sequence[torch.Tensor], metric: str = "ours") -> torch.Tensor:
    """Distance between synthetic gradients ``gs`` and real gradients ``gr`` (lists over parameters)."""
    total = gs[0].new_zeros(())
    if metric == "ours":
        for a, b in zip(gs, gr):
            if a.ndim == 1:
                continue
            a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
            total = total + (1 - F.cosine_similarity(a2, b2, dim=1, eps=1e-6)).sum()
        return total
    a = torch.cat([x.flatten() for x in gs])
    b = torch.cat([x.flatten() for x in gr])
    if metric == "mse":
        return ((a - b) ** 2).sum()
    if metric == "l1":  # IDC's released code also offers the L1 distance
        return (a - b).abs().sum()
    if metric == "cos":
        return 1 - F.cosine_similarity(a, b, dim=0, eps=1e-6)
    raise ConfigError(f"Unknown gradient distance {metric!r}: use ours, mse, l1 or cos.")


def loss_gradients(net: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool, amp_ctx,
                   label_kind: str = "hard") -> list[torch.Tensor]:
    """Gradients of the training loss of ``net`` on ``(x, y)`` w.r.t. its parameters (float32)."""
    from .train import target_loss

    params = [p for p in net.parameters() if p.requires_grad]
    with amp_ctx:
        out = net(x)
    loss = target_loss(out, y, label_kind)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return [gr if create_graph else gr.detach() for gr in grads]


def mean_embedding_distance(er: torch.Tensor, es: torch.Tensor) -> torch.Tensor:
    """DM's loss: squared distance between per-class mean embeddings; ``er`` (K, B, d), ``es`` (K, S, d)."""
    return ((er.mean(1) - es.mean(1)) ** 2).sum()
