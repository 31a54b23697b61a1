"""Text distillation in embedding space: synthetic embedding sequences with learnable soft labels for a TextCNN.

Wang et al. 2018 ("Dataset Distillation", text variant) and Sucholutsky & Schonlau, IJCNN 2021 ("Soft-Label
Dataset Distillation and Text Dataset Distillation"): sentences are fixed-length sequences of word embeddings,
so a synthetic sentence is a learnable ``(L, d)`` tensor; each also carries learnable soft-label logits, and a
learnable step size. A step draws a fresh TextCNN (Kim 2014), unrolls ``inner_steps`` differentiable SGD steps
on the synthetic set (:func:`distill_apps.inner.unroll`, soft cross-entropy), and moves the synthetic
embeddings, labels and step size to lower the trained network's loss on a real batch (DD's meta-objective).

Tokenizer and embedding table come from the training split only: lower-cased whitespace tokens (SST-2 is
already tokenised), a vocabulary of the ``max_vocab`` most frequent words (``<pad>`` = 0, ``<unk>`` = 1), and
an embedding table that is either ``"bow"`` (the default: trained for one epoch as a fastText-style
bag-of-words sentiment classifier on the training split; good features, but the table itself has seen every
training label, an advantage all compared models share) or ``"random"`` (fixed N(0, 1) vectors, no label
information; much weaker, see docs/graph_recsys_text.md).
The table is frozen; the TextCNN takes token ids (real data) or embedding sequences (synthetic data).
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import safe_io
from ..config import MethodConfig, make_config
from ..engine import METHODS, Distiller, DistillState, register_method, run
from ..errors import ConfigError, DataError
from ..inner import functional, unroll
from ..registry import Registry
from ..runtime import generator, pick_device, seeded_global_rng
from ..train import accuracy, fit

KIND = "text_summary"
FORMAT_VERSION = 1
PAD, UNK = 0, 1


class EmptyTextError(DataError):
    """A sentence file with no labelled sentences."""


# ---------------------------------------------------------------------- data
def tokenize(sentence: str) -> list[str]:
    return sentence.lower().split()


def read_tsv(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """``sentence<TAB>label`` lines (GLUE layout, header optional)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Sentence file {path} not found: point --data-root ($DISTILL_APPS_DATA) at the folder "
                        "holding text/SST-2/{train,dev}.tsv.")
    sents, labels = [], []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[-1].strip() == "label" or not line.strip():
                continue
            try:
                labels.append(int(parts[-1]))
            except ValueError as exc:
                raise DataError(f"{path}, line {n}: expected 'sentence<TAB>label' with an integer label; "
                                f"got {line!r}.") from exc
            sents.append("\t".join(parts[:-1]))
    if not sents:
        raise EmptyTextError(f"{path} holds no labelled sentences. Give a GLUE-style tsv with a "
                             "'sentence<TAB>label' header and one sentence per line.")
    return sents, labels


@dataclass
class TextData:
    """Token-id tensors ``(N, L)`` (0-padded) for train and dev, labels, the vocabulary and the frozen table."""

    name: str
    vocab: list[str]
    embedding: torch.Tensor  # (V, d)
    train_ids: torch.Tensor
    train_y: torch.Tensor
    dev_ids: torch.Tensor
    dev_y: torch.Tensor
    num_classes: int = 2

    @property
    def max_len(self) -> int:
        return int(self.train_ids.shape[1])

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[1])

    def by_class(self) -> list[torch.Tensor]:
        return [(self.train_y == c).nonzero().flatten() for c in range(self.num_classes)]


def encode(sents: list[str], index: dict[str, int], max_len: int) -> torch.Tensor:
    out = torch.zeros(len(sents), max_len, dtype=torch.long)
    for i, s in enumerate(sents):
        ids = [index.get(w, UNK) for w in tokenize(s)][:max_len]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


EMBEDDINGS: Registry = Registry("embedding table")


