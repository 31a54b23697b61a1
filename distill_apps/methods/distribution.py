"""Distribution matching: DM (Zhao & Bilen, WACV 2023, "Dataset Condensation with Distribution Matching").

Each step samples a fresh randomly initialised network and moves the synthetic images so that, class by class,
their mean embedding matches the mean embedding of a real batch of the same class, both seen through the same
DSA augmentation. All classes go through one batched forward pass (real side without autograd).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..augment import DSA, DEFAULT_STRATEGY
from ..config import MethodConfig
from ..engine import Distiller, DistillState, register_method
from ..matching import mean_embedding_distance
from ..parameterisation import pixel_state


@dataclass
class DMConfig(MethodConfig):
    """Options of DM (Zhao & Bilen, WACV 2023): image learning rate, real batch per class, init, DSA strategy."""
    steps: int = 20000
    quick_steps: int = 200
    lr_img: float = 1.0
    momentum_img: float = 0.5
    batch_real: int = 256
    init: str = "real"
    dsa_strategy: str = DEFAULT_STRATEGY
    #: texture mode (trajectory matching's tileable textures): shift every synthetic image by a random circular
    #: offset each step, so its wrap-around edges are matched like any interior pixels and it tiles seamlessly
    roll: bool = False


def random_roll(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each (C, H, W) image of ``x`` circularly shifted by its own random (dy, dx) (differentiable)."""
    n, _, h, w = x.shape
    dy = torch.randint(h, (n, 1), generator=g)
    dx = torch.randint(w, (n, 1), generator=g)
    rows = ((torch.arange(h).view(1, h) + dy) % h).to(x.device)
    cols = ((torch.arange(w).view(1, w) + dx) % w).to(x.device)
    x = x.gather(2, rows.view(n, 1, h, 1).expand(-1, x.shape[1], -1, w))
    return x.gather(3, cols.view(n, 1, 1, w).expand(-1, x.shape[1], h, -1))


@register_method("dm")
class DM(Distiller):
    """DM (Zhao & Bilen, WACV 2023): per-class mean embeddings of random networks, synthetic vs real."""
    family = "distribution"
    paper = "Zhao & Bilen, WACV 2023, Dataset Condensation with Distribution Matching"
    Config = DMConfig
    eval_augment = "dsa"
    multilabel = True  # per-label means of the images positive for each label

    def init(self, g: torch.Generator) -> DistillState:
        """Learnable images from real ones (or noise) and the DSA augmenter shared by both sides."""
        self._aug = DSA.for_dataset(self.real.flip_invariant, strategy=self.cfg.dsa_strategy)
        return pixel_state(self, g, self.cfg.init)

    def embeddings(self, net, g: torch.Generator, x_syn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real (K, B, d) and synthetic (K, ipc, d) embeddings of this rank's classes under one DSA draw per class."""
        k, b = len(self.classes), self.cfg.batch_real
        xr, xs = self.siamese_batches(x_syn, g, self._aug, b)
        embed = self.embed_fn(net)
        with torch.no_grad(), self.autocast():  # chunks of 256 keep activations cache- and allocator-friendly
            er = torch.cat([embed(c).float() for c in xr.split(256)]).view(k, b, -1)
        self.check_memory("real embeddings")
        with self.autocast():
            es = net.embed(xs).float().view(k, self.ipc, -1)
        self.check_memory("synthetic embeddings")
        return er, es

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One random network; the synthetic images move toward the real per-class mean embeddings."""
        net = self.new_net(g)
        for p in net.parameters():
            p.requires_grad_(False)
        x = state.params["x"]
        er, es = self.embeddings(net, g, random_roll(x, g) if self.cfg.roll else x)
        loss = mean_embedding_distance(er, es)
        self.update(state, loss)
        return {"loss": float(loss.detach())}

    def export(self, state: DistillState):
        """The synthetic images and their class ids."""
        return self.synthetic(state, state.params["x"], state.buffers["y"])
