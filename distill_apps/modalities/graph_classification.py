"""Graph classification condensation: DosCond (Jin et al., KDD 2022, "Condensing Graphs via One-Step Gradient
Matching"), graph-level variant ``doscond-gc``.

Each class gets ``ipc`` synthetic graphs (graphs per class) of ``n`` nodes: learnable node features ``X'_i`` and
learnable edge logits ``Omega_i``; a graph's structure is sampled ``A'_i ~ Bernoulli(sigmoid(Omega_i))`` through
the binary-concrete relaxation with a straight-through hard sample (shared with node-level DosCond). Every step
draws a freshly initialised GNN and matches, class by class, its loss gradient on a batch of real graphs and on
the synthetic graphs *at that initialisation only* (one step, no inner training), with DC's layer-wise
distance. The GNN is a dense GCN (``D^-1/2 (A + I) D^-1/2``), mean-pooled over each graph's real nodes.

Data come from TU-format files (``<root>/tudataset/<NAME>/raw/NAME_A.txt`` ...) read by
``torch_geometric.datasets.TUDataset`` after a copy to the writable cache; graphs are held as padded dense
tensors with a node mask, which keeps small molecule-sized graphs (tens of nodes) fast on a CPU. Registered
datasets: ``mutag``, ``nci1``, ``proteins``, ``dd`` (under the data root) and ``tu:<folder>`` (any TU-format
folder) or ``tu:<NAME>`` (``<data root>/tudataset/<NAME>/raw``).
"""
from __future__ import annotations

import hashlib
import os
import time
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
from ..runtime import generator, pick_device, seeded_global_rng
from ..summaries import Summary, check_eval_options, header_errors, register_summary, resolve_data
from ..summary import library_versions
from ..train import fit
from .graph import bernoulli_structure, pyg_dataset

KIND = "condensed_graph_set"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------- data
@register_summary
@dataclass(repr=False)
class GraphSet(Summary):
    """Graphs as padded dense tensors: ``x`` (G, n, F), ``adj`` (G, n, n) 0/1 without self-loops, ``mask`` (G, n)
    true on real nodes, ``y`` (G,) int64. Used for real datasets and condensed summaries alike."""

    x: torch.Tensor
    adj: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = KIND
    modality: ClassVar[str] = "graph-classification"

    def validate(self) -> None:
        """Refuse shapes that do not fit, labels out of range and non-finite values (DataError)."""
        g, n = self.x.shape[:2] if self.x.ndim == 3 else (-1, -1)
        if self.x.ndim != 3 or self.adj.shape != (g, n, n) or self.mask.shape != (g, n) or self.y.shape != (g,):
            raise DataError(f"Graph set shapes do not fit: x {tuple(self.x.shape)}, adj {tuple(self.adj.shape)}, "
                            f"mask {tuple(self.mask.shape)}, y {tuple(self.y.shape)}; expected (G, n, F), (G, n, n), "
                            "(G, n), (G,).")
        if self.y.dtype != torch.int64 or (g and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes)):
            raise DataError(f"Graph labels must be int64 in [0, {self.num_classes}).")
        if not (torch.isfinite(self.x).all() and torch.isfinite(self.adj).all()):
            raise DataError("The graph set holds NaN/Inf values.")

    def __len__(self) -> int:
        """Number of graphs."""
        return int(self.y.shape[0])

    @property
    def num_features(self) -> int:
        """Length of a node's feature vector."""
        return int(self.x.shape[2])

    def by_class(self) -> list[torch.Tensor]:
        """Indices of the graphs of each class."""
        return [torch.nonzero(self.y == c).flatten() for c in range(self.num_classes)]

    def __repr__(self) -> str:
        """A summary's line (method, source, sizes), or for real graphs ``GraphSet(mutag, 150 graphs, ...)``."""
        from ..reprs import counted, field_bytes, human_bytes, one_line, summary_repr

        if self.meta.get("method"):
            return summary_repr(self)
        return one_line("GraphSet", [self.name or "graphs", *counted(self.contents()), human_bytes(field_bytes(self))])

    def subset(self, idx: torch.Tensor) -> "GraphSet":
        """The graphs at ``idx`` as a new GraphSet."""
        return GraphSet(self.x[idx], self.adj[idx], self.mask[idx], self.y[idx], self.num_classes, self.name,
                        dict(self.meta))

    def contents(self) -> dict[str, Any]:
        """Graphs, nodes per graph, features and classes, for ``describe``."""
        return {"graphs": len(self), "nodes_per_graph": int(self.x.shape[1]), "features": self.num_features,
                "classes": self.num_classes}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the graph set with safe_io (safetensors + JSON header, atomic, checksummed)."""
        self.validate()
        tensors = {"x": self.x.float(), "adj": self.adj.float(), "mask": self.mask.to(torch.uint8), "y": self.y}
        header = {"num_classes": self.num_classes, "name": self.name, "meta": self.meta}
        return safe_io.write(path, tensors, header, KIND, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GraphSet":
        """Read and validate a graph set written by :meth:`save`."""
        t, h = safe_io.read(path, KIND, FORMAT_VERSION, {"x", "adj", "mask", "y"})
        with header_errors(path, KIND):
            gs = cls(t["x"], t["adj"], t["mask"].bool(), t["y"], int(h["num_classes"]), str(h.get("name", "")),
                     dict(h.get("meta", {})))
            gs.validate()
        return gs

    def evaluate(self, data: "GraphDataset | str | None" = None, *, runs: int = 5, epochs: int | None = None,
                 lr: float | None = None, seed: int = 0, device: str = "auto", data_root: str | None = None,
                 model: str | None = None, protocol: str | None = None, augment: str | None = None,
                 progress: bool = False, **kw) -> EvalResult:
        """DosCond's protocol (:func:`evaluate_graph_classification`) on ``data`` (default: its source)."""
        check_eval_options(self, model=model, protocol=protocol, augment=augment, own_model="gcn", own_protocol="train")
        ds = resolve_data(self, data, data_root)
        return evaluate_graph_classification(self, ds, runs=runs, epochs=300 if epochs is None else epochs,
                                             lr=0.01 if lr is None else lr, seed=seed, device=device, **kw)


