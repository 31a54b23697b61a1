"""Planetoid's raw ``ind.<name>.*`` files (Yang et al., 2016) read without unpickling untrusted bytes.

The files are pickles of numpy arrays, scipy CSR matrices and a ``defaultdict`` adjacency list;
``torch_geometric.datasets.Planetoid`` reads them with ``pickle.load``, which runs whatever a crafted file
names. Here they go through :func:`distill_apps.safe_pickle.restricted_load` (only those types), every piece is
type- and shape-checked, and the graph is assembled exactly as PyG's ``read_planetoid_data`` does for the public
split (CiteSeer's isolated test nodes as zero rows; self-loops removed, duplicate edges merged).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..safe_pickle import CSRFields, restricted_load


def _matrix(obj, what: str) -> torch.Tensor:
    """A dense float32 matrix from a CSR record or a 2-D numeric array."""
    if isinstance(obj, CSRFields):
        data, indices, indptr, (rows, cols) = obj.arrays(what)
        crow = torch.from_numpy(indptr.astype(np.int64))
        col = torch.from_numpy(indices.astype(np.int64))
        val = torch.from_numpy(data.astype(np.float32))
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, col, val, (rows, cols)).to_dense()
    if isinstance(obj, np.ndarray) and obj.ndim == 2 and obj.dtype.kind in "fiub":
        return torch.from_numpy(obj.astype(np.float32))
    raise DataError(f"{what} should hold a matrix; it holds {type(obj).__name__}. Replace it with the original file.")


def _graph(obj, what: str, n: int) -> torch.Tensor:
    """Edge index of a Planetoid adjacency dict (node -> neighbour list), checked entry by entry without unpickling
    arbitrary objects."""
    if not isinstance(obj, dict):
        raise DataError(f"{what} should hold an adjacency dict; it holds {type(obj).__name__}.")
    rows: list[int] = []
    cols: list[int] = []
    for k, v in obj.items():
        if not isinstance(k, (int, np.integer)) or not isinstance(v, list) or \
                not all(isinstance(u, (int, np.integer)) for u in v):
            raise DataError(f"{what}: the adjacency dict must map node ids to lists of node ids; the file is damaged.")
        rows += [int(k)] * len(v)
        cols += [int(u) for u in v]
    ei = torch.tensor([rows, cols], dtype=torch.long).view(2, -1)
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        raise DataError(f"{what}: node ids outside [0, {n}); the file is damaged.")
    ei = ei[:, ei[0] != ei[1]]  # no self-loops
    return torch.unique(ei, dim=1)  # duplicates merged, sorted


def read_planetoid(raw: str | Path, prefix: str):
    """``(x, edge_index, y, train_idx, val_idx, test_idx)`` of the public Planetoid split in folder ``raw``."""
    raw = Path(raw)
    items = {}
    for name in ("x", "tx", "allx", "y", "ty", "ally", "graph"):
        path = raw / f"ind.{prefix.lower()}.{name}"
        if not path.is_file():
            raise DataError(f"Planetoid file {path} is missing: put the ind.{prefix.lower()}.* files in {raw}.")
        items[name] = restricted_load(path)
    index_file = raw / f"ind.{prefix.lower()}.test.index"
    try:
        test_index = torch.tensor([int(t) for t in index_file.read_text().split()], dtype=torch.long)
    except (OSError, ValueError) as exc:
        raise DataError(f"{index_file} must hold one node id per line ({exc}).") from exc
    what = lambda n: str(raw / f"ind.{prefix.lower()}.{n}")  # noqa: E731
    x, tx, allx = (_matrix(items[n], what(n)) for n in ("x", "tx", "allx"))
    y, ty, ally = (_matrix(items[n], what(n)) for n in ("y", "ty", "ally"))
    if test_index.numel() == 0 or len(tx) != len(test_index) or len(ty) != len(test_index) \
            or tx.shape[1] != allx.shape[1] or ty.shape[1] != ally.shape[1] or len(ally) != len(allx):
        raise DataError(f"The Planetoid files in {raw} do not fit together (shapes); replace them with the originals.")
    sorted_test = test_index.sort()[0]
    if prefix.lower() == "citeseer":  # isolated test nodes: zero rows, as PyG does
        span = int(test_index.max() - test_index.min()) + 1
        if span > 1 << 24:
            raise DataError(f"{index_file}: test node ids out of range.")
        tx_ext = torch.zeros(span, tx.shape[1])
        tx_ext[sorted_test - test_index.min()] = tx
        ty_ext = torch.zeros(span, ty.shape[1])
        ty_ext[sorted_test - test_index.min()] = ty
        tx, ty = tx_ext, ty_ext
    feats = torch.cat([allx, tx])
    labels = torch.cat([ally, ty])
    n = len(labels)
    if int(test_index.min()) < 0 or int(test_index.max()) >= n or len(y) + 500 > n:
        raise DataError(f"{index_file}: test node ids out of range for {n} nodes.")
    feats[test_index] = feats[sorted_test]
    labels = labels.max(dim=1)[1]
    labels[test_index] = labels[sorted_test]
    edge_index = _graph(items["graph"], what("graph"), n)
    train_idx = torch.arange(len(y))
    val_idx = torch.arange(len(y), len(y) + 500)
    return feats, edge_index, labels, train_idx, val_idx, torch.unique(test_index)
