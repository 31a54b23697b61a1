"""Gradient matching: DC (Zhao, Mopuri & Bilen, ICLR 2021) and DSA (Zhao & Bilen, ICML 2021).

Each outer iteration samples a fresh network; for ``outer_loop`` rounds the synthetic images of every class are
updated so that the network's loss gradient on them matches its gradient on a real batch of that class
(:func:`~distill_apps.matching.gradient_distance`), and between rounds the network trains ``inner_loop`` epochs on
the synthetic set. DSA applies the same random augmentation to the real and synthetic batch of a class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..augment import DSA, DEFAULT_STRATEGY
from ..config import MethodConfig
from ..engine import Distiller, DistillState, register_method
from ..errors import ConfigError
from ..matching import gradient_distance, loss_gradients
from ..parameterisation import pixel_state, training_targets
from ..train import fit

# (outer_loop, inner_loop) by images per class, from the DC paper's released settings
SCHEDULE = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def schedule_for(ipc: int) -> tuple[int, int]:
    """The paper's loop schedule; IPCs between the published ones take the nearest smaller entry."""
    key = max(k for k in SCHEDULE if k <= ipc) if ipc >= 1 else 1
    return SCHEDULE[key]


@dataclass
class BilevelConfig(MethodConfig):
    """The DC-style bi-level loop shared by DC, DSA and CAFE: image updates, then network training on them."""

    steps: int = 1000
    quick_steps: int = 10
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    batch_real: int = 256
    batch_train: int = 256
    outer_loop: int = 0  # 0: the paper's schedule for the IPC
    inner_loop: int = 0
    init: str = "real"  # real | noise
    real_chunk: int = 0  # memory guard: real gradients accumulated over chunks of this many images (0: whole)
    real_grads: str = "loop"  # per-class real gradients: loop (one forward/backward per class) | batched (one
    #   torch.func vmap pass over all classes; same gradients, K x the activation memory; slower on CPU)


@dataclass
class DCConfig(BilevelConfig):
    """Options of DC (Zhao, Mopuri & Bilen, ICLR 2021): the bi-level loop and the gradient distance."""
    dis_metric: str = "ours"


@dataclass
class DSAConfig(DCConfig):
    """Options of DSA (Zhao & Bilen, ICML 2021): DC's plus the Siamese augmentation strategy."""
    dsa_strategy: str = DEFAULT_STRATEGY


