"""Recommender-data distillation: Distill-CF through the closed-form infinite-width autoencoder (∞-AE).

Sachdeva et al., NeurIPS 2022, "Infinite Recommendation Networks: A Data-Centric Approach".

* ∞-AE: an autoencoder of infinite width is kernel ridge regression from a user's interaction row to itself,
  with the neural tangent kernel ``K`` of the network. Fitted on a support matrix ``X_s`` (users x items):
  ``alpha = (K(X_s, X_s) + lam I)^-1 X_s`` and a user ``x`` is scored by ``K(x, X_s) alpha``. ``lam`` is
  ``reg`` times the mean of ``diag K`` so the same ``reg`` works for any support size. The kernel here is the
  NTK of a one-hidden-layer ReLU network (arc-cosine kernels of order 0 and 1).
* ``distill_cf``: a budget of ``ipc`` synthetic users, each a row of learnable item logits. A step samples a
  fuzzy interaction matrix with Gumbel-softmax (``gamma`` relaxed draws per synthetic user, combined as
  ``1 - prod(1 - draw)`` = "at least one draw picked the item"), fits ∞-AE on it in closed form, and scores a
  batch of real users; the loss is the multinomial log-likelihood of their training interactions under the
  softmax of the scores (differentiated through the linear solve into the logits). The exported matrix is the
  noise-free inclusion probability ``1 - (1 - softmax(logits))^gamma``.

Data: MovieLens-100K ``u.data`` (the registered dataset ``ml-100k``); every rating counts as an interaction (implicit feedback); ``test_fraction``
of each user's interactions (seeded) is held out. Metrics: nDCG@10 and HR@10 (hits in the top 10 over
``min(10, held-out)``, as in the ∞-AE code), training items excluded from the ranking, averaged over users
with held-out items.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import safe_io
from ..config import MethodConfig
from ..data.registry import register_dataset
from ..engine import Distiller, DistillState, register_method
from ..errors import ConfigError, DataError
from ..evaluate import EvalResult
from ..modality import Modality, register_modality
from ..runtime import generator
from ..summaries import Summary, check_eval_options, header_errors, register_summary, resolve_data

KIND = "synthetic_interactions"
FORMAT_VERSION = 1


class EmptyInteractionsError(DataError):
    """An interaction file or matrix with no interactions."""


# ---------------------------------------------------------------------- data
@dataclass(repr=False)
class Interactions:
    """Implicit feedback: ``train`` and held-out ``test`` binary matrices (users x items), disjoint."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    num_classes: int = 1  # the Distiller base deals "classes" over ranks; a recommender has one task
    modality: ClassVar[str] = "recsys"

    @property
    def num_users(self) -> int:
        """Number of users."""
        return int(self.train.shape[0])

    @property
    def num_items(self) -> int:
        """Number of items."""
        return int(self.train.shape[1])

    def __repr__(self) -> str:
        from ..reprs import field_bytes, human_bytes, one_line

        return one_line("Interactions", [self.name, f"{self.num_users} users x {self.num_items} items",
                                         f"{int(self.train.count_nonzero())} train / "
                                         f"{int(self.test.count_nonzero())} test interactions",
                                         human_bytes(field_bytes(self))])

    def check_ipc(self, ipc: int) -> None:
        """The budget is the number of synthetic users (in total), a positive integer."""
        if not isinstance(ipc, int) or ipc < 1:
            raise ConfigError(f"For interactions, ipc is the number of synthetic users (a positive integer); "
                              f"got {ipc!r}.")

    def to(self, device: torch.device) -> "Interactions":
        """The matrices stay in host memory; the distiller moves what it uses."""
        return self


def interactions_from_pairs(users: torch.Tensor, items: torch.Tensor, *, test_fraction: float = 0.2, seed: int = 0,
                            name: str = "interactions", shape: tuple[int, int] | None = None) -> Interactions:
    """Binary user-item matrices from id pairs; ``test_fraction`` of every user's items held out (seeded)."""
    if users.numel() == 0:
        raise EmptyInteractionsError(f"{name}: the interaction list is empty. Give at least one (user, item) pair "
                                     "(a MovieLens u.data has 'user<TAB>item<TAB>rating<TAB>time' lines).")
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be in [0, 1); got {test_fraction}.")
    n_u, n_i = shape or (int(users.max()) + 1, int(items.max()) + 1)
    full = torch.zeros(n_u, n_i)
    full[users, items] = 1.0
    g = generator("interactions-split", seed)
    test = torch.zeros_like(full)
    for u in range(n_u):
        its = full[u].nonzero().flatten()
        k = int(round(len(its) * test_fraction))
        if k and len(its) > 1:
            test[u, its[torch.randperm(len(its), generator=g)[:k]]] = 1.0
    return Interactions(name, full - test, test)


