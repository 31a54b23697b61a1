"""Meta-model matching: DD (truncated BPTT), KIP, RFAD and FRePO.

The synthetic set is scored by what a model fitted on it predicts for real data:

* ``dd`` -- Wang et al. 2018, "Dataset Distillation": unrolled SGD on the synthetic set with learnable per-step
  learning rates, back-propagated through the last ``tbptt_window`` steps (truncated BPTT); the inner model
  starts from one fixed initialisation or a fresh random one every step (``init_mode``).
* ``kip`` -- Nguyen, Chen & Lee, ICLR 2021 / Nguyen et al., NeurIPS 2021, "Dataset Meta-Learning from Kernel
  Ridge-Regression": the "model" is kernel ridge regression with a neural tangent kernel, in closed form;
  support images and (optionally) labels are learned.
* ``rfad`` -- Loo, Hasani, Amini & Rus, NeurIPS 2022, "Efficient Dataset Distillation using Random Feature
  Approximation": the NNGP kernel estimated by the features of M random finite ConvNets, KRR in the cheaper of
  the primal/dual forms (linear in the support size), Platt-scaled cross-entropy outer loss.
* ``frepo`` -- Zhou, Nezhadarya & Ba, NeurIPS 2022, "Dataset Distillation using Neural Feature Regression": KRR
  on the features of a pool of networks that are trained online on the synthetic data; the outer gradient
  ignores how the networks' weights depend on the synthetic data (weights are constants in the outer loss, the
  online updates see detached synthetic data); each network is re-initialised after ``max_online_updates``.

Kernels and KRR live in :mod:`distill_apps.kernels`; the unrolled training in :mod:`distill_apps.inner`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import kernels as K
from ..config import MethodConfig
from ..engine import Distiller, DistillState, register_method
from ..evaluate import EvalResult, register_protocol
from ..errors import ConfigError
from ..inner import Params, functional, unroll, unroll_options
from ..parameterisation import init_pixels
from ..train import fit, target_loss


# ====================================================================== DD
def dd_outer_loss(f, params0: Params, x_syn: torch.Tensor, y_syn: torch.Tensor, lrs: torch.Tensor,
                  x_real: torch.Tensor, y_real: torch.Tensor, window: int, batch_size: int,
                  g: torch.Generator, memory: str = "autograd", chunk: int = 0,
                  micro_batch: int = 0) -> torch.Tensor:
    """DD's objective: loss on ``(x_real, y_real)`` after ``len(lrs)`` SGD steps on the synthetic set.

    Only the last ``window`` steps are differentiated (truncated BPTT; ``window <= 0`` means all of them); the
    earlier steps run on detached images and step sizes, so their contribution to the hypergradient is dropped.
    ``memory``/``chunk`` choose how the differentiated steps are back-propagated (:func:`distill_apps.inner.unroll`:
    ``adjoint`` gives the same hypergradient with activation memory flat in the window).
    """
    steps = lrs.shape[0]
    keep = steps if window <= 0 else min(window, steps)
    p = {k: v.detach().requires_grad_(True) for k, v in params0.items()}
    if steps - keep:
        p = unroll(f, p, x_syn.detach(), y_syn, steps - keep, None, batch_size, g, create_graph=False,
                   lrs=lrs.detach()[:steps - keep])
        p = {k: v.detach().requires_grad_(True) for k, v in p.items()}
    p = unroll(f, p, x_syn, y_syn, keep, None, batch_size, g, create_graph=True, lrs=lrs[steps - keep:],
               memory=memory, chunk=chunk, micro_batch=micro_batch)
    return target_loss(f(p, x_real), y_real)


@dataclass
class DDConfig(MethodConfig):
    """Options of DD (Wang et al., 2018): the unrolled schedule, truncation window and initialisation."""
    steps: int = 1000
    quick_steps: int = 30
    inner_steps: int = 10  # distinct step sizes (the paper's 10 GD steps ...)
    inner_epochs: int = 3  # ... repeated for 3 epochs: 30 unrolled steps
    lr_init: float = 0.02  # initial inner step size
    lr_img: float = 0.01  # Adam, images
    lr_lr: float = 0.01  # Adam, log step sizes
    tbptt_window: int = field(default=10, metadata={"min": 0})  # unrolled steps back-propagated through; 0 = full BPTT
    init_mode: str = "random"  # random | fixed
    batch_syn: int = 0  # inner minibatch; 0 = the whole synthetic set every step
    batch_real: int = 20  # real images per class in the outer loss
    init: str = "real"  # real | noise
    unroll_memory: str = "autograd"  # autograd | adjoint (same hypergradient, memory flat in the window) |
    #   checkpoint (chunks of unroll_chunk steps recomputed); see inner.unroll
    unroll_chunk: int = 0
    unroll_micro_batch: int = 0  # recomputing modes: examples per micro-batch (0: whole minibatches; exact
    #   without batch statistics), so memory is flat in the inner batch size too


@register_method("dd")
class DD(Distiller):
    """DD (Wang, Zhu, Torralba & Efros, 2018): images and per-step learning rates through truncated BPTT."""
    family = "meta"
    paper = "Wang, Zhu, Torralba & Efros, 2018, Dataset Distillation"
    Config = DDConfig

    def init(self, g: torch.Generator) -> DistillState:
        """Learnable images, log step sizes at ``lr_init``, Adam on both; a fixed network for ``init_mode=fixed``."""
        cfg = self.cfg
        if cfg.init_mode not in ("random", "fixed"):
            raise ConfigError(f"dd init_mode must be 'random' or 'fixed'; got {cfg.init_mode!r}.")
        if cfg.inner_steps < 1 or cfg.inner_epochs < 1:
            raise ConfigError("dd needs inner_steps >= 1 and inner_epochs >= 1.")
        if cfg.lr_init <= 0:
            raise ConfigError(f"dd lr_init must be > 0; got {cfg.lr_init}.")
        x, y, _ = init_pixels(self.real, self.ipc, g, self.device, cfg.init, self.name)
        x.requires_grad_(True)
        log_lr = torch.full((cfg.inner_steps,), math.log(cfg.lr_init), device=self.device, requires_grad=True)
        opt = torch.optim.Adam([{"params": [x], "lr": cfg.lr_img}, {"params": [log_lr], "lr": cfg.lr_lr}])
        st = DistillState(params={"x": x, "log_lr": log_lr}, optimizers={"syn": opt}, buffers={"y": y})
        if cfg.init_mode == "fixed":
            st.modules["net0"] = self.new_net(g)
        return st

    def lrs(self, state: DistillState) -> torch.Tensor:
        """The unrolled schedule: the learned step sizes repeated for ``inner_epochs``."""
        return state.params["log_lr"].exp().repeat(self.cfg.inner_epochs)

    def outer_loss(self, state: DistillState, g: torch.Generator) -> torch.Tensor:
        """:func:`dd_outer_loss` on a real batch of every class, from a fresh (or the fixed) network."""
        cfg = self.cfg
        net = state.modules["net0"] if cfg.init_mode == "fixed" else self.new_net(g)
        f, p0 = functional(net)
        xr, yr = self.real_batch(cfg.batch_real, g, classes=list(range(self.real.num_classes)))
        x, y = state.params["x"], state.buffers["y"]
        with self.autocast():
            return dd_outer_loss(f, p0, x, y, self.lrs(state), xr, yr, cfg.tbptt_window,
                                 cfg.batch_syn or x.shape[0], g, **unroll_options(cfg))

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One Adam step of images and step sizes on :meth:`outer_loss`."""
        loss = self.outer_loss(state, g)
        if self.world_size > 1:
            loss = loss / self.world_size  # every rank computes the whole loss; the update sums the ranks
        self.update(state, loss)
        return {"loss": float(loss.detach()), "lr": float(state.params["log_lr"].detach().exp().mean())}

    def export(self, state: DistillState):
        """The synthetic images, with the learned step sizes in ``meta["inner_lrs"]`` (the schedule protocol)."""
        lrs = [float(v) for v in state.params["log_lr"].detach().exp()]
        return self.synthetic(state, state.params["x"], state.buffers["y"],
                              meta={"inner_lrs": lrs, "inner_epochs": self.cfg.inner_epochs,
                                    "init_mode": self.cfg.init_mode})


