"""Graph condensation for node classification: GCond, GCond-X, DosCond and GCDM on Planetoid graphs.

* ``gcond`` — Jin et al., ICLR 2022, "Graph Condensation for Graph Neural Networks": learnable synthetic node
  features ``X'``; the synthetic adjacency is a function of them, ``A' = PGE(X')`` (an MLP over node pairs);
  a GCN's per-class gradients on the real graph and on the condensed graph are matched (DC's layer-wise
  distance), the GCN is trained on the condensed graph between matches, and features and structure are
  updated in alternation (``adj_every`` of every ``alt_cycle`` outer steps update the structure).
* ``gcond-x`` — the same without structure: ``A' = 0`` (after self-loops the identity).
* ``doscond`` — Jin et al., KDD 2022, "Condensing Graphs via One-Step Gradient Matching": one gradient match
  per step at a freshly initialised GCN (no inner training), features and structure updated together. For node
  classification the structure is GCond's continuous ``PGE(X')``, as in the authors' node-level code; the
  discrete ``A'_ij ~ Bernoulli(sigmoid(PGE(X')_ij))`` (binary-concrete relaxation, straight-through hard
  sample) is ``structure="bernoulli"`` and is what graph classification uses (``doscond-gc`` in
  :mod:`distill_apps.modalities.graph_classification`).
* ``gcdm`` — Liu et al., 2022, "Graph Condensation via Receptive Field Distribution Matching": the per-class
  mean of a randomly initialised GCN's layer-wise node embeddings (the receptive-field representation) is
  matched between the real and the condensed graph (linear-kernel MMD), features and PGE updated together.

Design notes. The real graph is kept as a sparse normalised adjacency (Cora: 13k non-zeros), the condensed one
dense. The PGE's first layer is split into ``W_i x_i + W_j x_j`` so the ``n'^2`` pair inputs are never built,
and it uses LayerNorm instead of GCond's BatchNorm so the exported structure does not depend on running
statistics. The budget ``ipc`` is the number of condensed nodes per class; the ``reduction`` option instead
follows GCond: ``reduction`` times the labelled training nodes of each class (at least one). On Planetoid's
public split (20 labelled nodes per class) ``ipc=5`` is GCond's ``r = 0.25``. The *reduction ratio* reported as
in the papers is ``n_syn / N`` of the whole graph (Cora 5 per class -> 35 nodes = 1.3 %, CiteSeer 30 nodes =
0.9 %). Evaluation trains a GCN on the condensed graph (through :func:`distill_apps.train.fit`, full batch, Adam)
and tests it on the real graph's test nodes. ``cora`` and ``citeseer`` are registered datasets.
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import safe_io
from ..config import MethodConfig
from ..data.registry import register_dataset
from ..engine import Distiller, DistillState, register_method
from ..errors import ConfigError, DataError
from ..evaluate import EvalResult
from ..matching import gradient_distance
from ..modality import Modality, register_modality
from ..registry import Registry
from ..runtime import generator, pick_device, seeded_global_rng
from ..summaries import Summary, check_eval_options, header_errors, register_summary, resolve_data
from ..summary import library_versions
from ..train import fit

KIND = "condensed_graph"
FORMAT_VERSION = 1
GRAPH_DATASETS: Registry[str] = Registry("graph dataset")
for _key, _folder in (("cora", "Cora"), ("citeseer", "CiteSeer")):
    GRAPH_DATASETS.register(_key)(_folder)


# ---------------------------------------------------------------------- data
@dataclass(repr=False)
class GraphData:
    """A node-classification graph: row-normalised features, sparse normalised adjacency, labels, split masks."""

    name: str
    x: torch.Tensor  # (N, F) float32
    adj: torch.Tensor  # (N, N) sparse normalised D^-1/2 (A + I) D^-1/2
    y: torch.Tensor  # (N,) int64
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    test_idx: torch.Tensor
    num_classes: int
    _sparse_x: torch.Tensor | None = field(default=None, repr=False, compare=False)
    modality: ClassVar[str] = "graph"

    @property
    def num_nodes(self) -> int:
        """Number of nodes."""
        return int(self.x.shape[0])

    @property
    def num_features(self) -> int:
        """Length of a node's feature vector."""
        return int(self.x.shape[1])

    def __repr__(self) -> str:
        from ..reprs import human_bytes, one_line, tensor_bytes

        split = f"{len(self.train_idx)}/{len(self.val_idx)}/{len(self.test_idx)} train/val/test nodes"
        return one_line("GraphData", [self.name, f"{self.num_nodes} nodes", f"{self.num_features} features",
                                      f"{self.num_classes} classes", split,
                                      human_bytes(tensor_bytes(self.x, self.adj, self.y))])

    def sparse_x(self) -> torch.Tensor:
        """Features as sparse CSR (Planetoid bag-of-words rows are ~1 % dense: 5x faster GCN layers on CPU)."""
        if self._sparse_x is None:
            self._sparse_x = self.x.to_sparse_csr()
        return self._sparse_x

    def train_by_class(self) -> list[torch.Tensor]:
        """Training node ids of each class."""
        yt = self.y[self.train_idx]
        return [self.train_idx[yt == c] for c in range(self.num_classes)]

    def check_ipc(self, ipc: int) -> None:
        """The graph budget: condensed nodes per class, a positive integer."""
        if not isinstance(ipc, int) or ipc < 1:
            raise ConfigError(f"For a graph, ipc is the number of condensed nodes per class (a positive integer); "
                              f"got {ipc!r}.")

    def to(self, device: torch.device) -> "GraphData":
        """The graph stays in host memory; the condenser moves what it uses."""
        return self


