"""Coreset baselines the distillation papers compare against: random, herding and k-center selection.

Herding follows Welling (2009) / Rebuffi et al. (iCaRL, 2017): greedily pick the samples whose running mean best
matches the class mean in feature space. K-center is the greedy 2-approximation of Sener & Savarese (2018):
repeatedly pick the sample farthest from those already chosen. Features come from a ConvNet briefly trained on
the real data (as in the DC paper's baselines), from a random network, or from raw pixels.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import MethodConfig
from ..engine import Distiller, DistillState, register_method
from ..train import fit


@dataclass
class CoresetConfig(MethodConfig):
    """Options of the coreset baselines: the feature space (``embedding``) and how its network is trained."""
    steps: int = 0
    quick_steps: int = 0
    embedding: str = "trained"  # trained | random | pixels
    embed_epochs: int = 1
    embed_train_size: int = 10000  # images used to train the feature network (subsampled for speed)


class _Coreset(Distiller):
    family = "coreset"
    Config = CoresetConfig
    multilabel = True  # per-label selection among the images positive for each label

    @abstractmethod
    def select(self, feats: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
        """Indices (into ``feats``, the features of one class) of the ``k`` chosen samples."""

    def features(self, g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function from training indices (one class at a time) to their features, so only one class's
        images and features are ever held."""
        cfg, r = self.cfg, self.real
        if cfg.embedding == "pixels":
            return lambda ix: r.images(ix, device=self.device).flatten(1)
        net = self.new_net(g)
        if cfg.embedding == "trained":
            n = min(cfg.embed_train_size, r.size("train"))
            idx = torch.randperm(r.size("train"), generator=g)[:n]
            fit(net, r.view("train", self.device, idx), r.labels(idx), epochs=cfg.embed_epochs, lr=0.01, generator=g,
                amp=cfg.amp, label_kind=r.target_kind)
        elif cfg.embedding != "random":
            from ..errors import ConfigError

            raise ConfigError(f"embedding must be trained, random or pixels; got {cfg.embedding!r}.")
        net.eval()

        def embed(ix: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), self.autocast():
                return torch.cat([net.embed(r.images(ix[i:i + 2048], device=self.device)).float()
                                  for i in range(0, len(ix), 2048)])

        return embed

    def init(self, g: torch.Generator) -> DistillState:
        """Select ``ipc`` training images of every class once (:meth:`select` on :meth:`features`)."""
        feats = self.features(g)
        chosen = []
        for c in range(self.real.num_classes):
            ix = self.real.by_class[c]
            chosen.append(ix[self.select(feats(ix), self.ipc, g).cpu()])
        idx = torch.cat(chosen)
        y = torch.arange(self.real.num_classes).repeat_interleave(self.ipc)
        state = DistillState(buffers={"index": idx, "y": y})
        if self.real.multilabel:
            state.buffers["multi_hot"] = self.real.y_train[idx].float()
        return state

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """Nothing to optimise: a coreset is chosen at ``init``."""
        return {}

    def export(self, state: DistillState):
        """The chosen real images, their training indices in ``meta["train_index"]``."""
        idx = state.buffers["index"]
        return self.synthetic(state, self.real.images(idx), state.buffers["y"], meta={"train_index": idx.tolist()})


@register_method("random")
class RandomSubset(_Coreset):
    """A class-balanced random subset (the baseline every paper reports)."""

    paper = "random class-balanced subset"

    def features(self, g):
        """No features: a random subset needs none."""
        return lambda ix: torch.zeros(len(ix), 1)

    def select(self, feats, k, g):
        """``k`` indices uniformly at random without replacement."""
        return torch.randperm(len(feats), generator=g)[:k]


@register_method("herding")
class Herding(_Coreset):
    """Herding (Welling 2009; iCaRL, Rebuffi et al. 2017): greedy matching of the class mean in feature space."""
    paper = "Welling 2009, Herding dynamical weights; Rebuffi et al. 2017 (iCaRL)"

    def select(self, feats, k, g):
        """Greedily the sample that brings the running mean of the chosen features closest to the class mean."""
        mu = feats.mean(0)
        picked: list[int] = []
        running = torch.zeros_like(mu)
        avail = torch.ones(len(feats), dtype=torch.bool, device=feats.device)
        for t in range(1, k + 1):
            gap = ((mu - (running + feats) / t) ** 2).sum(1)
            gap[~avail] = float("inf")
            i = int(gap.argmin())
            picked.append(i)
            avail[i] = False
            running += feats[i]
        return torch.tensor(picked)


@register_method("kcenter")
class KCenter(_Coreset):
    """K-center (Sener & Savarese, ICLR 2018): the greedy 2-approximation of the minimax facility location."""
    paper = "Sener & Savarese 2018, Active Learning for CNNs: A Core-Set Approach"

    def select(self, feats, k, g):
        """From the most central sample, repeatedly the sample farthest from those already chosen."""
        first = int(((feats - feats.mean(0)) ** 2).sum(1).argmin())  # start at the most central sample
        picked = [first]
        dist = ((feats - feats[first]) ** 2).sum(1)
        for _ in range(k - 1):
            i = int(dist.argmax())
            picked.append(i)
            dist = torch.minimum(dist, ((feats - feats[i]) ** 2).sum(1))
        return torch.tensor(picked)