@register_protocol("schedule")
def learned_schedule_protocol(summary, real, *, model: str, runs: int, seed: int, device: torch.device,
                              progress: bool = False, amp: bool = True, **ignored) -> EvalResult:
    """DD's own protocol: fresh networks trained with the learned step sizes (``meta["inner_lrs"]``, repeated
    ``meta["inner_epochs"]`` times), one plain gradient step on the whole summary per step size, then tested on
    the real test split. Randomly initialised networks, i.e. DD's random-init setting."""
    import time

    import numpy as np

    from ..errors import DataError
    from ..fit_summary import fresh_model, run_range, score, train_on_summary
    from ..runtime import generator

    lrs, epochs = summary.meta.get("inner_lrs"), summary.meta.get("inner_epochs")
    if not lrs or not epochs:
        raise DataError("The 'schedule' protocol needs a summary with learned step sizes (meta inner_lrs and "
                        "inner_epochs, as dd writes); use protocol='train' for this summary.")
    t0, m = time.perf_counter(), summary.materialize()
    data = (m.x.to(device), (m.soft if m.soft is not None else m.y).to(device), m.label_kind)
    accs = []
    for r in run_range(runs, f"schedule {model}", progress):
        g = generator("evaluate-schedule", seed, r)
        net = fresh_model(model, real, g, device)
        # plain full-batch SGD steps (no momentum, weight decay or mixed precision) at the learned rates
        train_on_summary(m, net, schedule=list(lrs) * int(epochs), momentum=0.0, weight_decay=0.0,
                         training_data=data, generator=g, amp=False, progress=progress)
        accs.append(score(net, real))
    return EvalResult(float(np.mean(accs)), float(np.std(accs)), accs, runs, model, real.name, "schedule",
                      int(epochs), None, None, time.perf_counter() - t0,
                      {"inner_lrs": list(lrs), "unrolled_steps": len(lrs) * int(epochs)})