@dataclass(repr=False)
class GraphDataset:
    """A graph-classification dataset with a fixed, seeded, stratified train/val/test split."""

    name: str
    train: GraphSet
    val: GraphSet
    test: GraphSet
    modality: ClassVar[str] = "graph-classification"

    @property
    def num_classes(self) -> int:
        """Number of graph classes."""
        return self.train.num_classes

    def __repr__(self) -> str:
        from ..reprs import field_bytes, human_bytes, one_line

        t = self.train
        return one_line("GraphDataset", [self.name, f"{len(t)}/{len(self.val)}/{len(self.test)} train/val/test graphs",
                                         f"{t.x.shape[1]} nodes max", f"{t.num_features} features",
                                         f"{self.num_classes} classes",
                                         human_bytes(sum(field_bytes(s) for s in (t, self.val, self.test)))])

    def check_ipc(self, ipc: int) -> None:
        """The budget is synthetic graphs per class: positive and at most the smallest class's training graphs."""
        counts = [len(ix) for ix in self.train.by_class()]
        if not isinstance(ipc, int) or ipc < 1:
            raise ConfigError(f"Graphs per class must be a positive integer; got {ipc!r}.")
        if ipc > min(counts):
            c = counts.index(min(counts))
            raise ConfigError(f"{ipc} graphs per class is more than class {c} of {self.name} has ({counts[c]} "
                              f"training graphs): use --ipc {counts[c]} or less.")

    @property
    def num_features(self) -> int:
        """Length of a node's feature vector."""
        return self.train.num_features

    def to(self, device: torch.device) -> "GraphDataset":
        """Graphs stay in host memory; each step moves only the batch it draws."""
        return self