def normalize_dense(a: torch.Tensor) -> torch.Tensor:
    """GCN normalisation ``D^-1/2 (A + I) D^-1/2`` of a dense (differentiable) adjacency."""
    a = a + torch.eye(a.shape[0], device=a.device, dtype=a.dtype)
    d = a.sum(1).clamp_min(1e-12).pow(-0.5)
    return d[:, None] * a * d[None, :]


def normalize_sparse(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """The real graph's normalised adjacency as a sparse CSR tensor (symmetrised, with self-loops)."""
    ei = torch.cat([edge_index, edge_index.flip(0), torch.arange(n).repeat(2, 1)], 1)
    ei = torch.unique(ei, dim=1)
    deg = torch.zeros(n).index_add_(0, ei[0], torch.ones(ei.shape[1]))
    w = deg[ei[0]].pow(-0.5) * deg[ei[1]].pow(-0.5)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(ei, w, (n, n), check_invariants=True).coalesce().to_sparse_csr()


def pyg_dataset(cls_name: str, raw: Path, family: str, name: str, cache_dir: str | os.PathLike | None = None):
    """``torch_geometric.datasets.<cls_name>(cache/family, name)`` over a writable copy of the read-only ``raw``
    folder (``$DISTILL_APPS_CACHE`` or ``~/.cache/distill_apps``), since PyG writes ``processed/`` beside it."""
    from ..data.registry import cache_root

    cache = cache_root(cache_dir)
    dest = cache / family / name / "raw"
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(raw, dest, dirs_exist_ok=True)
    try:
        import torch_geometric.datasets as pyg
    except ImportError as exc:  # pragma: no cover - the graph extra is part of the dev install
        raise ImportError("Graph condensation needs torch_geometric: pip install distill-apps[graph]") from exc
    return getattr(pyg, cls_name)(str(cache / family), name)


def load_planetoid(name: str, root: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None) -> GraphData:
    """Load Cora or CiteSeer (public split, features row-normalised) from ``<data root>/planetoid/<Name>/raw``.

    The raw ``ind.<name>.*`` files are pickles; they are read by :mod:`.planetoid_raw` through a restricted
    unpickler (numpy arrays, CSR fields, lists only), never ``pickle.load``, and give the graph
    ``torch_geometric.datasets.Planetoid`` builds. ``cache_dir`` is unused (kept for callers).
    """
    from .planetoid_raw import read_planetoid

    from ..data.registry import data_root

    folder = GRAPH_DATASETS.get(name)  # ConfigError naming the known graphs
    raw = data_root(root) / "planetoid" / folder / "raw"
    if not raw.is_dir() or not any(raw.iterdir()):
        raise DataError(f"Graph dataset {name!r}: no raw Planetoid files in {raw}. Put the ind.{folder.lower()}.* "
                        "files there, or point --data-root ($DISTILL_APPS_DATA) at the folder holding planetoid/.")
    x, edge_index, y, train_idx, val_idx, test_idx = read_planetoid(raw, folder)
    x = x / x.sum(1, keepdim=True).clamp_min(1e-12)
    return GraphData(name=name.lower(), x=x, adj=normalize_sparse(edge_index, len(y)), y=y.long(),
                     train_idx=train_idx, val_idx=val_idx, test_idx=test_idx, num_classes=int(y.max()) + 1)


for _key, _folder in (("cora", "Cora"), ("citeseer", "CiteSeer")):
    def _loader(root: Path, download: bool = False, _key: str = _key) -> GraphData:
        """Load this Planetoid graph from the data root."""
        return load_planetoid(_key, root)

    _files = tuple(f"planetoid/{_folder}/raw/ind.{_key}.{ext}" for ext in ("x", "y", "tx", "ty", "allx", "ally",
                                                                            "graph", "test.index"))
    register_dataset(_key, files=_files, modality="graph",
                     description=f"Planetoid {_folder} citation graph, node classification (public split)")(_loader)


# ---------------------------------------------------------------------- the condensed graph
@register_summary
@dataclass(repr=False)
class CondensedGraph(Summary):
    """A condensed graph: ``x`` (n, F) features, ``adj`` (n, n) non-negative symmetric weights (no self-loops;
    the GCN normalisation adds them), ``y`` (n,) int64 labels, and run metadata."""

    x: torch.Tensor
    adj: torch.Tensor
    y: torch.Tensor
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = KIND
    modality: ClassVar[str] = "graph"

    def validate(self) -> None:
        """Refuse shapes that do not fit, labels out of range and non-finite values (DataError)."""
        n = self.x.shape[0]
        if self.x.ndim != 2 or self.adj.shape != (n, n) or self.y.shape != (n,):
            raise DataError(f"Condensed graph shapes do not fit: x {tuple(self.x.shape)}, adj {tuple(self.adj.shape)}, "
                            f"y {tuple(self.y.shape)}; expected (n, F), (n, n), (n,).")
        if self.y.dtype != torch.int64 or (n and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes)):
            raise DataError(f"Condensed graph labels must be int64 in [0, {self.num_classes}).")
        if not (torch.isfinite(self.x).all() and torch.isfinite(self.adj).all()):
            raise DataError("Condensed graph holds NaN/Inf values; re-run the condensation.")

    def __len__(self) -> int:
        """Number of condensed nodes."""
        return int(self.x.shape[0])

    def reduction_ratio(self, graph: GraphData) -> float:
        """Condensed nodes over all nodes of the real graph (the papers' ratio for transductive data sets)."""
        return len(self) / graph.num_nodes

    def contents(self) -> dict[str, Any]:
        """Nodes, features, undirected edges and classes, for ``describe``."""
        return {"nodes": len(self), "features": int(self.x.shape[1]), "edges": int((self.adj > 0).sum()) // 2,
                "classes": self.num_classes}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the condensed graph with safe_io (safetensors + JSON header, atomic, checksummed)."""
        self.validate()
        header = {"num_classes": self.num_classes, "meta": self.meta}
        return safe_io.write(path, {"x": self.x, "adj": self.adj, "y": self.y}, header, KIND, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CondensedGraph":
        """Read and validate a condensed graph written by :meth:`save`."""
        t, h = safe_io.read(path, KIND, FORMAT_VERSION, {"x", "adj", "y"})
        with header_errors(path, KIND):
            cg = cls(x=t["x"], adj=t["adj"], y=t["y"], num_classes=int(h["num_classes"]), meta=dict(h.get("meta", {})))
            cg.validate()
        return cg

    def evaluate(self, data: GraphData | str | None = None, *, runs: int = 5, epochs: int | None = None,
                 lr: float | None = None, seed: int = 0, device: str = "auto", data_root: str | None = None,
                 model: str | None = None, protocol: str | None = None, augment: str | None = None,
                 progress: bool = False, **kw) -> EvalResult:
        """GCond's protocol (:func:`evaluate_graph`) on ``data`` (default: the graph it was condensed from)."""
        check_eval_options(self, model=model, protocol=protocol, augment=augment, own_model="gcn", own_protocol="train")
        graph = resolve_data(self, data, data_root)
        return evaluate_graph(self, graph, runs=runs, epochs=600 if epochs is None else epochs,
                              lr=0.01 if lr is None else lr, seed=seed, device=device, **kw)


