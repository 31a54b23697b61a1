"""CAFE (Wang et al., CVPR 2022, "CAFE: Learning to Condense Dataset by Aligning Features").

Three parts, as in the paper:

* **Layer-wise feature alignment** ``L_f``: for every block of the network and every class, the mean feature map
  of the synthetic images is pulled towards the mean feature map of a real batch of that class (both under one
  shared DSA draw): ``sum_c sum_l ||mean f_l(S_c) - mean f_l(T_c)||^2``.
* **Discrimination loss** ``L_d``: the class-mean embeddings of the synthetic images act as a nearest-centre
  classifier for the real images (logits ``<f_L(x_real), mean f_L(S_c)>``); its cross-entropy on the real labels
  back-propagates into the synthetic images, so each synthetic class centre has to be discriminative.
* **Bi-level updates**: within one outer iteration the synthetic set is updated ``outer_loop`` times and between
  updates the network is trained on the synthetic set (``inner_loop`` epochs, :func:`~distill_apps.train.fit`),
  so the features are aligned along a training trajectory rather than only at random initialisation.

The loop schedule follows the DC/DSA code that CAFE builds on (``schedule_for``). The paper's *dynamic*
bi-level optimisation ends the image updates on one network early once they stop paying off; our reading of it:
when ``L_f`` has not fallen by a relative ``early_stop_tol`` for ``early_stop_patience`` updates in a row, the
step ends and the next step draws a fresh network (``early_stop_patience = 0`` runs the fixed schedule).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import DEFAULT_STRATEGY, DSA
from ..engine import Distiller, DistillState, register_method
from ..errors import ConfigError
from ..parameterisation import pixel_state
from ..train import fit
from .gradient import BilevelConfig
from .gradient import schedule_for


def block_features(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every block of a ConvNet-style ``net.features`` (a block ends before the next conv).

    Works for any module whose ``features`` is an ``nn.Sequential`` of conv blocks (our ConvNet); the last
    entry is the flattened-input embedding's feature map.
    """
    feats = getattr(net, "features", None)
    if not isinstance(feats, nn.Sequential):
        raise ConfigError(f"CAFE aligns per-block features and needs a ConvNet-style model with a `features` "
                          f"Sequential; {type(net).__name__} has none. Use --model convnet (any depth/width).")
    layers = list(feats)
    out: list[torch.Tensor] = []
    h = x
    for i, layer in enumerate(layers):
        h = layer(h)
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is None or isinstance(nxt, nn.Conv2d):
            out.append(h)
    return out


def feature_alignment_loss(fr: list[torch.Tensor], fs: list[torch.Tensor], k: int) -> torch.Tensor:
    """``L_f``: per class (``k`` classes, samples grouped class by class) and per block, squared distance of means."""
    total = fs[0].new_zeros(())
    for a, b in zip(fr, fs):
        mr = a.float().reshape(k, -1, *a.shape[1:]).mean(1)
        ms = b.float().reshape(k, -1, *b.shape[1:]).mean(1)
        total = total + ((mr - ms) ** 2).sum()
    return total


def discrimination_loss(er: torch.Tensor, es: torch.Tensor, k: int) -> torch.Tensor:
    """``L_d``: real embeddings ``er`` (k*B, d) classified by synthetic class centres from ``es`` (k*S, d)."""
    centres = es.float().reshape(k, -1, es.shape[1]).mean(1)  # (k, d)
    logits = er.float() @ centres.t()
    target = torch.arange(k, device=er.device).repeat_interleave(er.shape[0] // k)
    return F.cross_entropy(logits, target)


@dataclass
class CAFEConfig(BilevelConfig):
    """Options of CAFE (Wang et al., CVPR 2022): DC's bi-level loop plus ``beta`` and the dynamic early stop."""
    beta: float = 1.0  # weight of the discrimination loss L_d (the paper's beta; our default)
    dsa_strategy: str = DEFAULT_STRATEGY
    early_stop_patience: int = 2  # updates without an L_f improvement before moving to a fresh network; 0: off
    early_stop_tol: float = 1e-3  # relative L_f decrease that counts as an improvement


@register_method("cafe")
class CAFE(Distiller):
    """CAFE (Wang et al., CVPR 2022): layer-wise feature alignment plus a discrimination loss, bi-level updates."""
    family = "distribution"
    paper = "Wang et al., CVPR 2022, CAFE: Learning to Condense Dataset by Aligning Features"
    Config = CAFEConfig
    eval_augment = "dsa"

    def init(self, g: torch.Generator) -> DistillState:
        """Learnable images from real ones (or noise) and the DSA augmenter shared by both sides."""
        self._aug = DSA.for_dataset(self.real.flip_invariant, strategy=self.cfg.dsa_strategy)
        return pixel_state(self, g, self.cfg.init)

    def loss(self, net: nn.Module, x_syn: torch.Tensor, g: torch.Generator,
             beta: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_f + beta * L_d, L_f, L_d)`` for this rank's classes under one DSA draw per class."""
        beta = self.cfg.beta if beta is None else beta
        k = len(self.classes)
        xr, xs = self.siamese_batches(x_syn, g, self._aug, self.cfg.batch_real)
        with torch.no_grad(), self.autocast():
            fr = block_features(net, xr)
        with self.autocast():
            fs = block_features(net, xs)
        lf = feature_alignment_loss(fr, fs, k)
        ld = discrimination_loss(fr[-1].flatten(1), fs[-1].flatten(1), k)
        return lf + beta * ld, lf.detach(), ld.detach()

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One network: up to ``outer_loop`` image updates, training the network on the images in between."""
        cfg = self.cfg
        outer, inner = schedule_for(self.ipc)
        outer, inner = cfg.outer_loop or outer, cfg.inner_loop or inner
        x, y = state.params["x"], state.buffers["y"]
        net = self.new_net(g)
        lf_sum = ld_sum = 0.0
        best, stale, done = float("inf"), 0, 0
        for ol in range(outer):
            for p in net.parameters():
                p.requires_grad_(False)
            loss, lf, ld = self.loss(net, x, g)
            self.update(state, loss)
            lf_sum, ld_sum, done = lf_sum + float(lf), ld_sum + float(ld), done + 1
            stale = 0 if float(lf) < best * (1 - cfg.early_stop_tol) else stale + 1
            best = min(best, float(lf))
            if ol == outer - 1 or (cfg.early_stop_patience > 0 and stale >= cfg.early_stop_patience):
                break
            for p in net.parameters():
                p.requires_grad_(True)
            fit(net, x.detach(), y, epochs=inner, lr=cfg.lr_net, momentum=0.5, weight_decay=0.0,
                batch_size=cfg.batch_train, decay_at_half=False, generator=g, amp=cfg.amp,
                augment=lambda xb, gg: self._aug(xb, gg))
        return {"L_f": lf_sum / done, "L_d": ld_sum / done, "updates": done}

    def export(self, state: DistillState):
        """The synthetic images and their class ids."""
        return self.synthetic(state, state.params["x"], state.buffers["y"])