def dense_graphs(x: list[torch.Tensor], edges: list[torch.Tensor], y: torch.Tensor, num_classes: int,
                 name: str = "") -> GraphSet:
    """Pad a list of graphs (node features (n_i, F), edge_index (2, e_i)) into one dense :class:`GraphSet`."""
    if not x:
        raise DataError(f"Graph dataset {name!r} holds no graphs.")
    n, f = max(len(xi) for xi in x), x[0].shape[1]
    X, A, M = torch.zeros(len(x), n, f), torch.zeros(len(x), n, n), torch.zeros(len(x), n, dtype=torch.bool)
    for i, (xi, ei) in enumerate(zip(x, edges)):
        X[i, :len(xi)], M[i, :len(xi)] = xi.float(), True
        A[i, ei[0], ei[1]] = 1.0
        A[i, ei[1], ei[0]] = 1.0
    A = A * (1 - torch.eye(n))
    gs = GraphSet(X, A, M, y.long(), num_classes, name)
    gs.validate()
    return gs


def split_stratified(gs: GraphSet, seed: int = 0, fractions: tuple[float, float] = (0.8, 0.1)) -> tuple:
    """Per-class 80/10/10 (by default) split with a fixed seed, every class in every part where it has 3+ graphs."""
    g = generator("graph-split", seed)
    parts: list[list[torch.Tensor]] = [[], [], []]
    for ix in gs.by_class():
        ix = ix[torch.randperm(len(ix), generator=g)]
        a = max(1, int(round(fractions[0] * len(ix))))
        b = a + max(1 if len(ix) >= 3 else 0, int(round(fractions[1] * len(ix))))
        for p, chunk in zip(parts, (ix[:a], ix[a:b], ix[b:])):
            p.append(chunk)
    return tuple(gs.subset(torch.cat(p)) for p in parts)


def load_tudataset(name: str, root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   seed: int = 0, *, raw: str | os.PathLike | None = None, label: str | None = None) -> GraphDataset:
    """A TU graph-classification dataset (MUTAG, PROTEINS, NCI1, ...) through ``torch_geometric``'s TUDataset.

    Raw files are read from ``<data root>/tudataset/<NAME>/raw/`` (or the folder ``raw``): ``NAME_A.txt``,
    ``NAME_graph_indicator.txt``, ``NAME_graph_labels.txt`` and optional node labels/attributes; they are copied
    to the cache before loading, because TUDataset writes ``processed/``. Graphs without node features get a
    one-hot degree feature. ``label`` is the name the dataset goes by (default ``name``).
    """
    from ..data.registry import data_root

    family = "tudataset"
    if raw is None:
        raw = data_root(root) / "tudataset" / name / "raw"
    else:  # a folder anywhere: cache it under a key of its path and file stats, so an edited folder reloads
        raw = Path(raw).expanduser().resolve()
        stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in raw.iterdir() if f.is_file())
        family = "tudataset-" + hashlib.sha256(repr((str(raw), stats)).encode()).hexdigest()[:12]
    need = [f"{name}_A.txt", f"{name}_graph_indicator.txt", f"{name}_graph_labels.txt"]
    missing = [f for f in need if not (raw / f).exists()]
    if missing:
        raise DataError(f"Graph-classification dataset {name!r}: {', '.join(missing)} missing in {raw}. Put the TU "
                        f"files there (https://chrsmrrs.github.io/datasets/), or point --data-root "
                        f"($DISTILL_APPS_DATA) at the folder holding tudataset/{name}/raw.")
    ds = pyg_dataset("TUDataset", raw, family, name, cache_dir)
    graphs = [ds[i] for i in range(len(ds))]
    if graphs[0].x is None:
        max_deg = max(int(torch.bincount(d.edge_index[0], minlength=d.num_nodes).max()) for d in graphs)
        feats = [F.one_hot(torch.bincount(d.edge_index[0], minlength=d.num_nodes), max_deg + 1).float()
                 for d in graphs]
    else:
        feats = [d.x.float() for d in graphs]
    y = torch.tensor([int(d.y) for d in graphs])
    gs = dense_graphs(feats, [d.edge_index for d in graphs], y, int(y.max()) + 1, name)
    train, val, test = split_stratified(gs, seed)
    return GraphDataset(label or name, train, val, test)