@EMBEDDINGS.register("random")
def _random_table(vocab_size: int, dim: int, ids: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Fixed N(0, 1) vectors (no label information)."""
    table = torch.randn(vocab_size, dim, generator=g)
    table[PAD] = 0
    return table


@EMBEDDINGS.register("bow")
def _bow_table(vocab_size: int, dim: int, ids: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One epoch of a fastText-style classifier (mean of word vectors -> linear) on the training split."""
    with seeded_global_rng(g):
        emb = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=PAD)
        head = nn.Linear(dim, int(y.max()) + 1)
    opt = torch.optim.Adam([*emb.parameters(), *head.parameters()], lr=5e-3)
    order = torch.randperm(len(y), generator=g)
    for i in range(0, len(y), 128):
        b = order[i:i + 128]
        loss = F.cross_entropy(head(emb(ids[b])), y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    table = emb.weight.detach().clone()
    table = table / table[2:].std().clamp_min(1e-6)
    table[PAD] = 0
    return table


def load_sst2(root: str | os.PathLike | None = None, *, train_path: str | os.PathLike | None = None,
              dev_path: str | os.PathLike | None = None, max_len: int = 40, max_vocab: int = 20000, dim: int = 64,
              embedding: str = "bow", train_limit: int | None = None, seed: int = 0) -> TextData:
    """SST-2 from ``<data root>/text/SST-2/{train,dev}.tsv``; vocabulary and embedding from the training split.

    ``train_limit`` keeps the first N training sentences (for fast tests).
    """
    from ..data.registry import data_root

    base = data_root(root) / "text" / "SST-2"
    tr_s, tr_y = read_tsv(train_path or base / "train.tsv")
    dv_s, dv_y = read_tsv(dev_path or base / "dev.tsv")
    if train_limit:
        tr_s, tr_y = tr_s[:train_limit], tr_y[:train_limit]
    counts = Counter(w for s in tr_s for w in tokenize(s))
    vocab = ["<pad>", "<unk>"] + [w for w, _ in counts.most_common(max_vocab - 2)]
    index = {w: i for i, w in enumerate(vocab)}
    train_ids, train_y = encode(tr_s, index, max_len), torch.tensor(tr_y, dtype=torch.long)
    table = EMBEDDINGS.get(embedding)(len(vocab), dim, train_ids, train_y, generator("text-embedding", seed))
    return TextData("sst2", vocab, table, train_ids, train_y, encode(dv_s, index, max_len),
                    torch.tensor(dv_y, dtype=torch.long), num_classes=int(max(tr_y)) + 1)


# ---------------------------------------------------------------------- model
class TextCNN(nn.Module):
    """Kim (2014)'s CNN over a frozen embedding table: parallel 1-D convolutions, max-over-time, linear.

    Input: token ids ``(B, L)`` (looked up in the frozen table) or embedding sequences ``(B, L, d)``.
    """

    def __init__(self, embedding: torch.Tensor, num_classes: int, widths: tuple[int, ...] = (3, 4, 5),
                 channels: int = 32, dropout: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("table", embedding.clone(), persistent=False)
        d = embedding.shape[1]
        self.convs = nn.ModuleList(nn.Conv1d(d, channels, w, padding=w // 2) for w in widths)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * len(widths), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.long:
            x = self.table[x]
        h = x.transpose(1, 2)
        h = torch.cat([F.relu(c(h)).amax(2) for c in self.convs], 1)
        return self.fc(self.drop(h))


def new_textcnn(data: TextData, g: torch.Generator, device: torch.device | str = "cpu", **kw) -> TextCNN:
    with seeded_global_rng(g):
        return TextCNN(data.embedding, data.num_classes, **kw).to(device)


# ---------------------------------------------------------------------- summary
@dataclass
class TextSummary:
    """Synthetic sentences ``x`` (n, L, d) in the embedding space of ``meta['vocab_hash']``'s table, soft-label
    logits ``soft`` (n, K), their hard labels ``y`` and the learned step size ``lr``."""

    x: torch.Tensor
    soft: torch.Tensor
    y: torch.Tensor
    lr: float
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        n = self.x.shape[0]
        if self.x.ndim != 3 or self.soft.shape[0] != n or self.y.shape != (n,) or self.soft.ndim != 2:
            raise DataError(f"Text summary shapes do not fit: x {tuple(self.x.shape)}, soft {tuple(self.soft.shape)},"
                            f" y {tuple(self.y.shape)}; expected (n, L, d), (n, K), (n,).")
        if not (torch.isfinite(self.x).all() and torch.isfinite(self.soft).all()):
            raise DataError("Text summary holds NaN/Inf; re-run the distillation.")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def save(self, path: str | os.PathLike) -> Path:
        self.validate()
        return safe_io.write(path, {"x": self.x, "soft": self.soft, "y": self.y}, {"lr": self.lr, "meta": self.meta},
                             KIND, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextSummary":
        t, h = safe_io.read(path, KIND, FORMAT_VERSION, {"x", "soft", "y"})
        s = cls(t["x"], t["soft"], t["y"], float(h["lr"]), h.get("meta", {}))
        s.validate()
        return s


# ---------------------------------------------------------------------- method
@dataclass
class TextConfig(MethodConfig):
    steps: int = 1000
    quick_steps: int = 100
    amp: bool = False
    lr_x: float = 0.01  # Adam on the synthetic embeddings
    lr_label: float = 0.01
    lr_lr: float = 0.01
    init_lr: float = 0.1  # inner SGD step size (learned, as in DD)
    inner_steps: int = 10
    batch_real: int = 256
    init: str = "real"  # embeddings of random real sentences of the class, or "noise"
    channels: int = 32
    learn_labels: bool = True


@register_method("text")
class TextDistill(Distiller):
    family = "meta"
    paper = ("Sucholutsky & Schonlau, IJCNN 2021, Soft-Label Dataset Distillation and Text Dataset Distillation; "
             "Wang et al. 2018, Dataset Distillation")
    Config = TextConfig
    modality: ClassVar[str] = "text"

    def __init__(self, real: TextData, ipc: int, cfg: TextConfig, device: torch.device, model: str = "textcnn",
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if ipc < 1:
            raise ConfigError(f"text distillation needs at least one synthetic sentence per class; got {ipc}.")
        super().__init__(real, ipc, cfg, device, model, seed, rank, world_size)
        self.data = real

    def init(self, g: torch.Generator) -> DistillState:
        k, data = self.data.num_classes, self.data
        ys = torch.arange(k).repeat_interleave(self.ipc)
        if self.cfg.init == "real":
            idx = torch.cat([ix[torch.randint(len(ix), (self.ipc,), generator=g)] for ix in data.by_class()])
            x = data.embedding[data.train_ids[idx]]
        elif self.cfg.init == "noise":
            x = torch.randn(k * self.ipc, data.max_len, data.dim, generator=g)
        else:
            raise ConfigError(f"text init must be 'real' or 'noise'; got {self.cfg.init!r}.")
        x = x.clone().to(self.device).requires_grad_(True)
        soft = (F.one_hot(ys, k).float() * 2.0).to(self.device).requires_grad_(self.cfg.learn_labels)
        log_lr = torch.tensor(float(torch.log(torch.tensor(self.cfg.init_lr))), device=self.device).requires_grad_(True)
        groups = [{"params": [x], "lr": self.cfg.lr_x}, {"params": [log_lr], "lr": self.cfg.lr_lr}]
        if self.cfg.learn_labels:
            groups.append({"params": [soft], "lr": self.cfg.lr_label})
        return DistillState(params={"x": x, "soft": soft, "log_lr": log_lr}, buffers={"y": ys.to(self.device)},
                            optimizers={"syn": torch.optim.Adam(groups)})

    def step(self, state: DistillState, g: torch.Generator) -> dict[str, float]:
        net = new_textcnn(self.data, g, self.device, channels=self.cfg.channels)
        net.eval()  # dropout off inside the unroll: all randomness comes from g
        f, params = functional(net)
        params = {k: v.requires_grad_(True) for k, v in params.items()}
        p = state.params
        n = p["x"].shape[0]
        trained = unroll(f, params, p["x"], p["soft"], self.cfg.inner_steps, p["log_lr"].exp(), n, g,
                         label_kind="logits")
        idx = torch.randint(len(self.data.train_y), (self.cfg.batch_real,), generator=g)
        xr, yr = self.data.train_ids[idx].to(self.device), self.data.train_y[idx].to(self.device)
        out = f(trained, xr)
        loss = F.cross_entropy(out, yr)
        self.update(state, loss)
        acc = float((out.argmax(1) == yr).float().mean())
        return {"loss": float(loss.detach()), "real_acc": acc, "lr": float(p["log_lr"].detach().exp())}

    def export(self, state: DistillState) -> TextSummary:
        p = state.params
        return TextSummary(p["x"].detach().float().cpu().clone(), p["soft"].detach().float().cpu().clone(),
                           state.buffers["y"].cpu().clone(), float(p["log_lr"].detach().exp()),
                           self.meta(state, inner_steps=self.cfg.inner_steps, channels=self.cfg.channels,
                                     max_len=self.data.max_len, dim=self.data.dim,
                                     vocab_size=len(self.data.vocab)))


def distill_text(data: TextData, ipc: int = 10, *, steps: int | None = None, budget: str = "paper",
                 config: dict[str, Any] | None = None, seed: int = 0, device: str = "cpu",
                 checkpoint: str | None = None, checkpoint_every: int = 0, resume: bool = False,
                 progress: bool = True) -> TextSummary:
    """Distil ``data`` (see :func:`load_sst2`) into ``ipc`` synthetic sentences per class."""
    cls = METHODS.get("text")
    cfg = make_config(cls.Config, config, "text")
    d = cls(data, ipc, cfg, pick_device(device), "textcnn", seed)
    if budget not in ("paper", "quick"):
        raise ConfigError(f"budget must be 'paper' or 'quick'; got {budget!r}.")
    total = steps if steps is not None else (cfg.steps if budget == "paper" else cfg.quick_steps)
    return run(d, total, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, progress=progress)


# ---------------------------------------------------------------------- evaluation
def evaluate_text(summary: TextSummary, data: TextData, *, runs: int = 3, repeats: int = 1, seed: int = 0,
                  device: str = "cpu") -> dict[str, Any]:
    """Fresh TextCNNs trained as in the distillation (plain SGD at the learned step size, ``inner_steps x
    repeats`` full-batch steps, soft labels), dev accuracy mean and std over ``runs``."""
    summary.validate()
    if summary.x.shape[1:] != (data.max_len, data.dim):
        raise DataError(f"The summary's sentences are {tuple(summary.x.shape[1:])} but the data's embedding space is "
                        f"({data.max_len}, {data.dim}): load the data with the same max_len/dim/embedding.")
    steps = int(summary.meta.get("inner_steps", 10)) * repeats
    channels = int(summary.meta.get("channels", 32))
    dev = pick_device(device)
    accs, t0 = [], time.perf_counter()
    for r in range(runs):
        g = generator("eval-text", seed, r)
        net = new_textcnn(data, g, dev, channels=channels, dropout=0.0)
        fit(net, summary.x, summary.soft, steps=steps, lr=summary.lr, momentum=0.0, weight_decay=0.0,
            batch_size=len(summary), label_kind="logits", decay_at_half=False, amp=False, generator=g)
        accs.append(accuracy(net, data.dev_ids.to(dev), data.dev_y))
    t = torch.tensor(accs)
    return {"accuracy_mean": float(t.mean()), "accuracy_std": float(t.std()) if runs > 1 else 0.0,
            "accuracies": accs, "sentences": len(summary), "seconds": time.perf_counter() - t0}


def train_on_ids(data: TextData, idx: torch.Tensor | None, *, runs: int = 3, epochs: int = 1, steps: int | None = None,
                 lr: float = 1e-3, seed: int = 0, device: str = "cpu", channels: int = 32) -> dict[str, Any]:
    """Baselines: TextCNNs trained (Adam) on real sentences ``idx`` (``None`` = the full training split)."""
    dev = pick_device(device)
    ids = data.train_ids if idx is None else data.train_ids[idx]
    y = data.train_y if idx is None else data.train_y[idx]
    accs, t0 = [], time.perf_counter()
    for r in range(runs):
        g = generator("eval-text-real", seed, r)
        net = new_textcnn(data, g, dev, channels=channels)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        kw = {"steps": steps} if steps is not None else {"epochs": epochs}
        with seeded_global_rng(g):  # dropout draws from the global RNG: seed it from g
            fit(net, ids, y, batch_size=min(256, len(y)), optimizer=opt, decay_at_half=False, amp=False,
                generator=g, **kw)
        accs.append(accuracy(net, data.dev_ids.to(dev), data.dev_y))
    t = torch.tensor(accs)
    return {"accuracy_mean": float(t.mean()), "accuracy_std": float(t.std()) if runs > 1 else 0.0,
            "accuracies": accs, "sentences": len(y), "seconds": time.perf_counter() - t0}


def random_subset(data: TextData, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` random training sentences of every class."""
    g = generator("text-random-subset", seed)
    return torch.cat([ix[torch.randperm(len(ix), generator=g)[:per_class]] for ix in data.by_class()])
