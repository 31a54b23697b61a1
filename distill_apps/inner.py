"""Functional unrolled training (``torch.func.functional_call``), shared by DD, MTT, TESLA, FRePO and HaBa.

A network is turned into a pure function of a flat parameter dict, so an inner training run on the synthetic
set is a chain of ``params <- params - lr * grad`` that autograd can differentiate through (DD's truncated
BPTT, MTT's trajectory matching) or that a method can differentiate step by step (TESLA).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from .train import target_loss

Params = dict[str, torch.Tensor]


def functional(net: nn.Module) -> tuple[Callable[[Params, torch.Tensor], torch.Tensor], Params]:
    """``(f, params)`` with ``f(params, x) == net(x)``; ``params`` are detached copies of the weights."""
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())

    def f(p: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(net, {**p, **buffers}, (x,))

    return f, params


def flatten(params: Params) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in params.values()])


def unflatten(flat: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = flat[i:i + v.numel()].view_as(v)
        i += v.numel()
    return out


def sgd_step(f, params: Params, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor | float,
             label_kind: str = "hard", create_graph: bool = True, shard: tuple[int, int] = (0, 1)) -> Params:
    """One differentiable SGD step of ``f`` on ``(x, y)``.

    ``shard=(rank, world)`` splits the minibatch across the ranks of a process group: each rank takes every
    ``world``-th example, its gradient is weighted by its share of the batch and summed over ranks with the
    differentiable all-reduce of ``torch.distributed.nn``. The step equals the unsharded one for networks
    without cross-example statistics (instance/no norm), and back-propagation through it stays exact.
    """
    rank, world = shard
    if world > 1:
        n = x.shape[0]
        x, y = x[rank::world], y[rank::world]
    loss = target_loss(f(params, x), y, label_kind)
    if world > 1:
        loss = loss * (x.shape[0] / n)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    if world > 1:
        from torch.distributed.nn.functional import all_reduce

        grads = [all_reduce(gr) for gr in grads]
    return {k: v - lr * gr for (k, v), gr in zip(params.items(), grads)}


def unroll(f, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr, batch_size: int,
           g: torch.Generator, label_kind: str = "hard", create_graph: bool = True,
           lrs: torch.Tensor | None = None) -> Params:
    """``steps`` differentiable SGD steps on minibatches of ``(x, y)`` drawn from ``g``.

    ``lrs`` (one learnable step size per step, as in DD) overrides ``lr`` when given.
    """
    n = x.shape[0]
    bs = min(batch_size, n)
    order, pos = torch.randperm(n, generator=g), 0
    for t in range(steps):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + bs].to(x.device)
        pos += bs
        params = sgd_step(f, params, x[idx], y[idx], lrs[t] if lrs is not None else lr, label_kind, create_graph)
    return params


def momentum_unroll(f, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr, momentum: float,
                    batch_size: int, g: torch.Generator, label_kind: str = "hard",
                    create_graph: bool = True) -> Params:
    """``steps`` differentiable SGD-with-momentum steps (``v <- mu v + grad``, ``p <- p - lr v``) on minibatches.

    Deng & Russakovsky (2022) argue that back-propagating through long unrolls of a *momentum* inner optimiser
    is what makes BPTT distillation (LinBa) work; this is that inner loop, differentiable end to end.
    """
    n = x.shape[0]
    bs = min(batch_size, n)
    order, pos = torch.randperm(n, generator=g), 0
    vel = {k: torch.zeros_like(v) for k, v in params.items()}
    for _ in range(steps):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + bs].to(x.device)
        pos += bs
        loss = target_loss(f(params, x[idx]), y[idx], label_kind)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        vel = {k: momentum * vel[k] + gr for k, gr in zip(params, grads)}
        params = {k: v - lr * vel[k] for k, v in params.items()}
    return params