def _tu_family(root: Path, arg: str, download: bool = False) -> GraphDataset:
    """``tu:<folder>`` (a TU-format folder, or one holding ``raw/``) or ``tu:<NAME>``
    (``<root>/tudataset/NAME/raw``)."""
    if not arg:
        raise ConfigError("tu: needs a folder or a TU name, e.g. --dataset tu:/data/MUTAG or --dataset tu:MUTAG.")
    if "/" not in arg and os.sep not in arg:
        return load_tudataset(arg, root, label=f"tu:{arg}")
    p = Path(arg).expanduser().resolve()
    raw = p / "raw" if (p / "raw").is_dir() else p
    found = sorted(raw.glob("*_A.txt")) if raw.is_dir() else []
    if len(found) != 1:
        raise DataError(f"tu:{arg}: expected one TU dataset in {raw} (NAME_A.txt, NAME_graph_indicator.txt, "
                        f"NAME_graph_labels.txt); found {len(found)} *_A.txt files. Point tu: at the folder of one "
                        "dataset (or at the folder holding its raw/).")
    return load_tudataset(found[0].name[:-len("_A.txt")], raw=raw, label=f"tu:{p}")


register_dataset("tu", files=("tudataset/<name>/raw",), modality="graph-classification",
                 description="any TU-format graph-classification folder as tu:<folder>, or tu:<NAME> for "
                             "<data root>/tudataset/<NAME>/raw")(_tu_family)
for _tu in ("MUTAG", "NCI1", "PROTEINS", "DD"):
    def _named(root: Path, download: bool = False, _tu: str = _tu) -> GraphDataset:
        """Load this TU dataset from ``tudataset/<NAME>/raw`` under the data root."""
        return load_tudataset(_tu, root, label=_tu.lower())

    register_dataset(_tu.lower(), files=tuple(f"tudataset/{_tu}/raw/{_tu}_{f}.txt" for f in
                                               ("A", "graph_indicator", "graph_labels")),
                     modality="graph-classification", description=f"TU {_tu} graph classification")(_named)