# ====================================================================== kernel methods: shared parts
@dataclass
class KernelConfig(MethodConfig):
    """Options shared by the kernel methods (KIP, RFAD, FRePO): Adam rates, learned labels, ridge."""
    steps: int = 1000
    quick_steps: int = 30
    lr_img: float = 0.01  # Adam, as KIP
    lr_label: float = 0.01
    learn_labels: bool = True
    reg: float = 1e-6  # lambda = reg * tr(K_ss) / n_s
    batch_real: int = 20  # real (target) images per class each step
    init: str = "real"  # real | noise


class _KernelDistiller(Distiller):
    """Support images (+ optional regression labels) learned through a KRR outer loss."""

    family = "meta"
    kernel_name: str = ""

    def init(self, g: torch.Generator) -> DistillState:
        """Learnable support images and (optionally) regression labels, Adam on them."""
        cfg = self.cfg
        if cfg.reg < 0:
            raise ConfigError(f"{self.name} reg must be >= 0; got {cfg.reg}.")
        x, y, _ = init_pixels(self.real, self.ipc, g, self.device, cfg.init, self.name)
        x.requires_grad_(True)
        ys = K.regression_targets(y, self.real.num_classes).to(self.device)
        groups = [{"params": [x], "lr": cfg.lr_img}]
        params = {"x": x}
        if cfg.learn_labels:
            ys.requires_grad_(True)
            params["y_soft"] = ys
            groups.append({"params": [ys], "lr": cfg.lr_label})
        st = DistillState(params=params, buffers={"y": y})
        if not cfg.learn_labels:
            st.buffers["y_soft"] = ys
        self.extra_params(st, groups)
        st.optimizers["syn"] = torch.optim.Adam(groups)
        return st

    def extra_params(self, state: DistillState, groups: list) -> None:
        """Hook for more learnable tensors (RFAD's Platt scale)."""

    def support(self, state: DistillState) -> tuple[torch.Tensor, torch.Tensor]:
        """The support images and their regression labels (learned or fixed)."""
        ys = state.params["y_soft"] if "y_soft" in state.params else state.buffers["y_soft"]
        return state.params["x"], ys

    def target(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A real batch of every class, the KRR target set of this step."""
        xr, yr = self.real_batch(self.cfg.batch_real, g, classes=list(range(self.real.num_classes)))
        return xr, yr

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One Adam step on the method's ``outer_loss``, then :meth:`after_update`."""
        loss, acc = self.outer_loss(state, g)
        if self.world_size > 1:
            loss = loss / self.world_size
        self.update(state, loss)
        self.after_update(state, g)
        return {"loss": float(loss.detach()), "acc": acc}

    def after_update(self, state: DistillState, g: torch.Generator) -> None:
        """Hook run after the synthetic update (FRePO's online model training)."""

    def export(self, state: DistillState):
        """The support images with their learned labels (``label_kind="regression"``) and kernel."""
        x, ys = self.support(state)
        soft = ys.detach().float().cpu() if self.cfg.learn_labels else None
        return self.synthetic(state, x, state.buffers["y"], soft=soft,
                              label_kind="regression" if soft is not None else "hard",
                              meta={"kernel": self.kernel_name, "kernel_model": self.kernel_model(),
                                    "kernel_reg": self.cfg.reg})

    def kernel_model(self) -> str:
        """The network behind the kernel, recorded in the summary's metadata."""
        return self.model


# ====================================================================== KIP
@dataclass
class KIPConfig(KernelConfig):
    """Options of KIP (Nguyen, Chen & Lee, ICLR 2021): the kernel and its network."""
    kernel: str = "conv_entk"  # conv_entk (empirical NTK of a random ConvNet) | fc_ntk | fc_nngp | rf_nngp
    kernel_model: str = "convnet-d3-w128-nn"  # network of conv_entk: ConvNet-3 without normalisation, as KIP
    fc_depth: int = 3  # hidden layers of fc_ntk / fc_nngp


@register_method("kip")
class KIP(_KernelDistiller):
    """KIP (Nguyen, Chen & Lee, ICLR 2021): KRR with a neural tangent kernel, support set learned through it."""
    paper = "Nguyen, Chen & Lee, ICLR 2021, Dataset Meta-Learning from Kernel Ridge-Regression"
    Config = KIPConfig

    @property
    def kernel_name(self) -> str:  # type: ignore[override]
        """The configured kernel (``cfg.kernel``)."""
        return self.cfg.kernel

    def kernel_model(self) -> str:
        """The network of the empirical NTK (``cfg.kernel_model``)."""
        return self.cfg.kernel_model

    def outer_loss(self, state: DistillState, g: torch.Generator) -> tuple[torch.Tensor, float]:
        """MSE between the KRR prediction on a real batch and its centred one-hot labels."""
        kern = K.make_kernel(self.cfg.kernel, image_shape=self.real.image_shape, g=g, device=self.device,
                             model=self.cfg.kernel_model, depth=self.cfg.fc_depth)
        xs, ys = self.support(state)
        xt, yt = self.target(g)
        if kern.features is not None:  # conv_entk: Jacobians are the features; each image's computed once
            with torch.no_grad():
                phi_t = kern.features(xt)
            phi_s = kern.features(xs)
            k_ss, k_ts = phi_s @ phi_s.T, phi_t @ phi_s.T
        else:
            k_ss, k_ts = kern.fn(xs, xs), kern.fn(xt, xs)
        pred = K.krr_predict(k_ts, k_ss, ys, self.cfg.reg)  # the dual form: KIP's O(n_s^2) kernel, O(n_s^3) solve
        loss = F.mse_loss(pred, K.regression_targets(yt, self.real.num_classes))
        return loss, float((pred.argmax(1) == yt).float().mean())


# ====================================================================== RFAD
@dataclass
class RFADConfig(KernelConfig):
    """Options of RFAD (Loo et al., NeurIPS 2022): random networks, KRR form and the Platt scale."""
    learn_labels: bool = False
    n_models: int = 8  # random networks whose features approximate the NNGP
    feature_model: str = "convnet-d3-w128-nn"
    krr_form: str = "auto"  # auto | primal (cost linear in the support size) | dual
    platt_init: float = 10.0  # initial Platt scale of the KRR outputs (learned)
    lr_platt: float = 0.01


@register_method("rfad")
class RFAD(_KernelDistiller):
    """RFAD (Loo et al., NeurIPS 2022): random-feature NNGP KRR with a Platt-scaled cross-entropy loss."""
    paper = ("Loo, Hasani, Amini & Rus, NeurIPS 2022, Efficient Dataset Distillation using Random Feature "
             "Approximation")
    Config = RFADConfig
    kernel_name = "rf_nngp"

    def kernel_model(self) -> str:
        """The random feature network (``cfg.feature_model``)."""
        return self.cfg.feature_model

    def extra_params(self, state: DistillState, groups: list) -> None:
        """The learnable log Platt scale, in its own Adam group."""
        if self.cfg.platt_init <= 0:
            raise ConfigError(f"rfad platt_init must be > 0; got {self.cfg.platt_init}.")
        if self.cfg.n_models < 1:
            raise ConfigError(f"rfad n_models must be >= 1; got {self.cfg.n_models}.")
        log_s = torch.tensor(math.log(self.cfg.platt_init), device=self.device, requires_grad=True)
        state.params["log_platt"] = log_s
        groups.append({"params": [log_s], "lr": self.cfg.lr_platt})

    def outer_loss(self, state: DistillState, g: torch.Generator) -> tuple[torch.Tensor, float]:
        """Platt-scaled cross-entropy of the random-feature KRR prediction on a real batch."""
        kern = K.make_kernel("rf_nngp", image_shape=self.real.image_shape, g=g, device=self.device,
                             model=self.cfg.feature_model, n_models=self.cfg.n_models)
        xs, ys = self.support(state)
        xt, yt = self.target(g)
        with torch.no_grad():
            phi_t = kern.features(xt)
        phi_s = kern.features(xs)
        pred = K.krr_predict_features(phi_t, phi_s, ys, self.cfg.reg, self.cfg.krr_form)
        loss = F.cross_entropy(pred * state.params["log_platt"].exp(), yt)
        return loss, float((pred.argmax(1) == yt).float().mean())


# ====================================================================== FRePO
@dataclass
class FRePOConfig(KernelConfig):
    """Options of FRePO (Zhou et al., NeurIPS 2022): the online network pool and its training."""
    pool_size: int = 10  # networks in the pool
    max_online_updates: int = 100  # online training steps before a network is re-initialised
    online_steps: int = 1  # training steps of the chosen network after every outer step
    lr_net: float = 3e-4  # Adam, online training of the pool
    lr_img: float = 1e-3
    lr_label: float = 1e-3


@register_method("frepo")
class FRePO(_KernelDistiller):
    """FRePO (Zhou, Nezhadarya & Ba, NeurIPS 2022): KRR on features of networks trained online on the support."""
    paper = "Zhou, Nezhadarya & Ba, NeurIPS 2022, Dataset Distillation using Neural Feature Regression"
    Config = FRePOConfig
    kernel_name = "rf_nngp"  # KRR evaluation: the pool is gone, a random-feature ConvNet NNGP stands in

    def init(self, g: torch.Generator) -> DistillState:
        """The support set plus a pool of networks with Adam optimisers and staggered ages."""
        cfg = self.cfg
        if cfg.pool_size < 1 or cfg.max_online_updates < 1 or cfg.online_steps < 1:
            raise ConfigError("frepo needs pool_size >= 1, max_online_updates >= 1 and online_steps >= 1.")
        state = super().init(g)
        for i in range(cfg.pool_size):
            net = self.new_net(g)
            state.modules[f"pool{i}"] = net
            state.optimizers[f"pool{i}"] = torch.optim.Adam(net.parameters(), lr=cfg.lr_net)
        # staggered ages, so the pool always mixes young and old networks and refreshes spread out
        state.info["age"] = [i * cfg.max_online_updates // cfg.pool_size for i in range(cfg.pool_size)]
        state.info["refreshes"] = [0] * cfg.pool_size
        return state

    def pick(self, g: torch.Generator) -> int:
        """The pool slot used this step (uniformly at random, from the step's generator)."""
        return int(torch.randint(self.cfg.pool_size, (1,), generator=g))

    def features(self, state: DistillState, slot: int, xs: torch.Tensor, xt: torch.Tensor):
        """``(phi_t, phi_s)``: the network's weights are constants (no outer gradient reaches them or their
        training history); target features carry no graph at all; support features carry the graph to ``xs``."""
        net = state.modules[f"pool{slot}"]
        with K.frozen(net), self.autocast():
            with torch.no_grad():
                phi_t = K.embed(net, xt)
            phi_s = K.embed(net, xs)
        return phi_t, phi_s

    def outer_loss(self, state: DistillState, g: torch.Generator) -> tuple[torch.Tensor, float]:
        """MSE of the KRR prediction on a real batch, with features of one pool network."""
        slot = self.pick(g)
        state.info["last_slot"] = slot
        xs, ys = self.support(state)
        xt, yt = self.target(g)
        phi_t, phi_s = self.features(state, slot, xs, xt)
        pred = K.krr_predict_features(phi_t, phi_s, ys, self.cfg.reg, "dual")
        loss = F.mse_loss(pred, K.regression_targets(yt, self.real.num_classes))
        return loss, float((pred.argmax(1) == yt).float().mean())

    def after_update(self, state: DistillState, g: torch.Generator) -> None:
        """Train the chosen network on the (detached) synthetic set; re-initialise it when it is old enough."""
        cfg = self.cfg
        slot = state.info["last_slot"]
        net, opt = state.modules[f"pool{slot}"], state.optimizers[f"pool{slot}"]
        xs, ys = self.support(state)
        fit(net, xs.detach(), ys.detach(), steps=cfg.online_steps, batch_size=max(1, xs.shape[0]),
            label_kind="regression", optimizer=opt, decay_at_half=False, generator=g, amp=cfg.amp)
        state.info["age"][slot] += cfg.online_steps
        if state.info["age"][slot] >= cfg.max_online_updates:
            fresh = self.new_net(g)
            with torch.no_grad():
                for p, q in zip(net.parameters(), fresh.parameters()):
                    p.copy_(q)
                for b, c in zip(net.buffers(), fresh.buffers()):
                    b.copy_(c)
            opt.state.clear()
            state.info["age"][slot] = 0
            state.info["refreshes"][slot] += 1
