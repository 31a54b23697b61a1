"""Functional unrolled training: the ONE differentiable inner loop of DD, LinBa, HaBa, MTT, TESLA (and text DD).

A network is turned into a pure function of a flat parameter dict (``torch.func.functional_call``), so an inner
training run on the synthetic set is a chain of SGD(-momentum) steps ``theta <- theta - lr * g`` that can be
differentiated with respect to everything the steps read: the synthetic images (or the decoded images of a
factorised summary, and through them its bases/decoders), soft labels, learned step sizes, and the start
parameters. :func:`unroll` offers three ways to get that gradient, all equal up to rounding:

* ``memory="autograd"`` -- keep the whole unroll's graph (second-order, ``create_graph=True``); memory grows
  linearly with the number of steps (Wang et al. 2018's BPTT, MTT's unroll).
* ``memory="adjoint"`` -- exact reverse mode by recomputation, one step's graph at a time. The forward pass runs
  without a graph and keeps one parameter (and velocity) snapshot per step; the backward pass walks the steps in
  reverse, rebuilds step ``t``'s graph from its snapshot and back-propagates the incoming adjoint
  ``lam_{t+1} = dL/dtheta_{t+1}`` through it (``lam_t = lam_{t+1} - lr H_t lam_{t+1}`` plus the terms into the
  leaves). Activation memory is one step's, whatever the unroll length; the snapshots cost one parameter vector
  per step. This generalises the per-step recomputation of TESLA (Cui et al., ICML 2023) to any leaves and to
  momentum. With ``exact=False`` the Hessian terms are dropped (``lam_t = lam_{t+1}``): TESLA's decomposition.
* ``memory="checkpoint"`` -- gradient checkpointing per chunk of ``chunk`` steps: snapshots only at chunk starts,
  one chunk's graph rebuilt at a time. ``chunk=1`` is the adjoint. (``torch.utils.checkpoint`` does not free the
  double-backward graph that the inner ``autograd.grad(create_graph=True)`` builds -- measured: its memory grew
  from 1.33 to 2.09 GB between 4 and 8 steps, like plain autograd -- so the chunks are recomputed here.)

The recomputing modes are a ``torch.autograd.Function``: :func:`unroll` returns parameters with an ordinary
``grad_fn``, the method computes any outer loss from them and calls ``backward()`` as usual, and gradients reach
whatever produced the leaves (a decoder, ``log_lr.exp()``). Steps must be deterministic given their inputs (the
minibatch indices and DSA draws are drawn up front in an :class:`UnrollPlan`); networks with batch statistics
still recompute exactly in train mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call

from .errors import ConfigError
from .memory import check_memory
from .train import target_loss

Params = dict[str, torch.Tensor]
MEMORY_MODES = ("autograd", "checkpoint", "adjoint")


def functional(net: nn.Module) -> tuple[Callable[[Params, torch.Tensor], torch.Tensor], Params]:
    """``(f, params)`` with ``f(params, x) == net(x)``; ``params`` are detached copies of the weights."""
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())

    def f(p: Params, x: torch.Tensor) -> torch.Tensor:
        """Run the network with the given parameters (and its own buffers)."""
        return functional_call(net, {**p, **buffers}, (x,))

    return f, params


def flatten(params: Params) -> torch.Tensor:
    """All parameters concatenated into one flat vector."""
    return torch.cat([v.reshape(-1) for v in params.values()])


def unflatten(flat: torch.Tensor, like: Params) -> Params:
    """Split a flat vector back into tensors shaped like ``like`` (views, no copies)."""
    out, i = {}, 0
    for k, v in like.items():
        out[k] = flat[i:i + v.numel()].view_as(v)
        i += v.numel()
    return out


@dataclass
class UnrollPlan:
    """The minibatch indices (and DSA draws) of every inner step, drawn once so that passes can replay them.

    Drawing consumes the generator exactly as the old lazy loops did: a ``randperm`` at the start and whenever
    the next minibatch would run past the end, then (with DSA) one draw per image per step.
    """

    indices: list[torch.Tensor]
    aug: list[Any]

    @classmethod
    def draw(cls, n: int, steps: int, batch: int, g: torch.Generator, dsa=None,
             image_size: tuple[int, int] | None = None) -> "UnrollPlan":
        """Draw every step's minibatch (epochs of random permutations) and DSA parameters up front, so a recomputed
        unroll sees the same batches."""
        bs = min(batch, n) if batch > 0 else n
        order, pos, idx, aug = torch.randperm(n, generator=g), 0, [], []
        for _ in range(steps):
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx.append(order[pos:pos + bs])
            pos += bs
            aug.append(dsa.sample(bs, g, image_size) if dsa is not None else None)  # one draw per image
        return cls(idx, aug)

    def __len__(self) -> int:
        """Number of unrolled steps."""
        return len(self.indices)

    def batch(self, i: int, x: torch.Tensor, y: torch.Tensor, dsa=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``i``'s minibatch of ``(x, y)``, augmented with its DSA parameters when given."""
        idx = self.indices[i].to(x.device)
        xb = x[idx]
        if dsa is not None and self.aug[i] is not None:
            xb = dsa.apply(xb, self.aug[i], torch.arange(len(idx)))
        return xb, y[idx]