def load_movielens(root: str | os.PathLike | None = None, *, path: str | os.PathLike | None = None,
                   test_fraction: float = 0.2, seed: int = 0) -> Interactions:
    """MovieLens-100K from ``<data root>/movielens/ml-100k/u.data`` (or ``path``): 943 users x 1682 items."""
    from ..data.registry import data_root

    file = Path(path) if path else data_root(root) / "movielens" / "ml-100k" / "u.data"
    if not file.is_file():
        raise DataError(f"MovieLens file {file} not found: point --data-root ($DISTILL_APPS_DATA) at the folder "
                        "holding movielens/ml-100k/u.data, or pass path=.")
    users, items = [], []
    with open(file) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                users.append(int(parts[0]) - 1)
                items.append(int(parts[1]) - 1)
            except (IndexError, ValueError) as exc:
                raise DataError(f"{file}, line {n}: expected 'user item rating timestamp' integers; got {line!r}.") from exc
    return interactions_from_pairs(torch.tensor(users, dtype=torch.long), torch.tensor(items, dtype=torch.long),
                                   test_fraction=test_fraction, seed=seed, name="ml-100k")


@register_dataset("ml-100k", files=("movielens/ml-100k/u.data",), modality="recsys",
                  description="MovieLens-100K implicit feedback (943 users x 1682 items, 20 % of each user held out)")
def _ml100k(root: Path, download: bool = False) -> Interactions:
    """MovieLens-100K (``movielens/ml-100k``) as implicit-feedback interactions."""
    return load_movielens(root)