# ---------------------------------------------------------------------- the GNN
def normalize_batch(adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``D^-1/2 (A + I) D^-1/2`` per graph, self-loops only on real nodes."""
    a = adj + torch.diag_embed(mask.to(adj))
    d = a.sum(-1).clamp_min(1e-12).pow(-0.5)
    return d[..., :, None] * a * d[..., None, :]


class GraphGCN(nn.Module):
    """Dense GCN for graph classification: ``nlayers`` propagations, mean pooling over real nodes, a linear head."""

    def __init__(self, nfeat: int, nhid: int, nclass: int, nlayers: int = 3, dropout: float = 0.0) -> None:
        """A GCN over padded dense graphs: ``nlayers`` propagations, masked mean pooling, a linear head."""
        super().__init__()
        dims = [nfeat] + [nhid] * nlayers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(nhid, nclass)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, adj_norm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Graph logits from node features, normalised adjacencies and node masks."""
        m = mask.to(x)[..., None]
        for lin in self.layers:
            x = F.dropout(F.relu(adj_norm @ lin(x)), self.dropout, self.training) * m
        return self.head(x.sum(1) / m.sum(1).clamp_min(1))


class _GraphBatchModel(nn.Module):
    """Adapter so :func:`fit` trains on a fixed :class:`GraphSet`: input = graph ids, output = their logits."""

    def __init__(self, gnn: GraphGCN, gs: GraphSet, device: torch.device) -> None:
        """A graph GCN bound to one graph set (normalised once), so it can be called on graph ids."""
        super().__init__()
        self.gnn = gnn
        self.x, self.mask = gs.x.to(device), gs.mask.to(device)
        self.adj_norm = normalize_batch(gs.adj.to(device), self.mask)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of the graphs ``ids``."""
        return self.gnn(self.x[ids], self.adj_norm[ids], self.mask[ids])


# ---------------------------------------------------------------------- DosCond for graph classification
@dataclass
class DosCondGCConfig(MethodConfig):
    """DosCond's graph-classification settings (GCN, one-step matching, binary-concrete structure)."""

    steps: int = 1000
    quick_steps: int = 60
    amp: bool = False
    hidden: int = 128
    nlayers: int = 3
    lr_feat: float = 0.01
    lr_adj: float = 0.01
    batch_real: int = 128  # real graphs per class per step
    nodes: int = 0  # nodes per synthetic graph; 0: the real graphs' mean size
    temperature: float = 0.5
    init_logit: float = 2.0  # edge logits start at +-init_logit following the initial real graph's edges


@register_method("doscond-gc")
class DosCondGC(Distiller):
    """DosCond for graph classification (Jin et al., KDD 2022): one-step gradient matching of a GCN on small synthetic
    graphs."""
    family = "graph"
    modality: ClassVar[str] = "graph-classification"
    paper = "Jin et al., KDD 2022, Condensing Graphs via One-Step Gradient Matching (graph classification)"
    Config = DosCondGCConfig

    def __init__(self, real: GraphDataset, ipc: int, cfg: DosCondGCConfig, device: torch.device,
                 model: str = "gcn", seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Check the model (a GCN) and size the synthetic graphs (``nodes``, default the mean real graph size)."""
        super().__init__(real, ipc, cfg, device, model, seed, rank, world_size)
        if model != "gcn":
            raise ConfigError(f"{self.name} condenses for a GCN; got model {model!r} (omit --model).")
        self.train = real.train
        self._by_class = self.train.by_class()
        mean_nodes = float(self.train.mask.sum(1).float().mean())
        self.n = cfg.nodes or max(2, round(mean_nodes))

    def init(self, g: torch.Generator) -> DistillState:
        """Synthetic graphs start as random real graphs of their class, cut or padded to ``n`` nodes."""
        n, tr = self.n, self.train
        pick = torch.cat([ix[torch.randperm(len(ix), generator=g)[:self.ipc]] for ix in self._by_class])
        k = min(n, tr.x.shape[1])
        x = torch.zeros(len(pick), n, tr.num_features)
        x[:, :k] = tr.x[pick, :k]
        edges = torch.zeros(len(pick), n, n)
        edges[:, :k, :k] = tr.adj[pick, :k, :k]
        empty = ~tr.mask[pick, :k]  # padding nodes of small real graphs: features from random real nodes
        if empty.any():
            donors = tr.x[tr.mask][torch.randint(int(tr.mask.sum()), (int(empty.sum()),), generator=g)]
            x[:, :k][empty] = donors
        x = x.to(self.device).requires_grad_(True)
        omega = (self.cfg.init_logit * (2 * edges - 1)).to(self.device).requires_grad_(True)
        y = torch.arange(self.real.num_classes).repeat_interleave(self.ipc).to(self.device)
        opt = torch.optim.Adam([{"params": [x], "lr": self.cfg.lr_feat}, {"params": [omega], "lr": self.cfg.lr_adj}])
        return DistillState(params={"x": x, "omega": omega}, optimizers={"syn": opt}, buffers={"y": y})

    def new_gnn(self, g: torch.Generator) -> GraphGCN:
        """A freshly initialised graph GCN drawn from ``g``."""
        with seeded_global_rng(g):
            return GraphGCN(self.train.num_features, self.cfg.hidden, self.real.num_classes, self.cfg.nlayers
                            ).to(self.device)

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        """One-step gradient matching (DosCond): gradients of a fresh GCN on real vs synthetic graphs of each class,
        with Bernoulli edges sampled by the reparameterisation trick."""
        net = self.new_gnn(g)  # one-step matching: gradients at a fresh initialisation, no inner training
        params = list(net.parameters())
        x, y = state.params["x"], state.buffers["y"]
        adj = bernoulli_structure(state.params["omega"], g, self.cfg.temperature)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        adj_norm = normalize_batch(adj, mask)
        tr, loss = self.train, x.new_zeros(())
        for c in self.classes:
            ix = self._by_class[c]
            ix = ix[torch.randperm(len(ix), generator=g)[:self.cfg.batch_real]]
            xr, ar, mr = tr.x[ix].to(self.device), tr.adj[ix].to(self.device), tr.mask[ix].to(self.device)
            lr_ = F.cross_entropy(net(xr, normalize_batch(ar, mr), mr), tr.y[ix].to(self.device))
            gr = [t.detach() for t in torch.autograd.grad(lr_, params)]
            sel = y == c
            ls = F.cross_entropy(net(x[sel], adj_norm[sel], mask[sel]), y[sel])
            gs = torch.autograd.grad(ls, params, create_graph=True)
            loss = loss + gradient_distance(gs, gr)
        self.update(state, loss)
        state.info["matches"] = state.info.get("matches", 0) + 1
        return {"loss": float(loss.detach()), "edges": float((state.params["omega"] > 0).float().mean())}

    def export(self, state: DistillState) -> GraphSet:
        """The condensed graphs with their most likely discrete structure (edge where ``sigmoid(Omega) > 0.5``)."""
        x = state.params["x"].detach().float().cpu()
        with torch.no_grad():
            om = state.params["omega"].detach().float().cpu()
            adj = ((om + om.transpose(-1, -2)) / 2 > 0).float() * (1 - torch.eye(self.n))
        meta = self.meta(state, graphs_per_class=self.ipc, nodes=self.n, structure="bernoulli")
        return GraphSet(x.clone(), adj, torch.ones(x.shape[:2], dtype=torch.bool), state.buffers["y"].cpu().clone(),
                        self.real.num_classes, self.real.name, meta)


# ---------------------------------------------------------------------- baseline and evaluation
def random_graphs(data: GraphDataset, ipc: int, seed: int = 0) -> GraphSet:
    """Baseline: ``ipc`` random real training graphs per class."""
    g = generator("random-graphs", seed)
    idx = torch.cat([ix[torch.randperm(len(ix), generator=g)[:ipc]] for ix in data.train.by_class()])
    out = data.train.subset(idx)
    out.meta = {"method": "random", "dataset": data.name, "ipc": ipc, "seed": seed, "versions": library_versions()}
    return out


def evaluate_graph_classification(gs: GraphSet, data: GraphDataset, *, runs: int = 5, epochs: int = 300,
                                  hidden: int = 128, nlayers: int = 3, lr: float = 0.01, weight_decay: float = 5e-4,
                                  seed: int = 0, device: str = "cpu") -> EvalResult:
    """DosCond's protocol: a GCN trained (Adam, full batch) on the condensed graphs, tested on the real test
    graphs; mean and std of the accuracy over ``runs`` seeds."""
    gs.validate()
    if gs.num_features != data.num_features or gs.num_classes != data.num_classes:
        raise DataError(f"The condensed graphs have {gs.num_features} features / {gs.num_classes} classes but "
                        f"{data.name} has {data.num_features} / {data.num_classes}.")
    dev = pick_device(device)
    test = data.test
    accs, t0 = [], time.perf_counter()
    for r in range(runs):
        g = generator("eval-graph-classification", seed, r)
        with seeded_global_rng(g):
            gnn = GraphGCN(data.num_features, hidden, data.num_classes, nlayers).to(dev)
        opt = torch.optim.Adam(gnn.parameters(), lr=lr, weight_decay=weight_decay)
        fit(_GraphBatchModel(gnn, gs, dev), torch.arange(len(gs)), gs.y, steps=epochs, batch_size=len(gs), optimizer=opt,
            decay_at_half=False, amp=False, generator=g)
        gnn.eval()
        with torch.no_grad():
            out = gnn(test.x.to(dev), normalize_batch(test.adj, test.mask).to(dev), test.mask.to(dev))
        accs.append(float((out.argmax(1).cpu() == test.y).float().mean()))
    t = torch.tensor(accs)
    return EvalResult(float(t.mean()), float(t.std()) if runs > 1 else 0.0, accs, runs, "gcn", data.name, "train",
                      epochs, None, lr, time.perf_counter() - t0,
                      {"graphs": len(gs), "hidden": hidden, "nlayers": nlayers, "weight_decay": weight_decay})


def _random_baseline(data: GraphDataset, summary: GraphSet, ipc: int, seed: int, device: str) -> GraphSet:
    """Random real graphs, ``ipc`` per class."""
    return random_graphs(data, ipc, seed)


register_modality(Modality("graph-classification", "synthetic graphs per class", "mutag", "gcn", _random_baseline))