# ---------------------------------------------------------------------- networks
class GCN(nn.Module):
    """Kipf & Welling's GCN: ``H <- A_hat (H W)``, ReLU between layers; ``adj`` dense or sparse, pre-normalised."""

    def __init__(self, nfeat: int, nhid: int, nclass: int, nlayers: int = 2, dropout: float = 0.0) -> None:
        """A dense-adjacency GCN (Kipf & Welling, ICLR 2017) with ``nlayers`` linear layers."""
        super().__init__()
        dims = [nfeat] + [nhid] * (nlayers - 1) + [nclass]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = dropout

    def propagate(self, adj: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One propagation step: ``adj @ h``."""
        return adj @ h

    def hidden(self, x: torch.Tensor, adj: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's propagated output (the last one is the logits)."""
        outs = []
        for i, lin in enumerate(self.layers):
            h = lin(x) if x.layout == torch.strided else x @ lin.weight.T + lin.bias
            x = self.propagate(adj, h)
            outs.append(x)
            if i < len(self.layers) - 1:
                x = F.dropout(F.relu(x), self.dropout, self.training)
        return outs

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """Node logits."""
        return self.hidden(x, adj)[-1]


class PGE(nn.Module):
    """GCond's structure generator: ``A'_ij = sigmoid((MLP([x_i; x_j]) + MLP([x_j; x_i])) / 2)``, zero diagonal."""

    def __init__(self, nfeat: int, nhid: int = 128, nlayers: int = 3, init_bias: float = -3.0) -> None:
        """GCond's parameterised graph generator: an MLP over node pairs giving edge logits."""
        super().__init__()
        self.first_i = nn.Linear(nfeat, nhid)
        self.first_j = nn.Linear(nfeat, nhid, bias=False)
        rest: list[nn.Module] = []
        for _ in range(nlayers - 2):
            rest += [nn.LayerNorm(nhid), nn.ReLU(), nn.Linear(nhid, nhid)]
        rest += [nn.LayerNorm(nhid), nn.ReLU(), nn.Linear(nhid, 1)]
        self.rest = nn.Sequential(*rest)
        with torch.no_grad():  # start sparse (p ~ 0.05), not at p ~ 0.5 everywhere, which averages all nodes
            rest[-1].bias.fill_(init_bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Symmetric ``(n, n)`` edge logits from the node features."""
        n = x.shape[0]
        h = self.first_i(x)[:, None, :] + self.first_j(x)[None, :, :]  # == W [x_i; x_j] without the n^2 concat
        s = self.rest(h).view(n, n)
        s = (s + s.T) / 2
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Edge probabilities (sigmoid of the logits) with an empty diagonal."""
        a = torch.sigmoid(self.logits(x))
        return a * (1 - torch.eye(a.shape[0], device=a.device))


def bernoulli_structure(logits: torch.Tensor, g: torch.Generator, temperature: float) -> torch.Tensor:
    """DosCond's discrete structure: ``A_ij ~ Bernoulli(sigmoid(logits_ij))`` through the binary-concrete
    relaxation with a straight-through hard sample; symmetric, zero diagonal; ``logits`` is ``(..., n, n)``."""
    u = torch.rand(logits.shape, generator=g).to(logits).clamp(1e-6, 1 - 1e-6)
    u = torch.triu(u, 1) + torch.triu(u, 1).transpose(-1, -2)  # one noise draw per unordered pair
    logits = (logits + logits.transpose(-1, -2)) / 2
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    a = (soft > 0.5).to(soft) + soft - soft.detach()
    return a * (1 - torch.eye(a.shape[-1], device=a.device))


class _NodeModel(nn.Module):
    """Adapter so :func:`fit` trains a GCN full-batch: input = node ids, output = their logits on the fixed graph."""

    def __init__(self, gcn: GCN, x: torch.Tensor, adj: torch.Tensor) -> None:
        """A GCN bound to one graph, so it can be called on node ids."""
        super().__init__()
        self.gcn = gcn
        self.feat, self.adj = x, adj

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of the nodes ``ids``."""
        return self.gcn(self.feat, self.adj)[ids]


# ---------------------------------------------------------------------- methods
@dataclass
class GraphConfig(MethodConfig):
    """Shared by the graph methods; defaults are GCond's Cora/CiteSeer settings (transductive)."""

    steps: int = 1000
    quick_steps: int = 40
    amp: bool = False
    reduction: float = 0.0  # > 0: GCond's r, synthetic nodes per labelled training node (else ipc per class)
    hidden: int = 256
    nlayers: int = 2
    lr_feat: float = 1e-4
    lr_adj: float = 1e-4
    lr_model: float = 0.01
    outer_loop: int = 20  # gradient matches per step (GCond: 20 on Cora/CiteSeer)
    inner_loop: int = 15  # GCN training steps on the condensed graph between matches
    alt_cycle: int = 50  # structure updated in the first adj_every steps of every alt_cycle steps
    adj_every: int = 10
    pge_hidden: int = 128
    pge_layers: int = 3
    threshold: float = 0.01  # exported edges below this weight are dropped (GCond, Cora/CiteSeer)
    temperature: float = 0.5  # DosCond's binary-concrete temperature (structure="bernoulli")
    structure: str = ""  # "": the method's own; else "pge" (continuous), "bernoulli" (discrete) or "none"
    sparsity: float = 0.0  # DosCond: weight of the mean edge probability penalty


@dataclass
class GCondXConfig(GraphConfig):
    """GCond-X options: GCond's, without a learned structure (no edges)."""
    adj_every: int = 0


@dataclass
class DosCondConfig(GraphConfig):
    """DosCond options (Jin et al., KDD 2022): one-step gradient matching, features and structure updated together."""
    steps: int = 1000
    quick_steps: int = 300
    # features and PGE move together at every match (the authors' node-classification code); 300 steps at
    # 1e-4: Cora 78.2, CiteSeer 69.9 (3 eval runs). At 1e-3 the features drift off the sparse real rows.
    lr_feat: float = 1e-4
    lr_adj: float = 1e-4
    adj_every: int = 0
    outer_loop: int = 1
    inner_loop: int = 0


@dataclass
class GCDMConfig(GraphConfig):
    """GCDM options (Liu et al., 2022): receptive-field distribution matching, no inner training."""
    steps: int = 1000
    quick_steps: int = 300  # 300 steps: Cora 78.8, CiteSeer 68.7 (3 eval runs of 600 epochs)
    lr_feat: float = 1e-3  # Cora, 100 steps: 76.3 % at 1e-3 vs 59.1 % at 1e-2 (one eval run)
    lr_adj: float = 1e-3
    outer_loop: int = 1
    inner_loop: int = 0


def class_budget(graph: GraphData, reduction: float) -> list[int]:
    """Synthetic nodes per class: ``max(1, int(r * labelled nodes of the class))`` as in GCond."""
    if not reduction > 0:
        raise ConfigError(f"reduction must be > 0 (synthetic nodes per labelled training node); got {reduction}.")
    return [max(1, int(len(ix) * reduction)) for ix in graph.train_by_class()]


class GraphCondenser(Distiller):
    """Shared machinery: synthetic features initialised from real training nodes, a PGE, a fresh GCN per step."""

    family = "graph"
    modality: ClassVar[str] = "graph"
    Config = GraphConfig
    structure: ClassVar[str] = "pge"  # "pge" (continuous), "none" (identity), "bernoulli" (discrete, ST)

    def __init__(self, real: GraphData, ipc: int, cfg: GraphConfig, device: torch.device, model: str = "gcn",
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Check the structure option and the model (a GCN) and keep the graph on the device."""
        super().__init__(real, ipc, cfg, device, model, seed, rank, world_size)
        if cfg.structure and cfg.structure not in ("pge", "bernoulli", "none"):
            raise ConfigError(f"structure must be pge, bernoulli or none; got {cfg.structure!r}.")
        if model != "gcn":
            raise ConfigError(f"{self.name} condenses for a GCN; got model {model!r} (omit --model).")
        self.structure = cfg.structure or type(self).structure
        self.graph = real
        self.budget = class_budget(real, cfg.reduction) if cfg.reduction else [ipc] * real.num_classes
        self._x, self._adj, self._y = real.sparse_x().to(device), real.adj.to(device), real.y.to(device)
        self._train_by_class = [ix.to(device) for ix in real.train_by_class()]

    # -- state
    def init(self, g: torch.Generator) -> DistillState:
        """Condensed features from randomly drawn real training nodes of each class (with replacement when a class is
        too small), and the PGE when the structure is learned."""
        xs, ys = [], []
        for c, ix in enumerate(self.graph.train_by_class()):
            pick = ix[torch.randperm(len(ix), generator=g)[: self.budget[c]]]
            if len(pick) < self.budget[c]:  # more synthetic than real nodes: repeat with replacement
                pick = ix[torch.randint(len(ix), (self.budget[c],), generator=g)]
            xs.append(self.graph.x[pick])
            ys.append(torch.full((self.budget[c],), c, dtype=torch.long))
        x = torch.cat(xs).to(self.device).requires_grad_(True)
        state = DistillState(params={"x": x}, buffers={"y": torch.cat(ys).to(self.device)})
        groups = [{"params": [x], "lr": self.cfg.lr_feat}]
        if self.structure != "none":
            with seeded_global_rng(g):
                pge = PGE(self.graph.num_features, self.cfg.pge_hidden, self.cfg.pge_layers).to(self.device)
            state.modules["pge"] = pge
            groups.append({"params": list(pge.parameters()), "lr": self.cfg.lr_adj})
        # one optimiser; a frozen side gets no gradient, and Adam leaves parameters without one untouched
        state.optimizers["syn"] = torch.optim.Adam(groups)
        return state

    def new_gcn(self, g: torch.Generator, dropout: float = 0.0) -> GCN:
        """A freshly initialised GCN drawn from ``g``."""
        with seeded_global_rng(g):
            return GCN(self.graph.num_features, self.cfg.hidden, self.graph.num_classes, self.cfg.nlayers,
                       dropout).to(self.device)

    def syn_adj(self, state: DistillState, g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
        """The condensed graph's (differentiable) raw adjacency for features ``x``."""
        if self.structure == "none":
            return torch.zeros(x.shape[0], x.shape[0], device=x.device)
        pge = state.modules["pge"]
        if self.structure == "pge":
            return pge(x)
        return bernoulli_structure(pge.logits(x), g, self.cfg.temperature)

    def export(self, state: DistillState) -> CondensedGraph:
        """The condensed graph: features, the structure (PGE probabilities, the most likely Bernoulli edges, or none)
        and labels."""
        x = state.params["x"].detach()
        with torch.no_grad():
            if self.structure == "none":
                adj = torch.zeros(x.shape[0], x.shape[0])
            elif self.structure == "bernoulli":  # the most likely discrete structure
                p = torch.sigmoid(state.modules["pge"].logits(x))
                adj = (p > 0.5).float() * (1 - torch.eye(x.shape[0], device=x.device))
            else:
                adj = state.modules["pge"](x)
                adj = torch.where(adj < self.cfg.threshold, torch.zeros_like(adj), adj)
        meta = self.meta(state, reduction=self.cfg.reduction, reduction_ratio=x.shape[0] / self.graph.num_nodes,
                         structure=self.structure, nodes_per_class=self.budget)
        return CondensedGraph(x=x.float().cpu().clone(), adj=adj.float().cpu().clone(),
                              y=state.buffers["y"].cpu().clone(), num_classes=self.graph.num_classes, meta=meta)

    # -- gradient matching (GCond / DosCond)
    def match_loss(self, net: GCN, state: DistillState, x: torch.Tensor, adj_norm: torch.Tensor) -> torch.Tensor:
        """Sum over classes of DC's layer-wise distance between real and condensed-graph GCN gradients."""
        params = list(net.parameters())
        out_real = net(self._x, self._adj)
        out_syn = net(x, adj_norm)
        ys = state.buffers["y"]
        loss = out_syn.new_zeros(())
        for c in self.classes:
            ix = self._train_by_class[c]
            if len(ix) == 0:
                continue
            lr_ = F.cross_entropy(out_real[ix], self._y[ix])
            gr = [t.detach() for t in torch.autograd.grad(lr_, params, retain_graph=True)]
            mask = ys == c
            ls = F.cross_entropy(out_syn[mask], ys[mask])
            gs = torch.autograd.grad(ls, params, create_graph=True)
            loss = loss + gradient_distance(gs, gr)
        return loss

    def which_update(self, state: DistillState) -> str:
        """GCond alternates: structure in the first ``adj_every`` of every ``alt_cycle`` steps, else features."""
        if self.structure == "none":
            return "feat"
        if self.cfg.adj_every <= 0:
            return "both"
        return "adj" if state.step % self.cfg.alt_cycle < self.cfg.adj_every else "feat"

    def learnable(self, state: DistillState, which: str) -> torch.Tensor:
        """The features to build this step's graph from; the side not being updated is cut from autograd."""
        if "pge" in state.modules:
            state.modules["pge"].requires_grad_(which in ("adj", "both"))
        return state.params["x"] if which in ("feat", "both") else state.params["x"].detach()

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One outer step of gradient matching between real and condensed graphs (GCond, Jin et al., ICLR 2022)."""
        net = self.new_gcn(g)
        opt_net = torch.optim.Adam(net.parameters(), lr=self.cfg.lr_model)
        which = self.which_update(state)
        total, matches, inner = 0.0, 0, 0
        for ol in range(self.cfg.outer_loop):
            x = self.learnable(state, which)
            adj = self.syn_adj(state, g, x)
            loss = self.match_loss(net, state, x, normalize_dense(adj))
            if self.structure == "bernoulli" and self.cfg.sparsity > 0:
                loss = loss + self.cfg.sparsity * torch.sigmoid(state.modules["pge"].logits(x)).mean()
            self.update(state, loss)
            total += float(loss.detach())
            matches += 1
            if ol == self.cfg.outer_loop - 1:
                break
            with torch.no_grad():
                xs = state.params["x"].detach()
                adj_n = normalize_dense(self.syn_adj(state, g, xs))
            for _ in range(self.cfg.inner_loop):
                opt_net.zero_grad(set_to_none=True)
                F.cross_entropy(net(xs, adj_n), state.buffers["y"]).backward()
                opt_net.step()
                inner += 1
        state.info["matches"] = state.info.get("matches", 0) + matches
        return {"loss": total / max(1, matches), "matches": matches, "inner_steps": inner,
                "updated": {"feat": 0, "adj": 1, "both": 2}[which]}


@register_method("gcond")
class GCond(GraphCondenser):
    """GCond (Jin et al., ICLR 2022): gradient matching of GCNs on condensed node features with a learned structure
    (PGE)."""
    paper = "Jin et al., ICLR 2022, Graph Condensation for Graph Neural Networks"
    Config = GraphConfig
    structure = "pge"


@register_method("gcond-x")
class GCondX(GraphCondenser):
    """GCond-X (Jin et al., ICLR 2022): GCond's gradient matching on node features only, without structure."""
    paper = "Jin et al., ICLR 2022, Graph Condensation for Graph Neural Networks (GCond-X, no structure)"
    Config = GCondXConfig
    structure = "none"


@register_method("doscond")
class DosCond(GraphCondenser):
    """DosCond (Jin et al., KDD 2022): one-step gradient matching at initialisation, features and structure together."""
    paper = "Jin et al., KDD 2022, Condensing Graphs via One-Step Gradient Matching"
    Config = DosCondConfig
    structure = "pge"  # structure="bernoulli" for the discrete variant


@register_method("gcdm")
class GCDM(GraphCondenser):
    """GCDM (Liu et al., 2022): match the class means of every GCN layer's node embeddings (receptive-field distribution
    matching)."""
    paper = "Liu et al., 2022, Graph Condensation via Receptive Field Distribution Matching"
    Config = GCDMConfig
    structure = "pge"

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """Match the per-class mean of every layer's embeddings of a random GCN, real vs condensed."""
        net = self.new_gcn(g)
        for p in net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            er = torch.cat(net.hidden(self._x, self._adj), 1)
        x = self.learnable(state, "both")
        es = torch.cat(net.hidden(x, normalize_dense(self.syn_adj(state, g, x))), 1)
        ys = state.buffers["y"]
        loss = es.new_zeros(())
        for c in self.classes:
            ix = self._train_by_class[c]
            if len(ix):
                loss = loss + ((er[ix].mean(0) - es[ys == c].mean(0)) ** 2).sum()
        self.update(state, loss)
        return {"loss": float(loss.detach()), "matches": 1, "inner_steps": 0}


# ---------------------------------------------------------------------- evaluation
def _test_accuracy(gcn: GCN, graph: GraphData) -> float:
    """Node-classification accuracy of ``gcn`` on the graph's test nodes."""
    gcn.eval()
    with torch.no_grad():
        dev = next(gcn.parameters()).device
        out = gcn(graph.sparse_x().to(dev), graph.adj.to(dev))
    return float((out[graph.test_idx.to(dev)].argmax(1).cpu() == graph.y[graph.test_idx]).float().mean())


def _gcn_protocol(graph: GraphData, feat: torch.Tensor, adj: torch.Tensor, ids: torch.Tensor, y: torch.Tensor, *,
                  stream: str, runs: int, epochs: int, hidden: int, dropout: float, lr: float, weight_decay: float,
                  seed: int, device: str, extra: dict[str, Any]) -> EvalResult:
    """Train ``runs`` fresh 2-layer GCNs (Adam, full batch) on nodes ``ids`` of the graph ``(feat, adj)`` (``adj``
    normalised) and test each on ``graph``'s test nodes."""
    dev = pick_device(device)
    t0, accs = time.perf_counter(), []
    feat, adj = feat.to(dev), adj.to(dev)
    for r in range(runs):
        g = generator(stream, seed, r)
        with seeded_global_rng(g):
            gcn = GCN(graph.num_features, hidden, graph.num_classes, 2, dropout).to(dev)
        opt = torch.optim.Adam(gcn.parameters(), lr=lr, weight_decay=weight_decay)
        with seeded_global_rng(g):  # dropout draws from the global RNG: seed it from g
            fit(_NodeModel(gcn, feat, adj), ids, y, steps=epochs, batch_size=len(ids), optimizer=opt,
                decay_at_half=False, amp=False, generator=g)
        accs.append(_test_accuracy(gcn, graph))
    t = torch.tensor(accs)
    return EvalResult(float(t.mean()), float(t.std()) if runs > 1 else 0.0, accs, runs, "gcn", graph.name, "train",
                      epochs, None, lr, time.perf_counter() - t0,
                      {**extra, "hidden": hidden, "dropout": dropout, "weight_decay": weight_decay})


def evaluate_graph(cg: CondensedGraph, graph: GraphData, *, runs: int = 5, epochs: int = 600, hidden: int = 256,
                   dropout: float = 0.5, lr: float = 0.01, weight_decay: float = 5e-4, seed: int = 0,
                   device: str = "cpu") -> EvalResult:
    """GCond's protocol: a 2-layer GCN trained (Adam, full batch) on the condensed graph, tested on the real
    graph's test nodes; mean and (unbiased) std over ``runs`` seeds; ``extra`` holds the node count and ratio."""
    cg.validate()
    if cg.x.shape[1] != graph.num_features or cg.num_classes != graph.num_classes:
        raise DataError(f"The condensed graph has {cg.x.shape[1]} features / {cg.num_classes} classes but "
                        f"{graph.name} has {graph.num_features} / {graph.num_classes}: evaluate on its own dataset.")
    return _gcn_protocol(graph, cg.x, normalize_dense(cg.adj), torch.arange(len(cg)), cg.y, stream="eval-graph",
                         runs=runs, epochs=epochs, hidden=hidden, dropout=dropout, lr=lr, weight_decay=weight_decay,
                         seed=seed, device=device,
                         extra={"nodes": len(cg), "reduction_ratio": cg.reduction_ratio(graph)})


def random_subgraph(graph: GraphData, reduction: float = 0.25, seed: int = 0, *,
                    per_class: list[int] | None = None) -> CondensedGraph:
    """Baseline: random labelled nodes (GCond's budget per class, or ``per_class`` nodes of each class) with the
    real edges among them."""
    g = generator("random-subgraph", seed)
    budget = per_class if per_class is not None else class_budget(graph, reduction)
    picks = []
    for c, ix in enumerate(graph.train_by_class()):
        picks.append(ix[torch.randperm(len(ix), generator=g)[: budget[c]]])
    idx = torch.cat(picks)
    dense = graph.adj.to_dense()[idx][:, idx]
    adj = (dense > 0).float() * (1 - torch.eye(len(idx)))
    return CondensedGraph(x=graph.x[idx].clone(), adj=adj, y=graph.y[idx].clone(), num_classes=graph.num_classes,
                          meta={"method": "random", "dataset": graph.name, "reduction": reduction, "seed": seed,
                                "nodes_per_class": budget, "versions": library_versions()})


def full_graph_accuracy(graph: GraphData, *, runs: int = 5, epochs: int = 600, hidden: int = 256,
                        dropout: float = 0.5, lr: float = 0.01, weight_decay: float = 5e-4, seed: int = 0,
                        device: str = "cpu") -> EvalResult:
    """The whole-dataset reference: the same GCN trained on the real graph's labelled nodes."""
    return _gcn_protocol(graph, graph.sparse_x(), graph.adj, graph.train_idx, graph.y[graph.train_idx],
                         stream="eval-full-graph", runs=runs, epochs=epochs, hidden=hidden, dropout=dropout, lr=lr,
                         weight_decay=weight_decay, seed=seed, device=device,
                         extra={"nodes": graph.num_nodes, "reduction_ratio": 1.0})


def _random_baseline(graph: GraphData, summary: CondensedGraph, ipc: int, seed: int, device: str) -> CondensedGraph:
    """A random real subgraph with as many nodes per class as ``summary``."""
    return random_subgraph(graph, seed=seed, per_class=torch.bincount(summary.y, minlength=graph.num_classes).tolist())


register_modality(Modality("graph", "condensed nodes per class (or --set reduction=r: GCond's r x labelled nodes)",
                           "cora", "gcn", _random_baseline))
