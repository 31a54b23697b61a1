"""Partitioning: which training images each client holds (seeded, so every process computes the same split)."""
from __future__ import annotations

import functools
from typing import Callable

import torch

from distill_apps import RealData, load_dataset
from distill_apps.data import dirichlet_partition, iid_partition
from distill_apps.errors import ConfigError
from distill_apps.registry import Registry

from .config import FederatedConfig

#: partition schemes by name: ``(labels, clients, alpha, seed) -> one index tensor per client``
PARTITIONERS: Registry[Callable[[torch.Tensor, int, float, int], list[torch.Tensor]]] = Registry("partition scheme")


@PARTITIONERS.register("iid")
def _iid(labels: torch.Tensor, n: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """Equal random shares of the examples (``alpha`` unused)."""
    return iid_partition(len(labels), n, seed)


@PARTITIONERS.register("dirichlet")
def _dirichlet(labels: torch.Tensor, n: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """Per-class shares drawn from Dirichlet(``alpha``): smaller ``alpha`` gives more skewed clients."""
    return dirichlet_partition(labels, n, alpha, seed)


@functools.lru_cache(maxsize=2)
def federated_dataset(name: str, root: str = "") -> RealData:
    """The whole dataset of a run (loaded once per process)."""
    return load_dataset(name, root or None)


@functools.lru_cache(maxsize=4)
def _partitions(name: str, root: str, scheme: str, n: int, alpha: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Every client's example indices for one dataset and scheme (cached: clients in one process share the split)."""
    return tuple(PARTITIONERS.get(scheme)(federated_dataset(name, root).y_train, n, alpha, seed))


def client_partition(cfg: FederatedConfig, partition_id: int, num_partitions: int | None = None) -> RealData:
    """The training data of client ``partition_id`` (the test split is the dataset's own)."""
    n = num_partitions or cfg.num_clients
    if not 0 <= partition_id < n:
        raise ConfigError(f"partition-id {partition_id} is outside [0, {n}): start SuperNodes with "
                          f"--node-config 'partition-id=i num-partitions={n}' for i in 0..{n - 1}.")
    parts = _partitions(cfg.dataset, cfg.data_root, cfg.partition, n, cfg.alpha, cfg.seed)
    real = federated_dataset(cfg.dataset, cfg.data_root)
    return real.subset(parts[partition_id], name=real.name)