def sgd_step(f, params: Params, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor | float,
             label_kind: str = "hard", create_graph: bool = True, shard: tuple[int, int] = (0, 1)) -> Params:
    """One differentiable SGD step of ``f`` on ``(x, y)``.

    ``shard=(rank, world)`` splits the minibatch across the ranks of a process group: each rank takes every
    ``world``-th example, its gradient is weighted by its share of the batch and summed over ranks with the
    differentiable all-reduce of ``torch.distributed.nn``. The step equals the unsharded one for networks
    without cross-example statistics (instance/no norm), and back-propagation through it stays exact.
    """
    grads = _grads(f, params, x, y, label_kind, create_graph, shard)
    return {k: v - lr * gr for (k, v), gr in zip(params.items(), grads)}


def _grads(f, params: Params, x, y, label_kind: str, create_graph: bool, shard: tuple[int, int]):
    """Gradients of the training loss of ``f`` on ``(x, y)``; with ``shard=(rank, world)`` each rank takes its share of
    the rows."""
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
    return grads


@dataclass
class _Spec:
    """Everything about an unroll that is not a tensor the gradient flows to."""

    f: Callable
    names: list[str]
    plan: UnrollPlan
    dsa: Any
    label_kind: str
    momentum: float
    shard: tuple[int, int]
    per_step_lr: bool
    micro: int = 0  # examples per micro-batch in the recomputing modes (0: the whole minibatch)

    def lr(self, lr: torch.Tensor, t: int) -> torch.Tensor:
        """Step size at step ``t`` (per-step learned rates, or one rate)."""
        return lr[t] if self.per_step_lr else lr

    def step(self, t: int, theta: list, vel: list | None, x, y, lr, create_graph: bool
             ) -> tuple[list, list | None]:
        """Inner step ``t`` from ``(theta, vel)``. The arithmetic is the old ``sgd_step``/``momentum_unroll``'s,
        so ``memory="autograd"`` reproduces their results bit for bit."""
        xb, yb = self.plan.batch(t, x, y, self.dsa)
        g = _grads(self.f, dict(zip(self.names, theta)), xb, yb, self.label_kind, create_graph, self.shard)
        return self.update(t, theta, vel, g, lr)

    def update(self, t: int, theta: list, vel: list | None, g: list, lr) -> tuple[list, list | None]:
        """One SGD (or momentum SGD) update of ``theta`` with gradients ``g``."""
        lr_t = self.lr(lr, t)
        if vel is None:
            return [p - lr_t * gr for p, gr in zip(theta, g)], None
        vel = [self.momentum * v + gr for v, gr in zip(vel, g)]
        return [p - lr_t * v for p, v in zip(theta, vel)], vel

    def pieces(self, n: int) -> list[tuple[int, int, float]]:
        """``(start, stop, weight)`` of the micro-batches of an ``n``-example minibatch; the losses are means, so
        the minibatch gradient is the weighted sum of the micro-batch gradients."""
        if self.micro <= 0 or self.micro >= n:
            return [(0, n, 1.0)]
        return [(a, min(a + self.micro, n), (min(a + self.micro, n) - a) / n) for a in range(0, n, self.micro)]

    def grad_value(self, t: int, theta: list, x, y) -> list[torch.Tensor]:
        """Step ``t``'s minibatch gradient at ``theta`` without a graph, one micro-batch at a time."""
        xb, yb = self.plan.batch(t, x, y, self.dsa)
        total = None
        for a, b, w in self.pieces(xb.shape[0]):
            g = _grads(self.f, dict(zip(self.names, [_leaf(p) for p in theta])), xb[a:b], yb[a:b],
                       self.label_kind, False, self.shard)
            total = g if w == 1.0 else [w * gr for gr in g] if total is None else \
                [acc + w * gr for acc, gr in zip(total, g)]
        return [gr.detach() for gr in total]

    def update_(self, t: int, theta: list, vel: list | None, g: list, lr) -> None:
        """:meth:`update` in place (the same arithmetic): no allocation survives the step, so a long unroll does
        not fragment the allocator's heap."""
        lr_t = self.lr(lr, t)
        if vel is not None:
            for v, gr in zip(vel, g):
                v.mul_(self.momentum).add_(gr)
        for p, d in zip(theta, vel if vel is not None else g):
            p.sub_(lr_t * d)

    def step_vjp(self, t: int, theta: list, vel: list | None, x, y, lr, buf: dict[str, list], exact: bool
                 ) -> torch.Tensor:
        """Back-propagate the adjoint ``buf["lam"]``/``buf["lam_v"]`` of step ``t``'s outputs to its inputs (in
        place), rebuilding one micro-batch's graph at a time; the leaves' gradients are added to ``buf["x"]`` /
        ``buf["y"]``. ``theta``/``vel`` are the step's (detached) inputs; ``x``/``y`` the leaves (requiring grad
        where a gradient is wanted). Returns ``d loss / d lr_t``.

        With ``theta' = theta - lr v'``, ``v' = mu v + g`` (``v' = g`` without momentum) the cotangent of ``g`` is
        ``u = lam_v - lr lam``; then ``lam_theta = lam + J_g^T u`` (TESLA, ``exact=False``: ``lam``),
        ``lam_vel = mu u``, ``d lr = -lam . v'`` and the leaves get ``J_g^T u``. Every buffer is allocated once
        per backward and updated in place, so nothing allocated during a step outlives it (no heap growth).
        """
        lam, lam_v, u, hvp, g_val = buf["lam"], buf["lam_v"], buf["u"], buf["hvp"], buf["g"]
        lr_t = self.lr(lr, t).detach()
        for uk, lm, lv in zip(u, lam, lam_v or [None] * len(u)):
            torch.mul(lm, -lr_t, out=uk)
            if vel is not None:
                uk.add_(lv)
        for acc in hvp + g_val:
            acc.zero_()
        th = [_leaf(p) for p in theta]
        wrt = [k for k, v in (("x", x), ("y", y)) if v.requires_grad]
        leaves = [x if k == "x" else y for k in wrt]
        xb, yb = self.plan.batch(t, x, y, self.dsa)
        parts = self.pieces(xb.shape[0])
        for i, (a, b, w) in enumerate(parts):
            g = _grads(self.f, dict(zip(self.names, th)), xb[a:b], yb[a:b], self.label_kind, True, self.shard)
            for acc, gr in zip(g_val, g):
                acc.add_(gr.detach(), alpha=w)
            inputs = leaves + (th if exact else [])
            if inputs:
                s = sum((uk * gk).sum() for uk, gk in zip(u, g)) * w
                res = torch.autograd.grad(s, inputs, allow_unused=True, retain_graph=i < len(parts) - 1)
                for k, r in zip(wrt, res):
                    if r is not None:
                        buf[k].add_(r)
                for acc, r in zip(hvp, res[len(wrt):]):
                    if r is not None:
                        acc.add_(r)
                del s, res
            del g
        del xb, yb, th
        if vel is not None:
            d_lr = -sum((lm * (self.momentum * v + gr)).sum() for lm, v, gr in zip(lam, vel, g_val))
        else:
            d_lr = -sum((lm * gr).sum() for lm, gr in zip(lam, g_val))
        if exact:
            for lm, h in zip(lam, hvp):
                lm.add_(h)
        for lv, uk in zip(lam_v, u):
            lv.copy_(uk).mul_(self.momentum)
        return d_lr


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """A detached copy of ``t`` that requires grad."""
    return t.detach().requires_grad_(True)


