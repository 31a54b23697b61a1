"""Differentially private distillation: ``dp-dm`` and ``dp-dc``, accounted with Opacus.

Both methods touch the real data only through *releases*: a Poisson-sampled real batch (sample rate ``q``) whose
per-sample contributions are clipped to the L2 bound ``clip``, summed per class and perturbed with Gaussian noise
``N(0, sigma^2 clip^2)``. A sample belongs to one class and so changes one class's sum by at most ``clip``: one
release is one subsampled Gaussian mechanism, accounted by :class:`~distill_apps.privacy.accounting.PrivacyBudget`
(Opacus RDP by default, PRV optional). ``sigma`` is calibrated for ``releases`` releases and the target
``(epsilon, delta)`` with Opacus' ``get_noise_multiplier``; a release that would overspend is never made. Every
other computation (synthetic updates, training networks on the synthetic set) is post-processing.

- ``dp-dm`` (DP-MERF, Harder et al., AISTATS 2021; NDPDC, Zheng & Li 2023): each release draws a random network
  (seeded, so it can be rebuilt), and publishes the noisy mean of clipped per-sample embeddings of every class;
  the synthetic images are then optimised, for as many steps as wanted, to match the released means.
- ``dp-dc`` (PSG, Chen, Kerkouche & Fritz, NeurIPS 2022, "Private Set Generation with Discriminative
  Information"): per-sample real gradients (``torch.func.vmap(grad)``) are clipped and noised; the synthetic images
  match the noisy per-class gradient with DC's layer-wise distance, and the network trains on the synthetic set
  between releases as in DC.

Synthetic images start from noise: starting from real images would publish them. Non-private runs (``sigma = 0``)
must be asked for explicitly with ``non_private: true``; the spent budget goes into ``SyntheticSet.meta["privacy"]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MethodConfig
from ..engine import Distiller, DistillState, register_method
from ..errors import ConfigError
from ..matching import gradient_distance, loss_gradients
from ..parameterisation import init_pixels
from ..privacy.accounting import PrivacyBudget, calibrate_noise
from ..runtime import generator
from ..train import fit
from .gradient import schedule_for


# ---------------------------------------------------------------------- mechanisms (shared, tested directly)
def clip_rows(v: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale every row of ``v`` (B, D) to L2 norm at most ``clip`` (Abadi et al. 2016's per-sample clipping)."""
    norms = v.norm(dim=1, keepdim=True)
    return v * (clip / (norms + 1e-12)).clamp(max=1.0)