# ---------------------------------------------------------------------- the ∞-AE
def relu_ntk(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """NTK of a one-hidden-layer ReLU network between the rows of ``a`` and ``b`` (Jacot et al. 2018):
    ``|a||b|/(2 pi) (sin t + (pi - t) cos t) + <a, b> (pi - t)/(2 pi)``, ``t`` the angle between the rows."""
    na, nb = a.norm(dim=1).clamp_min(1e-9), b.norm(dim=1).clamp_min(1e-9)
    dot = a @ b.T
    cos = (dot / (na[:, None] * nb[None, :])).clamp(-1 + 1e-6, 1 - 1e-6)  # finite arccos gradient at cos = 1
    t = torch.arccos(cos)
    nngp = na[:, None] * nb[None, :] / (2 * math.pi) * (torch.sin(t) + (math.pi - t) * cos)
    return nngp + dot * (math.pi - t) / (2 * math.pi)


def infinite_ae_fit(support: torch.Tensor, reg: float = 1.0) -> torch.Tensor:
    """∞-AE's closed form: ``alpha = (K + lam I)^-1 X``, ``lam = reg * mean(diag K)`` (Cholesky solve)."""
    if support.shape[0] == 0 or not bool((support != 0).any()):
        raise EmptyInteractionsError("The ∞-AE support matrix has no interactions; give at least one user with "
                                     "at least one item.")
    k = relu_ntk(support, support)
    lam = reg * k.diagonal().mean()
    chol = torch.linalg.cholesky(k + lam * torch.eye(k.shape[0], dtype=k.dtype, device=k.device))
    return torch.cholesky_solve(support, chol)


def infinite_ae_scores(users: torch.Tensor, support: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Item scores of ``users`` (their interaction rows) from an ∞-AE fitted on ``support``."""
    return relu_ntk(users, support) @ alpha


def ranking_metrics(scores: torch.Tensor, train: torch.Tensor, test: torch.Tensor, k: int = 10) -> dict[str, float]:
    """nDCG@k and HR@k over users with held-out items; training items are excluded from the ranking."""
    keep = test.sum(1) > 0
    scores, train, test = scores[keep], train[keep], test[keep]
    scores = scores.masked_fill(train > 0, float("-inf"))
    top = scores.topk(k, dim=1).indices
    hits = test.gather(1, top)
    n_test = test.sum(1)
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float))
    dcg = (hits * disc).sum(1)
    ideal = torch.stack([disc[: int(min(k, n))].sum() for n in n_test])
    hr = hits.sum(1) / n_test.clamp(max=k)
    return {f"ndcg@{k}": float((dcg / ideal).mean()), f"hr@{k}": float(hr.mean()), "users": int(keep.sum())}


# ---------------------------------------------------------------------- the summary
@register_summary
@dataclass(repr=False)
class SyntheticInteractions(Summary):
    """A distilled (or sub-sampled) support set of ``matrix`` (users x items, values in [0, 1]) for the ∞-AE."""

    matrix: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = KIND
    modality: ClassVar[str] = "recsys"

    def validate(self) -> None:
        """Refuse an empty matrix and values that are not finite or outside [0, 1] (DataError)."""
        m = self.matrix
        if m.ndim != 2 or m.shape[0] == 0:
            raise DataError(f"Synthetic interactions must be a non-empty (users, items) matrix; got {tuple(m.shape)}.")
        if not torch.isfinite(m).all() or float(m.min()) < 0 or float(m.max()) > 1:
            raise DataError("Synthetic interactions must be finite and in [0, 1].")

    def __len__(self) -> int:
        """Number of synthetic users."""
        return int(self.matrix.shape[0])

    def contents(self) -> dict[str, Any]:
        """Users, items and density, for ``describe``."""
        return {"users": len(self), "items": int(self.matrix.shape[1]), "density": float(self.matrix.mean())}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the matrix with safe_io (safetensors + JSON header, atomic, checksummed)."""
        self.validate()
        return safe_io.write(path, {"matrix": self.matrix.float()}, {"meta": self.meta}, KIND, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SyntheticInteractions":
        """Read and validate a matrix written by :meth:`save`."""
        t, h = safe_io.read(path, KIND, FORMAT_VERSION, {"matrix"})
        with header_errors(path, KIND):
            s = cls(t["matrix"], dict(h.get("meta", {})))
            s.validate()
        return s

    def evaluate(self, data: "Interactions | str | None" = None, *, runs: int = 1, epochs: int | None = None,
                 lr: float | None = None, seed: int = 0, device: str = "auto", data_root: str | None = None,
                 model: str | None = None, protocol: str | None = None, augment: str | None = None,
                 progress: bool = False, reg: float = 1.0, k: int = 10) -> EvalResult:
        """The ∞-AE fitted on the summary in closed form (:func:`evaluate_interactions`), nDCG@k on ``data``'s
        held-out items. Deterministic: ``runs``, ``epochs``, ``lr`` and ``seed`` have nothing to set."""
        check_eval_options(self, model=model, protocol=protocol, augment=augment, own_model="inf-ae",
                           own_protocol="krr")
        if lr is not None:
            raise ConfigError("The ∞-AE is fitted in closed form: it has no learning rate (omit lr / --lr).")
        return evaluate_interactions(self, resolve_data(self, data, data_root), reg=reg, k=k)


# ---------------------------------------------------------------------- Distill-CF
@dataclass
class DistillCFConfig(MethodConfig):
    """Distill-CF options (Sachdeva et al., NeurIPS 2022): ∞-AE ridge, Gumbel-softmax sampling of synthetic users."""
    steps: int = 500
    quick_steps: int = 100
    amp: bool = False
    lr: float = 0.04
    reg: float = 1.0  # ∞-AE ridge, relative to the kernel's mean diagonal
    gamma: int = 100  # Gumbel-softmax draws per synthetic user (about a MovieLens user's interaction count)
    tau: float = 0.5  # Gumbel-softmax temperature
    batch_users: int = 512  # real users scored per step
    init: str = "real"  # logits from random real users ("real") or small noise ("noise")


@register_method("distill_cf")
class DistillCF(Distiller):
    """Distill-CF (Sachdeva et al., NeurIPS 2022): synthetic users as item distributions, learned through the
    closed-form ∞-AE."""
    family = "recsys"
    paper = "Sachdeva et al., NeurIPS 2022, Infinite Recommendation Networks: A Data-Centric Approach"
    Config = DistillCFConfig
    modality: ClassVar[str] = "recsys"

    def __init__(self, real: Interactions, ipc: int, cfg: DistillCFConfig, device: torch.device,
                 model: str = "inf-ae", seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Check the model (the ∞-AE) and that there are training interactions."""
        if model != "inf-ae":
            raise ConfigError(f"distill_cf distils for the ∞-AE; got model {model!r} (omit --model).")
        if not bool((real.train != 0).any()):
            raise EmptyInteractionsError(f"{real.name}: the training interaction matrix is empty.")
        super().__init__(real, ipc, cfg, device, model, seed, rank, world_size)
        self.data = real
        self._train = real.train.to(device)

    def init(self, g: torch.Generator) -> DistillState:
        """Synthetic users' item logits, from random real users (``init="real"``) or noise."""
        n_i = self.data.num_items
        if self.cfg.init == "real":
            rows = torch.randperm(self.data.num_users, generator=g)[: self.ipc]
            rows = rows[torch.arange(self.ipc) % len(rows)]
            logits = self.data.train[rows] * 3.0 + 0.01 * torch.randn(self.ipc, n_i, generator=g)
        elif self.cfg.init == "noise":
            logits = 0.01 * torch.randn(self.ipc, n_i, generator=g)
        else:
            raise ConfigError(f"distill_cf init must be 'real' or 'noise'; got {self.cfg.init!r}.")
        logits = logits.to(self.device).requires_grad_(True)
        return DistillState(params={"logits": logits},
                            optimizers={"syn": torch.optim.Adam([logits], lr=self.cfg.lr)})

    def sample(self, logits: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """A relaxed interaction matrix: ``gamma`` Gumbel-softmax draws per synthetic user, OR-ed together."""
        u = torch.rand((self.cfg.gamma, *logits.shape), generator=g).to(logits).clamp(1e-10, 1 - 1e-10)
        draws = torch.softmax((logits + (-torch.log(-torch.log(u)))) / self.cfg.tau, dim=-1)
        return 1 - torch.exp(torch.log1p(-draws.clamp(max=1 - 1e-6)).sum(0))

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """Sample synthetic users (Gumbel-softmax), fit the ∞-AE on them in closed form and score a batch of real users
        against their held interactions."""
        xs = self.sample(state.params["logits"], g)
        alpha = infinite_ae_fit(xs, self.cfg.reg)
        idx = torch.randperm(self.data.num_users, generator=g)[: self.cfg.batch_users].to(self.device)
        xu = self._train[idx]
        xu = xu[xu.sum(1) > 0]
        scores = infinite_ae_scores(xu, xs, alpha)
        target = xu / xu.sum(1, keepdim=True)
        loss = -(target * torch.log_softmax(scores, dim=1)).sum(1).mean()
        self.update(state, loss)
        return {"loss": float(loss.detach()), "density": float(xs.detach().mean())}

    def matrix(self, state: DistillState) -> torch.Tensor:
        """Expected interactions of each synthetic user: ``1 - (1 - p) ** gamma`` over ``gamma`` draws."""
        p = torch.softmax(state.params["logits"].detach(), dim=-1)
        return 1 - (1 - p) ** self.cfg.gamma

    def export(self, state: DistillState) -> SyntheticInteractions:
        """The synthetic interaction matrix as a summary."""
        return SyntheticInteractions(self.matrix(state).float().cpu().clone(),
                                     self.meta(state, synthetic_users=self.ipc, items=self.data.num_items))


def random_users(data: Interactions, users: int, seed: int = 0) -> SyntheticInteractions:
    """Baseline: ``users`` random real users' training rows as the ∞-AE support."""
    idx = torch.randperm(data.num_users, generator=generator("random-users", seed))[:users]
    return SyntheticInteractions(data.train[idx].clone(), {"method": "random", "dataset": data.name, "seed": seed,
                                                            "synthetic_users": users})


def evaluate_interactions(summary: SyntheticInteractions | None, data: Interactions, *, reg: float = 1.0,
                          k: int = 10) -> EvalResult:
    """∞-AE fitted on ``summary`` (``None``: on all real training rows), scoring every real user's training row
    against their held-out items: nDCG@k as the score (``metric``), HR@k and user counts in ``extra``."""
    t0 = time.perf_counter()
    support = data.train if summary is None else summary.matrix
    if summary is not None:
        summary.validate()
        if support.shape[1] != data.num_items:
            raise DataError(f"The summary has {support.shape[1]} items but {data.name} has {data.num_items}.")
    with torch.no_grad():
        alpha = infinite_ae_fit(support, reg)
        scores = infinite_ae_scores(data.train, support, alpha)
    out = ranking_metrics(scores, data.train, data.test, k)
    ndcg = out.pop(f"ndcg@{k}")
    return EvalResult(ndcg, 0.0, [ndcg], 1, "inf-ae", data.name, "krr", None, None, None, time.perf_counter() - t0,
                      {**out, "support_users": int(support.shape[0]), "reg": reg}, metric=f"ndcg@{k}")


def _random_baseline(data: Interactions, summary: SyntheticInteractions, ipc: int, seed: int,
                     device: str) -> SyntheticInteractions:
    """As many real users, drawn at random, as the summary holds."""
    return random_users(data, len(summary), seed)


register_modality(Modality("recsys", "synthetic users (in total, not per class)", "ml-100k", "inf-ae",
                           _random_baseline))