@register_method("dc")
class DC(Distiller):
    """DC (Zhao, Mopuri & Bilen, ICLR 2021): per-class gradient matching along the network's training."""
    family = "gradient"
    paper = "Zhao, Mopuri & Bilen, ICLR 2021, Dataset Condensation with Gradient Matching"
    Config = DCConfig
    eval_augment = "dc"  # DC's evaluation trains with its crop/scale/rotate/noise augmentation (get_daparam)
    multilabel = True  # gradients of the per-label BCE loss, real and synthetic alike

    def dsa(self) -> DSA | None:
        """The Siamese augmentation (none for DC)."""
        return None

    def init(self, g: torch.Generator) -> DistillState:
        """Learnable images from real ones (or noise), SGD on them."""
        return pixel_state(self, g, self.cfg.init)

    def match_loss(self, net, x_syn: torch.Tensor, y_syn: torch.Tensor, g: torch.Generator,
                   t_syn: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over this rank's classes of the gradient distance between real and synthetic batches.

        ``t_syn`` are the synthetic targets when they are not the class ids ``y_syn`` (multi-hot rows)."""
        aug = self.dsa()
        kind = self.real.target_kind
        t_syn = y_syn if t_syn is None else t_syn
        xr, yr = self.real_batch(self.cfg.batch_real, g)
        nb = self.cfg.batch_real
        params = aug.sample(self.real.num_classes, g, self.real.image_shape[1:]) if aug else None
        if self.cfg.real_grads not in ("loop", "batched"):
            raise ConfigError(f"real_grads must be 'loop' or 'batched'; got {self.cfg.real_grads!r}.")
        batches = []  # (real x, real y, synthetic x, synthetic targets) per class, one shared DSA draw each
        for j, c in enumerate(self.classes):
            xr_c, yr_c = xr[j * nb:(j + 1) * nb], yr[j * nb:(j + 1) * nb]
            sel = y_syn == c
            xs_c, ys_c = x_syn[sel], t_syn[sel]
            if aug is not None:
                grp = torch.full((1,), c)
                xr_c = aug.apply(xr_c, params, grp.expand(len(xr_c)))
                xs_c = aug.apply(xs_c, params, grp.expand(len(xs_c)))
            batches.append((xr_c, yr_c, xs_c, ys_c))
        batched = self.cfg.real_grads == "batched"
        gr_all = self.class_gradients(net, [b[0] for b in batches], [b[1] for b in batches], kind) if batched \
            else None
        loss = x_syn.new_zeros(())
        for j, (xr_c, yr_c, xs_c, ys_c) in enumerate(batches):
            gr = gr_all[j] if batched else self.real_gradients(net, xr_c, yr_c, kind)
            gs = loss_gradients(net, xs_c, ys_c, True, self.autocast(), kind)
            loss = loss + gradient_distance(gs, gr, self.cfg.dis_metric)
            self.check_memory(f"class {c}")
        return loss

    def class_gradients(self, net, xs: list[torch.Tensor], ys: list[torch.Tensor], kind: str
                        ) -> list[list[torch.Tensor]]:
        """Every class's real-batch gradient from ONE batched pass: ``torch.func.vmap`` over the classes of
        ``grad`` of the per-class loss. The forward runs all classes' images as one batch and the backward
        splits only the weight reductions by class (grouped convolutions), so it equals the per-class loop
        (:meth:`real_gradients`) to rounding. It needs equal batch sizes per class (DC's balanced batches)."""
        from torch.func import functional_call, grad, vmap

        from ..train import target_loss

        if getattr(self, "_class_grad", None) is None:
            template = net

            def loss_fn(p, b, xb, yb):
                return target_loss(functional_call(template, {**p, **b}, (xb,)), yb, kind)

            self._class_grad = vmap(grad(loss_fn), in_dims=(None, None, 0, 0))
        params = {k: p.detach() for k, p in net.named_parameters() if p.requires_grad}
        with self.autocast():
            out = self._class_grad(params, dict(net.named_buffers()), torch.stack(xs), torch.stack(ys))
        return [[out[k][j].float() for k in params] for j in range(len(xs))]

    def real_gradients(self, net, x: torch.Tensor, y: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """The loss gradient on a real batch; with ``real_chunk`` the mean of per-chunk gradients weighted by
        chunk size (the same gradient, with activation memory bounded by the chunk)."""
        n, chunk = x.shape[0], self.cfg.real_chunk
        grads = self._compiled_real_gradients(net, kind) if self.cfg.compile else \
            (lambda xc, yc: loss_gradients(net, xc, yc, False, self.autocast(), kind))
        if chunk <= 0 or chunk >= n:
            return grads(x, y)
        total = None
        for xc, yc in zip(x.split(chunk), y.split(chunk)):
            part = grads(xc, yc)
            w = xc.shape[0] / n
            total = [w * p for p in part] if total is None else [t + w * p for t, p in zip(total, part)]
        return total

    def _compiled_real_gradients(self, net, kind: str):
        """``(x, y) -> grads`` through one ``torch.compile``d ``torch.func.grad`` of the functional loss, shared by
        every fresh network of this architecture (the real side is ~all of DC's FLOPs and needs no graph)."""
        if getattr(self, "_real_grad", None) is None:
            from torch.func import functional_call, grad

            from ..train import target_loss

            template = net

            def loss_fn(params, buffers, xb, yb):
                return target_loss(functional_call(template, {**params, **buffers}, (xb,)), yb, kind)

            self._real_grad = torch.compile(grad(loss_fn), dynamic=False)
        params = {k: p.detach() for k, p in net.named_parameters() if p.requires_grad}
        buffers = dict(net.named_buffers())

        def run(xb, yb):
            with self.autocast():
                out = self._real_grad(params, buffers, xb, yb)
            return [out[k].float() for k in params]

        return run

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One network: ``outer_loop`` image updates by gradient matching, ``inner_loop`` epochs of training between."""
        cfg = self.cfg
        outer, inner = schedule_for(self.ipc)
        outer, inner = cfg.outer_loop or outer, cfg.inner_loop or inner
        x, y, t = state.params["x"], state.buffers["y"], training_targets(state)
        net = self.new_net(g)
        aug = self.dsa()
        total = 0.0
        for ol in range(outer):
            loss = self.match_loss(net, x, y, g, t)
            self.update(state, loss)
            total += float(loss.detach())
            if ol == outer - 1:
                break
            fit(net, x.detach(), t, epochs=inner, lr=cfg.lr_net, momentum=0.5, weight_decay=0.0,
                batch_size=cfg.batch_train, decay_at_half=False, generator=g, amp=cfg.amp,
                label_kind=self.real.target_kind,
                augment=(lambda xb, gg: aug(xb, gg)) if aug else None)
        return {"loss": total / outer}

    def export(self, state: DistillState):
        """The synthetic images and their class ids (multi-hot rows for multi-label data)."""
        return self.synthetic(state, state.params["x"], state.buffers["y"])


@register_method("dsa")
class DSAMethod(DC):
    """DSA (Zhao & Bilen, ICML 2021): DC with one differentiable augmentation shared by real and synthetic batches."""
    paper = "Zhao & Bilen, ICML 2021, Dataset Condensation with Differentiable Siamese Augmentation"
    Config = DSAConfig
    eval_augment = "dsa"

    def dsa(self) -> DSA:
        """DSA's augmenter for this data (no flips where the data is not flip-invariant)."""
        return DSA.for_dataset(self.real.flip_invariant, strategy=self.cfg.dsa_strategy)