def check_private_net(net: nn.Module) -> None:
    """Per-sample contributions are undefined with BatchNorm (a sample changes the others' outputs)."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise ConfigError("Differentially private distillation needs a network without BatchNorm (a sample's "
                          "contribution must depend on that sample only): use instance or group norm, e.g. "
                          "--model convnet (instance norm) or convnet-d3-w128-gn.")


def clipped_class_embedding_sums(net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, clip: float,
                                 chunk: int = 512) -> torch.Tensor:
    """Sum over the samples of each class of their clipped embeddings: ``(num_classes, d)``."""
    sums = None
    with torch.no_grad():
        for xb, yb in zip(x.split(chunk), y.split(chunk)):
            e = clip_rows(net.embed(xb).float().flatten(1), clip)
            if sums is None:
                sums = e.new_zeros(num_classes, e.shape[1])
            sums.index_add_(0, yb, e)
    if sums is None:  # an empty Poisson batch still releases (noise only)
        d = net.embed(torch.zeros(1, *x.shape[1:], device=x.device)).flatten(1).shape[1]
        sums = torch.zeros(num_classes, d, device=x.device)
    return sums


def clipped_class_grad_sums(net: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, clip: float,
                            chunk: int = 64) -> list[torch.Tensor]:
    """Per-class sums of per-sample loss gradients, each sample's whole gradient clipped to ``clip``.

    Per-sample gradients come from ``torch.func.vmap(torch.func.grad(...))`` over the trainable parameters;
    returns one ``(num_classes, *p.shape)`` tensor per trainable parameter, in ``net.parameters()`` order.
    """
    from torch.func import functional_call, grad, vmap

    names = [n for n, p in net.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in net.named_parameters() if not p.requires_grad}
    buffers = dict(net.named_buffers())

    def loss_one(p, xi, yi):
        out = functional_call(net, ({**p, **frozen}, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out.float(), yi.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    sums = {n: torch.zeros(num_classes, *params[n].shape, device=x.device) for n in names}
    for xb, yb in zip(x.split(chunk), y.split(chunk)):
        gs = per_sample(params, xb, yb)
        norms = torch.cat([gs[n].flatten(1) for n in names], 1).norm(dim=1)
        w = F.one_hot(yb, num_classes).float() * (clip / (norms + 1e-12)).clamp(max=1.0)[:, None]  # (B, K)
        for n in names:
            sums[n] += torch.einsum("bk,bd->kd", w, gs[n].flatten(1)).view_as(sums[n])
    return [sums[n] for n in names]


def gaussian_noise(shape, std: float, g: torch.Generator, device) -> torch.Tensor:
    """``N(0, std^2)`` noise drawn from ``g`` (CPU generator, so runs are reproducible on any device)."""
    return (torch.randn(shape, generator=g) * std).to(device)


# ---------------------------------------------------------------------- shared private machinery
@dataclass
class PrivateConfig(MethodConfig):
    """Options shared by dp-dm and dp-dc: the (epsilon, delta) target, accountant, clipping, sampling."""
    epsilon: float = 10.0
    delta: float = 1e-5
    accountant: str = "rdp"  # rdp | prv (Opacus)
    noise_multiplier: float | None = None  # None: calibrated for (epsilon, delta, releases, sample_rate)
    clip: float = 1.0  # L2 bound of one real sample's contribution
    batch_real: int = 256  # expected real images per class in one release (sets the Poisson sample rate)
    sample_rate: float = 0.0  # 0: batch_real * classes / N
    releases: int = 100
    non_private: bool = False  # True: sigma = 0, no guarantee (the comparison baseline)
    init: str = "noise"  # noise | real (real only when non_private: it would publish real images)
    lr_img: float = 0.1  # Adam on the pixels
    amp: bool = False


class _Private(Distiller):
    """Budget set-up, Poisson sampling and metadata shared by dp-dm and dp-dc."""

    eval_augment = None

    def planned_releases(self) -> int:
        """How many releases the noise is calibrated for."""
        return int(self.cfg.releases)

    def setup_privacy(self) -> dict:
        """Check the options and calibrate the noise: the privacy record the state starts with."""
        cfg, n = self.cfg, self.real.size("train")
        if cfg.init not in ("noise", "real"):
            raise ConfigError(f"init must be noise or real; got {cfg.init!r}.")
        if cfg.clip <= 0:
            raise ConfigError(f"clip must be positive; got {cfg.clip}.")
        q = cfg.sample_rate or min(1.0, cfg.batch_real * self.real.num_classes / n)
        if not 0 < q <= 1:
            raise ConfigError(f"sample_rate must lie in (0, 1]; got {q}.")
        releases = self.planned_releases()
        if releases < 1:
            raise ConfigError(f"releases must be >= 1; got {releases}.")
        info = {"sample_rate": q, "clip": cfg.clip, "planned_releases": releases, "released": 0,
                "exhausted": False, "sampling": "poisson", "init": cfg.init}
        if cfg.non_private:
            if cfg.noise_multiplier:
                raise ConfigError("non_private: true runs without noise; drop noise_multiplier or non_private.")
            return {**info, "non_private": True, "noise_multiplier": 0.0}
        if cfg.init == "real":
            raise ConfigError("init: real would publish real training images in the summary, which no privacy "
                              "guarantee covers: use init: noise, or non_private: true for a non-private run.")
        budget = PrivacyBudget(cfg.epsilon, cfg.delta, cfg.accountant)
        if cfg.noise_multiplier is None:
            sigma = calibrate_noise(cfg.epsilon, cfg.delta, q, releases, cfg.accountant)
        elif cfg.noise_multiplier <= 0 or not math.isfinite(cfg.noise_multiplier):
            raise ConfigError(f"noise_multiplier {cfg.noise_multiplier} gives no privacy: a private run needs "
                              "noise > 0 (or leave it unset to calibrate it for the target epsilon); for a run "
                              "without noise ask for it explicitly with non_private: true.")
        else:
            sigma = float(cfg.noise_multiplier)
        allowed = budget.max_releases(sigma, q, limit=releases)  # one accountant call when sigma was calibrated
        if allowed < 1:
            raise ConfigError(f"Even one release at noise multiplier {sigma:.4g} and sample rate {q:.4g} exceeds "
                              f"epsilon {cfg.epsilon}: raise the noise multiplier or the target epsilon.")
        return {**info, "non_private": False, "noise_multiplier": sigma, "allowed_releases": allowed,
                "budget": budget.as_dict(with_epsilon=False)}

    def try_release(self, state: DistillState) -> bool:
        """Account one release; False (and the run releases nothing more) when it would exceed the target."""
        p = state.info["privacy"]
        if p["exhausted"] or p["released"] >= p["planned_releases"]:
            p["exhausted"] = True
            return False
        if not p["non_private"]:
            # every release has the same (sigma, q), so "the next one would exceed" is exactly
            # "released == allowed", with allowed = Opacus' largest count within the target (set-up time)
            if p["released"] >= p["allowed_releases"]:
                p["exhausted"] = True
                return False
            b = p["budget"]
            budget = PrivacyBudget(b["target_epsilon"], b["delta"], b["accountant"], b["history"])
            budget.spend(p["noise_multiplier"], p["sample_rate"], 1, checked=True)
            p["budget"] = budget.as_dict(with_epsilon=False)
        p["released"] += 1
        return True

    def budget(self, state: DistillState) -> PrivacyBudget | None:
        """The run's :class:`PrivacyBudget` (None for a non-private run)."""
        b = state.info["privacy"].get("budget")
        return None if b is None else PrivacyBudget(b["target_epsilon"], b["delta"], b["accountant"], b["history"])

    def poisson_batch(self, state: DistillState, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Each training image independently with probability ``q`` (the run's sample rate, kept in the state's
        privacy record): the sampling RDP/PRV accounting assumes."""
        q = state.info["privacy"]["sample_rate"]
        if q >= 1.0:
            return self.real.images(device=self.device), self.real.labels(device=self.device)
        mask = torch.rand(self.real.size("train"), generator=g) < q
        idx = mask.nonzero().flatten()
        return self.real.images(idx, device=self.device), self.real.labels(idx, device=self.device)

    def expected_counts(self, q: float) -> torch.Tensor:
        """Expected per-class batch sizes ``q * N_c`` (class sizes are treated as public, as in DP-MERF)."""
        return (torch.tensor(self.real.class_counts(), dtype=torch.float32) * q).clamp(min=1.0).to(self.device)

    def base_state(self, g: torch.Generator) -> DistillState:
        """Noise images (real ones only for ``non_private`` runs), Adam on them, and the privacy record
        (``info["privacy"]``: sample rate, noise, releases made, the accountant's history), the whole run state."""
        priv = self.setup_privacy()
        check_private_net(self.new_net(generator("dp-check", self.seed)))
        x, y, _ = init_pixels(self.real, self.ipc, g, self.device, self.cfg.init, self.name)
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.cfg.lr_img)
        return DistillState(params={"x": x}, optimizers={"syn": opt}, buffers={"y": y}, info={"privacy": priv})

    def privacy_meta(self, state: DistillState) -> dict:
        """The summary's ``meta["privacy"]``: mechanism, sampling, noise, releases and spent epsilon."""
        p = state.info["privacy"]
        out = {"mechanism": self.mechanism, "sampling": p["sampling"], "sample_rate": p["sample_rate"],
               "clip": p["clip"], "noise_multiplier": p["noise_multiplier"], "releases": p["released"],
               "planned_releases": p["planned_releases"], "init": p["init"], "non_private": p["non_private"]}
        if p["non_private"]:
            return {**out, "epsilon": float("inf"), "delta": 0.0, "accountant": None}
        budget = self.budget(state)
        return {**out, "epsilon": budget.spent(), "delta": budget.delta, "accountant": budget.accountant,
                "target_epsilon": budget.epsilon, "history": budget.history}

    def export(self, state: DistillState):
        """The synthetic images with the privacy record of the run."""
        return self.synthetic(state, state.params["x"], state.buffers["y"],
                              meta={"privacy": self.privacy_meta(state)})


# ---------------------------------------------------------------------- dp-dm
@dataclass
class DPDMConfig(PrivateConfig):
    """Options of dp-dm (DP-MERF, Harder et al., AISTATS 2021; NDPDC, Zheng & Li 2023)."""
    steps: int = 2000
    quick_steps: int = 200
    releases: int = 100


@register_method("dp-dm")
class DPDM(_Private):
    """dp-dm: DP distribution matching on noisy means of clipped embeddings (DP-MERF, Harder et al., AISTATS 2021)."""
    family = "private"
    paper = ("Harder et al., AISTATS 2021 (DP-MERF); Zheng & Li 2023 (NDPDC): DP distribution matching with "
             "clipped, noised mean embeddings")
    Config = DPDMConfig
    mechanism = "gaussian: noisy per-class sum of clipped per-sample embeddings of random networks"

    def release_net(self, r: int) -> nn.Module:
        """The random network of release ``r`` (rebuilt from its seed, so only the released means are stored)."""
        net = self.new_net(generator("dp-dm-net", self.seed, r))
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def init(self, g: torch.Generator) -> DistillState:
        """The private start (:meth:`base_state`) and room for every release's noisy class means."""
        state = self.base_state(g)
        d = self.release_net(0).embed(self.real.images(slice(0, 1), device=self.device)).flatten(1).shape[1]
        state.buffers["targets"] = torch.zeros(self.cfg.releases, self.real.num_classes, d, device=self.device)
        return state

    def release(self, state: DistillState, r: int, g: torch.Generator) -> None:
        """Release ``r``: noisy per-class means of clipped embeddings of a Poisson batch (random net ``r``)."""
        p = state.info["privacy"]
        xr, yr = self.poisson_batch(state, g)
        net = self.release_net(r)
        sums = clipped_class_embedding_sums(net, xr, yr, self.real.num_classes, p["clip"])
        sums = sums + gaussian_noise(sums.shape, p["noise_multiplier"] * p["clip"], g, self.device)
        state.buffers["targets"][r] = sums / self.expected_counts(p["sample_rate"])[:, None]

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """Release while the budget allows (else reuse a released target); match the images' means to it."""
        released = state.info["privacy"]["released"]
        if self.try_release(state):
            r = released
            self.release(state, r, g)
        elif released == 0:
            return {"budget_exhausted": 1.0}
        else:  # post-processing: reuse a released target
            r = int(torch.randint(released, (1,), generator=g))
        net = self.release_net(r)
        x = state.params["x"]
        k = self.real.num_classes
        es = clip_rows(net.embed(x).float().flatten(1), self.cfg.clip).view(k, self.ipc, -1).mean(1)
        cls = torch.tensor(self.classes, device=x.device)
        loss = ((state.buffers["targets"][r][cls] - es[cls]) ** 2).sum() / self.cfg.clip ** 2
        self.update(state, loss)
        return {"loss": float(loss.detach()), "released": float(state.info["privacy"]["released"])}


# ---------------------------------------------------------------------- dp-dc
@dataclass
class DPDCConfig(PrivateConfig):
    """Options of dp-dc (PSG, Chen, Kerkouche & Fritz, NeurIPS 2022): DC's loop on private gradients."""
    steps: int = 200
    quick_steps: int = 10
    releases: int = 0  # 0: steps x outer_loop (the paper's full run)
    batch_real: int = 64
    outer_loop: int = 0  # 0: DC's schedule for the IPC
    inner_loop: int = 0
    lr_net: float = 0.01
    batch_train: int = 256
    dis_metric: str = "ours"
    grad_chunk: int = 64


@register_method("dp-dc")
class DPDC(_Private):
    """dp-dc (PSG, Chen, Kerkouche & Fritz, NeurIPS 2022): gradient matching on clipped, noised real gradients."""
    family = "private"
    paper = ("Chen, Kerkouche & Fritz, NeurIPS 2022, Private Set Generation with Discriminative Information "
             "(PSG): DP gradient matching")
    Config = DPDCConfig
    eval_augment = "dc"  # PSG's code evaluates with DC's get_daparam augmentation
    mechanism = "gaussian: noisy per-class sum of clipped per-sample loss gradients (DP-SGD style)"

    def loops(self) -> tuple[int, int]:
        """``(outer_loop, inner_loop)``: configured, or DC's schedule for the IPC."""
        outer, inner = schedule_for(self.ipc)
        return self.cfg.outer_loop or outer, self.cfg.inner_loop or inner

    def planned_releases(self) -> int:
        """``releases``, or one per outer round of every step (``steps x outer_loop``)."""
        return int(self.cfg.releases or self.cfg.steps * self.loops()[0])

    def init(self, g: torch.Generator) -> DistillState:
        """The private start (:meth:`base_state`)."""
        return self.base_state(g)

    def noisy_class_grads(self, state: DistillState, net: nn.Module, g: torch.Generator) -> list[torch.Tensor]:
        """One release: per-class sums of clipped per-sample gradients plus noise, over expected counts."""
        p = state.info["privacy"]
        xr, yr = self.poisson_batch(state, g)
        sums = clipped_class_grad_sums(net, xr, yr, self.real.num_classes, p["clip"], self.cfg.grad_chunk)
        std = p["noise_multiplier"] * p["clip"]
        counts = self.expected_counts(p["sample_rate"])
        return [(s + gaussian_noise(s.shape, std, g, self.device)) / counts.view(-1, *[1] * (s.ndim - 1))
                for s in sums]

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One network: per round, a release and an image update; the network trains on the images between."""
        cfg = self.cfg
        if state.info["privacy"]["exhausted"]:
            return {"budget_exhausted": 1.0}
        outer, inner = self.loops()
        x, y = state.params["x"], state.buffers["y"]
        net = self.new_net(g)
        total, rounds = 0.0, 0
        for ol in range(outer):
            if not self.try_release(state):
                break
            gr = self.noisy_class_grads(state, net, g)
            loss = x.new_zeros(())
            for c in self.classes:
                sel = y == c
                gs = loss_gradients(net, x[sel], y[sel], True, self.autocast())
                loss = loss + gradient_distance(gs, [t[c] for t in gr], cfg.dis_metric)
            self.update(state, loss)
            total, rounds = total + float(loss.detach()), rounds + 1
            if ol < outer - 1:
                fit(net, x.detach(), y, epochs=inner, lr=cfg.lr_net, momentum=0.5, weight_decay=0.0,
                    batch_size=cfg.batch_train, decay_at_half=False, generator=g, amp=cfg.amp)
        return {"loss": total / max(1, rounds), "released": float(state.info["privacy"]["released"])}
