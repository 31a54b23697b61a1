"""Seeded splits for the adapters: class-incremental orders and federated partitions (IID, Dirichlet)."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


def class_incremental_order(num_classes: int, num_experiences: int, seed: int = 0) -> list[list[int]]:
    """A seeded class order cut into ``num_experiences`` equal groups (Split-MNIST style)."""
    if num_experiences < 1 or num_classes % num_experiences:
        raise ConfigError(f"{num_classes} classes cannot be split into {num_experiences} equal experiences.")
    order = np.random.default_rng(seed).permutation(num_classes).tolist()
    k = num_classes // num_experiences
    return [order[i * k:(i + 1) * k] for i in range(num_experiences)]


def iid_partition(n: int, num_clients: int, seed: int = 0) -> list[torch.Tensor]:
    """Shuffle ``n`` indices and deal them into ``num_clients`` near-equal parts."""
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1; got {num_clients}.")
    perm = np.random.default_rng(seed).permutation(n)
    return [torch.as_tensor(p, dtype=torch.long) for p in np.array_split(perm, num_clients)]


def dirichlet_partition(labels: torch.Tensor, num_clients: int, alpha: float, seed: int = 0,
                        min_size: int = 1) -> list[torch.Tensor]:
    """Label-skewed partition: each class is split across clients with proportions ~ Dir(alpha).

    Smaller ``alpha`` gives more skew (0.1 is strongly non-IID, 100 is near IID). Re-draws until every client
    holds at least ``min_size`` samples (as in Hsu et al. 2019 and FedDM's setup).
    """
    if alpha <= 0:
        raise ConfigError(f"Dirichlet alpha must be > 0; got {alpha}.")
    y = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients)) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [torch.as_tensor(sorted(p), dtype=torch.long) for p in parts]
    raise ConfigError(f"Could not give each of {num_clients} clients {min_size} samples at alpha={alpha}: "
                      "use fewer clients or a larger alpha.")
