"""Datasets: one entry for every source (registered names, image folders, tensors, torch and Hugging Face
datasets), the compact uint8 store every method reads, transforms (ZCA), class-incremental and federated splits."""
from .folder import from_folder
from .real import ImageView, RealData, normalize
from .registry import (DATASETS, cache_root, data_root, dataset_present, list_datasets, load_dataset,
                       register_dataset)
from .sources import as_real_data, data_for_summary, from_hf, from_tensors, from_torch
from .splits import class_incremental_order, dirichlet_partition, iid_partition
from .transforms import ZCA, fit_zca

__all__ = [
    "RealData", "ImageView", "normalize", "DATASETS", "cache_root", "data_root", "dataset_present", "list_datasets",
    "load_dataset", "register_dataset", "from_folder", "from_tensors", "from_torch", "from_hf", "as_real_data",
    "data_for_summary", "ZCA", "fit_zca", "class_incremental_order", "dirichlet_partition", "iid_partition",
]