class _RecomputedUnroll(torch.autograd.Function):
    """``theta_N = unroll(theta_0; x, y, lr)`` whose backward recomputes one chunk of steps at a time."""

    @staticmethod
    def forward(ctx, spec: _Spec, chunk: int, exact: bool, x, y, lr, *theta0):
        """Run the unroll without a graph, keeping a snapshot every ``chunk`` steps."""
        steps = len(spec.plan)
        dev = x.device.type
        ctx.amp = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        theta = [p.detach().clone() for p in theta0]  # updated in place: no per-step allocation outlives its step
        vel = [torch.zeros_like(p) for p in theta] if spec.momentum else None
        xd, yd, lrd = x.detach(), y.detach(), lr.detach()
        store = _Snapshots(theta, -(-steps // chunk), vel is not None)
        with torch.enable_grad():
            for t in range(steps):
                if t % chunk == 0:
                    store.put(t // chunk, theta, vel)
                spec.update_(t, theta, vel, spec.grad_value(t, theta, xd, yd), lrd)
                torch.clear_autocast_cache()  # each step's parameter leaves: their bf16 casts must not pile up
                check_memory(f"unroll step {t}")
        ctx.spec, ctx.chunk, ctx.exact, ctx.store = spec, chunk, exact, store
        ctx.save_for_backward(x, y, lr)
        return tuple(theta)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *lam):
        """Backpropagate through the unroll step by step (reverse-mode adjoint), recomputing each chunk from its
        snapshot; memory flat in the unroll length."""
        spec, chunk, exact, store = ctx.spec, ctx.chunk, ctx.exact, ctx.store
        x, y, lr = ctx.saved_tensors
        steps = len(spec.plan)
        like = store.get(0)[0]
        lam = [torch.zeros_like(s) if g is None else g.clone() for g, s in zip(lam, like)]
        lam_v = [torch.zeros_like(s) for s in like] if spec.momentum else []
        needs = ctx.needs_input_grad  # (spec, chunk, exact, x, y, lr, *theta0)
        dev, amp_on, amp_dtype = ctx.amp
        gx = gy = glr = None
        if chunk == 1:  # the adjoint's buffers, allocated once and updated in place
            buf = {"lam": lam, "lam_v": lam_v, "u": [torch.empty_like(s) for s in like],
                   "hvp": [torch.zeros_like(s) for s in like] if exact else [], "g": [torch.empty_like(s) for s in like]}
            gx = buf["x"] = torch.zeros_like(x) if needs[3] else None
            gy = buf["y"] = torch.zeros_like(y) if needs[4] else None
        with torch.enable_grad(), torch.autocast(dev, dtype=amp_dtype, enabled=amp_on):
            xl = _leaf(x) if needs[3] else x.detach()
            yl = _leaf(y) if needs[4] else y.detach()
            lrl = _leaf(lr) if needs[5] else lr.detach()
            if needs[5]:
                glr = torch.zeros_like(lr)
            for c in reversed(range(store.n)):
                torch.clear_autocast_cache()  # the previous chunk's casts (see forward)
                check_memory(f"backward unroll step {c * chunk}")
                theta0, vel0 = store.get(c)
                t0, t1 = c * chunk, min((c + 1) * chunk, steps)
                if chunk == 1:  # the adjoint: one step (one micro-batch) at a time, VJP written out
                    d_lr = spec.step_vjp(t0, theta0, vel0, xl, yl, lrl, buf, exact)
                    if glr is not None:
                        if spec.per_step_lr:
                            glr[t0] += d_lr
                        else:
                            glr += d_lr
                else:  # checkpointing: rebuild the chunk's whole graph and back-propagate through it
                    th = [_leaf(p) for p in theta0]
                    vl = [_leaf(v) for v in vel0] if vel0 is not None else None
                    theta, vel = th, vl
                    for t in range(t0, t1):
                        theta, vel = spec.step(t, theta, vel, xl, yl, lrl, True)
                    wrt = [v for v in (xl, yl, lrl) if v.requires_grad]
                    res = torch.autograd.grad(theta + (vel or []), wrt + th + (vl or []), lam + lam_v,
                                              allow_unused=True)
                    got = dict(zip([id(v) for v in wrt], res[:len(wrt)]))
                    rx, ry, rl = got.get(id(xl)), got.get(id(yl)), got.get(id(lrl))
                    if rl is not None:
                        glr = glr + rl
                    k = len(wrt)
                    lam = [torch.zeros_like(p) if r is None else r for p, r in zip(th, res[k:k + len(th)])]
                    if vl is not None:
                        lam_v = [torch.zeros_like(v) if r is None else r for v, r in zip(vl, res[k + len(th):])]
                    del res, theta, vel
                    if rx is not None:
                        gx = rx if gx is None else gx + rx
                    if ry is not None:
                        gy = ry if gy is None else gy + ry
        theta_grads = [g if need else None for g, need in zip(lam, needs[6:])]
        return (None, None, None, gx, gy, glr, *theta_grads)


class _Snapshots:
    """Parameter (and velocity) snapshots in one preallocated buffer: no per-step allocations between the large
    transient ones, so the allocator's heap does not fragment as the unroll gets longer."""

    def __init__(self, like: list[torch.Tensor], n: int, with_vel: bool) -> None:
        """One preallocated buffer of ``n`` parameter (and velocity) snapshots."""
        self.n, self.shapes = n, [p.shape for p in like]
        self.sizes = [p.numel() for p in like]
        width = sum(self.sizes) * (2 if with_vel else 1)
        self.buf = torch.empty(n, width, dtype=like[0].dtype, device=like[0].device)
        self.with_vel = with_vel

    def put(self, i: int, theta: list, vel: list | None) -> None:
        """Store snapshot ``i`` in place."""
        torch.cat([p.reshape(-1) for p in theta + (vel or [])], out=self.buf[i])

    def get(self, i: int) -> tuple[list, list | None]:
        """Snapshot ``i`` as parameter (and velocity) views into the buffer."""
        parts = [v.view(s) for v, s in zip(self.buf[i].split(self.sizes * (2 if self.with_vel else 1)),
                                            self.shapes * (2 if self.with_vel else 1))]
        k = len(self.shapes)
        return parts[:k], (parts[k:] if self.with_vel else None)


def unroll(f, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr=None, batch_size: int = 0,
           g: torch.Generator | None = None, label_kind: str = "hard", create_graph: bool = True,
           lrs: torch.Tensor | None = None, *, plan: UnrollPlan | None = None, dsa=None, momentum: float = 0.0,
           memory: str = "autograd", chunk: int = 0, exact: bool = True, micro_batch: int = 0,
           shard: tuple[int, int] = (0, 1)) -> Params:
    """``steps`` SGD steps (with ``momentum``: ``v <- mu v + g``, ``theta <- theta - lr v``) of ``f`` from
    ``params`` on minibatches of ``(x, y)``, differentiable with respect to ``x``, ``y``, ``lr`` and ``params``.

    Minibatches come from ``plan`` (an :class:`UnrollPlan`, with DSA draws applied by ``dsa``) or are drawn from
    ``g`` with ``batch_size`` (0: the whole set). ``lrs`` (one step size per step, DD's) overrides ``lr``.
    ``memory`` picks how the gradient is computed (module docstring): ``"autograd"``, ``"adjoint"`` (exact,
    activation memory flat in ``steps``) or ``"checkpoint"`` (chunks of ``chunk`` steps); ``exact=False`` with
    ``"adjoint"`` is TESLA's decomposition. ``create_graph=False`` runs the steps without any graph and returns
    detached parameters. ``micro_batch=m`` makes the recomputing modes run every step's minibatch ``m`` examples
    at a time (forward gradients and the adjoint's VJP), so activation memory is flat in the batch size as well;
    exact for losses that are means over independent examples (no batch norm in train mode). ``shard=(rank,
    world)`` splits every step's minibatch across ranks (see :func:`sgd_step`); every rank must then call
    ``backward`` too.
    """
    if memory not in MEMORY_MODES:
        raise ConfigError(f"unroll memory must be one of {', '.join(MEMORY_MODES)}; got {memory!r}.")
    if not exact and memory != "adjoint":
        raise ConfigError("exact=False (TESLA's decomposition) needs memory='adjoint'.")
    if memory == "checkpoint" and chunk < 1:
        raise ConfigError(f"memory='checkpoint' needs chunk >= 1 steps per checkpoint; got {chunk}.")
    if plan is None:
        plan = UnrollPlan.draw(x.shape[0], steps, batch_size, g, None)
    if len(plan) != steps:
        raise ConfigError(f"the unroll plan holds {len(plan)} steps but {steps} were asked for.")
    lr_t = lrs if lrs is not None else lr
    lr_t = lr_t if torch.is_tensor(lr_t) else torch.tensor(float(lr_t), device=x.device)
    if micro_batch and shard[1] > 1:
        raise ConfigError("micro_batch and shard cannot be combined: shard the minibatch or split it, not both.")
    spec = _Spec(f, list(params), plan, dsa, label_kind, float(momentum), shard,
                 lrs is not None and lr_t.ndim > 0, int(micro_batch) if memory != "autograd" else 0)
    if steps == 0:
        return dict(params)
    if not create_graph:
        theta, vel = [p.detach() for p in params.values()], None
        vel = [torch.zeros_like(p) for p in theta] if momentum else None
        xd, yd, ld = x.detach(), y.detach(), lr_t.detach()
        for t in range(steps):
            theta, vel = spec.step(t, [_leaf(p) for p in theta], vel, xd, yd, ld, False)
            theta = [p.detach() for p in theta]
            vel = None if vel is None else [v.detach() for v in vel]
        return dict(zip(spec.names, theta))
    if memory == "autograd":
        theta = [p if p.requires_grad else _leaf(p) for p in params.values()]
        vel = [torch.zeros_like(p) for p in theta] if momentum else None
        for t in range(steps):
            theta, vel = spec.step(t, theta, vel, x, y, lr_t, True)
            check_memory(f"unroll step {t}")
        return dict(zip(spec.names, theta))
    k = 1 if memory == "adjoint" else int(chunk)
    out = _RecomputedUnroll.apply(spec, k, exact, x, y, lr_t, *params.values())
    return dict(zip(spec.names, out))


def momentum_unroll(f, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr, momentum: float,
                    batch_size: int, g: torch.Generator, label_kind: str = "hard", create_graph: bool = True,
                    memory: str = "autograd", chunk: int = 0, micro_batch: int = 0) -> Params:
    """:func:`unroll` with SGD-with-momentum steps (``v <- mu v + grad``, ``p <- p - lr v``).

    Deng & Russakovsky (2022) argue that back-propagating through long unrolls of a *momentum* inner optimiser
    is what makes BPTT distillation (LinBa) work; this is that inner loop, differentiable end to end.
    """
    return unroll(f, params, x, y, steps, lr, batch_size, g, label_kind, create_graph, momentum=momentum,
                  memory=memory, chunk=chunk, micro_batch=micro_batch)


def unroll_options(cfg) -> dict[str, Any]:
    """``memory``/``chunk``/``micro_batch`` keyword arguments of :func:`unroll` from a method config's
    ``unroll_memory``, ``unroll_chunk`` and ``unroll_micro_batch`` fields (validated with a clear error)."""
    memory = getattr(cfg, "unroll_memory", "autograd")
    chunk = int(getattr(cfg, "unroll_chunk", 0) or 0)
    micro = int(getattr(cfg, "unroll_micro_batch", 0) or 0)
    if memory not in MEMORY_MODES:
        raise ConfigError(f"unroll_memory must be one of {', '.join(MEMORY_MODES)}; got {memory!r}.")
    if memory == "checkpoint" and chunk < 1:
        raise ConfigError("unroll_memory='checkpoint' needs unroll_chunk >= 1 (steps recomputed together).")
    if micro < 0:
        raise ConfigError(f"unroll_micro_batch must be >= 0 (0: whole minibatches); got {micro}.")
    return {"memory": memory, "chunk": chunk, "micro_batch": micro}
