"""Datasets: registry, in-memory real data, class-incremental and federated splits."""
from .real import RealData, normalize
from .registry import DATASETS, data_root, dataset_present, list_datasets, load_dataset, register_dataset
from .splits import class_incremental_order, dirichlet_partition, iid_partition

__all__ = [
    "RealData", "normalize", "DATASETS", "data_root", "dataset_present", "list_datasets", "load_dataset",
    "register_dataset", "class_incremental_order", "dirichlet_partition", "iid_partition",
]
