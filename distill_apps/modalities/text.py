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
The table is frozen; the TextCNN takes token ids (real data) or embedding sequences (synthetic data). SST-2 is
the registered dataset ``sst2``; the tokenised split and its table are cached (``$DISTILL_APPS_CACHE/text``),
keyed by the files' contents and the options, so a second load takes a second instead of a minute.
"""
from __future__ import annotations

import hashlib
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
from ..config import MethodConfig
from ..data.registry import register_dataset
from ..engine import Distiller, DistillState, register_method
from ..errors import ConfigError, DataError, SummaryFormatError
from ..evaluate import EvalResult
from ..inner import functional, unroll
from ..modality import Modality, register_modality
from ..registry import Registry
from ..runtime import generator, pick_device, seeded_global_rng
from ..summaries import Summary, check_eval_options, header_errors, register_summary, resolve_data
from ..summary import library_versions
from ..train import accuracy, fit

KIND = "text_summary"
FORMAT_VERSION = 1
CACHE_KIND, CACHE_VERSION = "text_data", 1
PAD, UNK = 0, 1


class EmptyTextError(DataError):
    """A sentence file with no labelled sentences."""


# ---------------------------------------------------------------------- data
def tokenize(sentence: str) -> list[str]:
    """Lower-cased whitespace tokens."""
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


@dataclass(repr=False)
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
    modality: ClassVar[str] = "text"

    def check_ipc(self, ipc: int) -> None:
        """The budget is synthetic sentences per class, a positive integer."""
        if not isinstance(ipc, int) or ipc < 1:
            raise ConfigError(f"For text, ipc is the number of synthetic sentences per class (a positive integer); "
                              f"got {ipc!r}.")

    def to(self, device: torch.device) -> "TextData":
        """The token ids stay in host memory; the distiller moves each batch it draws."""
        return self

    @property
    def max_len(self) -> int:
        """Length of a padded sentence, in tokens."""
        return int(self.train_ids.shape[1])

    def __repr__(self) -> str:
        from ..reprs import field_bytes, human_bytes, one_line

        return one_line("TextData", [self.name, f"{len(self.train_y)}/{len(self.dev_y)} train/dev sentences",
                                     f"{self.num_classes} classes", f"vocabulary {len(self.vocab)}",
                                     f"{self.dim}-d embedding", f"length {self.max_len}",
                                     human_bytes(field_bytes(self))])

    @property
    def dim(self) -> int:
        """Width of the embedding table."""
        return int(self.embedding.shape[1])

    def by_class(self) -> list[torch.Tensor]:
        """Indices of the training sentences of each class."""
        return [(self.train_y == c).nonzero().flatten() for c in range(self.num_classes)]


def encode(sents: list[str], index: dict[str, int], max_len: int) -> torch.Tensor:
    """Token ids of ``sents`` padded (0) or cut to ``max_len``; unknown words map to ``UNK``."""
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
              embedding: str = "bow", train_limit: int | None = None, seed: int = 0, cache: bool = True) -> TextData:
    """SST-2 from ``<data root>/text/SST-2/{train,dev}.tsv``; vocabulary and embedding from the training split.

    ``train_limit`` keeps the first N training sentences (for fast tests). The result is cached under
    ``$DISTILL_APPS_CACHE/text`` keyed by the two files' bytes and every option (``cache=False``: rebuild).
    """
    from ..data.registry import data_root

    base = data_root(root) / "text" / "SST-2"
    train_path, dev_path = Path(train_path or base / "train.tsv"), Path(dev_path or base / "dev.tsv")
    key = _cache_file(train_path, dev_path, (max_len, max_vocab, dim, embedding, train_limit, seed)) if cache else None
    if key is not None and key.is_file():
        try:
            return _read_cached(key)
        except (SummaryFormatError, KeyError, TypeError):  # a damaged cache file: rebuild it
            pass
    tr_s, tr_y = read_tsv(train_path)
    dv_s, dv_y = read_tsv(dev_path)
    if train_limit:
        tr_s, tr_y = tr_s[:train_limit], tr_y[:train_limit]
    counts = Counter(w for s in tr_s for w in tokenize(s))
    vocab = ["<pad>", "<unk>"] + [w for w, _ in counts.most_common(max_vocab - 2)]
    index = {w: i for i, w in enumerate(vocab)}
    train_ids, train_y = encode(tr_s, index, max_len), torch.tensor(tr_y, dtype=torch.long)
    table = EMBEDDINGS.get(embedding)(len(vocab), dim, train_ids, train_y, generator("text-embedding", seed))
    data = TextData("sst2", vocab, table, train_ids, train_y, encode(dv_s, index, max_len),
                    torch.tensor(dv_y, dtype=torch.long), num_classes=int(max(tr_y)) + 1)
    if key is not None:
        tensors = {"embedding": table, "train_ids": train_ids, "train_y": data.train_y, "dev_ids": data.dev_ids,
                   "dev_y": data.dev_y}
        safe_io.write(key, tensors, {"name": data.name, "vocab": vocab, "num_classes": data.num_classes},
                      CACHE_KIND, CACHE_VERSION)
    return data


def _cache_file(train_path: Path, dev_path: Path, options: tuple) -> Path | None:
    """Where the tokenised data for these files and options are cached (None when a file is missing)."""
    from ..methods.generative import cache_dir

    if not (train_path.is_file() and dev_path.is_file()):
        return None  # read_tsv says which file is missing
    h = hashlib.sha256(repr((options, CACHE_VERSION)).encode())
    for f in (train_path, dev_path):
        h.update(f.read_bytes())
    return cache_dir() / "text" / f"{h.hexdigest()[:20]}.safetensors"


def _read_cached(path: Path) -> TextData:
    """Read the tokenised dataset from its safe_io cache file."""
    t, h = safe_io.read(path, CACHE_KIND, CACHE_VERSION, {"embedding", "train_ids", "train_y", "dev_ids", "dev_y"})
    return TextData(h["name"], list(h["vocab"]), t["embedding"], t["train_ids"], t["train_y"], t["dev_ids"],
                    t["dev_y"], num_classes=int(h["num_classes"]))


@register_dataset("sst2", files=("text/SST-2/train.tsv", "text/SST-2/dev.tsv"), modality="text",
                  description="SST-2 sentiment sentences (GLUE tsv), 2 classes; frozen 64-d bag-of-words table")
def _sst2(root: Path, download: bool = False) -> TextData:
    """SST-2 (``text/SST-2`` under the data root)."""
    return load_sst2(root)


# ---------------------------------------------------------------------- model
class TextCNN(nn.Module):
    """Kim (2014)'s CNN over a frozen embedding table: parallel 1-D convolutions, max-over-time, linear.

    Input: token ids ``(B, L)`` (looked up in the frozen table) or embedding sequences ``(B, L, d)``.
    """

    def __init__(self, embedding: torch.Tensor, num_classes: int, widths: tuple[int, ...] = (3, 4, 5),
                 channels: int = 32, dropout: float = 0.5) -> None:
        """TextCNN (Kim, EMNLP 2014): 1D convolutions of several widths over embeddings, max-pooled, then a linear
        layer."""
        super().__init__()
        self.register_buffer("table", embedding.clone(), persistent=False)
        d = embedding.shape[1]
        self.convs = nn.ModuleList(nn.Conv1d(d, channels, w, padding=w // 2) for w in widths)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * len(widths), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from token ids (looked up in the frozen table) or from embeddings directly."""
        if x.dtype == torch.long:
            x = self.table[x]
        h = x.transpose(1, 2)
        h = torch.cat([F.relu(c(h)).amax(2) for c in self.convs], 1)
        return self.fc(self.drop(h))


def new_textcnn(data: TextData, g: torch.Generator, device: torch.device | str = "cpu", **kw) -> TextCNN:
    """A freshly initialised TextCNN over the dataset's frozen embedding table, drawn from ``g``."""
    with seeded_global_rng(g):
        return TextCNN(data.embedding, data.num_classes, **kw).to(device)


# ---------------------------------------------------------------------- summary
@register_summary
@dataclass(repr=False)
class TextSummary(Summary):
    """Synthetic sentences ``x`` (n, L, d) in the embedding space of the dataset's frozen table, soft-label
    logits ``soft`` (n, K), their hard labels ``y`` and the learned step size ``lr``."""

    x: torch.Tensor
    soft: torch.Tensor
    y: torch.Tensor
    lr: float
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = KIND
    modality: ClassVar[str] = "text"

    def validate(self) -> None:
        """Refuse shapes that do not fit and non-finite values (DataError)."""
        n = self.x.shape[0]
        if self.x.ndim != 3 or self.soft.shape[0] != n or self.y.shape != (n,) or self.soft.ndim != 2:
            raise DataError(f"Text summary shapes do not fit: x {tuple(self.x.shape)}, soft {tuple(self.soft.shape)},"
                            f" y {tuple(self.y.shape)}; expected (n, L, d), (n, K), (n,).")
        if not (torch.isfinite(self.x).all() and torch.isfinite(self.soft).all()):
            raise DataError("Text summary holds NaN/Inf; re-run the distillation.")

    def __len__(self) -> int:
        """Number of synthetic sentences."""
        return int(self.x.shape[0])

    def contents(self) -> dict[str, Any]:
        """Sentences, length, embedding width, classes and learned lr, for ``describe``."""
        return {"sentences": len(self), "length": int(self.x.shape[1]), "dim": int(self.x.shape[2]),
                "classes": int(self.soft.shape[1]), "lr": self.lr}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the summary with safe_io (safetensors + JSON header, atomic, checksummed)."""
        self.validate()
        return safe_io.write(path, {"x": self.x, "soft": self.soft, "y": self.y}, {"lr": self.lr, "meta": self.meta},
                             KIND, FORMAT_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextSummary":
        """Read and validate a summary written by :meth:`save`."""
        t, h = safe_io.read(path, KIND, FORMAT_VERSION, {"x", "soft", "y"})
        with header_errors(path, KIND):
            s = cls(t["x"], t["soft"], t["y"], float(h["lr"]), dict(h.get("meta", {})))
            s.validate()
        return s

    def evaluate(self, data: "TextData | str | None" = None, *, runs: int = 3, epochs: int | None = None,
                 lr: float | None = None, seed: int = 0, device: str = "auto", data_root: str | None = None,
                 model: str | None = None, protocol: str | None = None, augment: str | None = None,
                 progress: bool = False, repeats: int = 1) -> EvalResult:
        """:func:`evaluate_text` on ``data`` (default: its source); ``epochs`` full-batch SGD steps (default: the
        distillation's inner steps x ``repeats``), ``lr`` instead of the learned step size."""
        check_eval_options(self, model=model, protocol=protocol, augment=augment, own_model="textcnn",
                           own_protocol="train")
        return evaluate_text(self, resolve_data(self, data, data_root), runs=runs, repeats=repeats, steps=epochs,
                             lr=lr, seed=seed, device=device)


# ---------------------------------------------------------------------- method
@dataclass
class TextConfig(MethodConfig):
    """Text distillation options (Sucholutsky & Schonlau, IJCNN 2021): learned embeddings, soft labels and inner step
    size."""
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
    """Text dataset distillation (Sucholutsky & Schonlau, IJCNN 2021; DD, Wang et al. 2018): synthetic sentence
    embeddings with learned soft labels and step size, meta-learned through an unrolled TextCNN."""
    family = "meta"
    paper = ("Sucholutsky & Schonlau, IJCNN 2021, Soft-Label Dataset Distillation and Text Dataset Distillation; "
             "Wang et al. 2018, Dataset Distillation")
    Config = TextConfig
    modality: ClassVar[str] = "text"

    def __init__(self, real: TextData, ipc: int, cfg: TextConfig, device: torch.device, model: str = "textcnn",
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Check the model (a TextCNN) and keep the dataset."""
        if model != "textcnn":
            raise ConfigError(f"text distils for a TextCNN; got model {model!r} (omit --model).")
        super().__init__(real, ipc, cfg, device, model, seed, rank, world_size)
        self.data = real

    def init(self, g: torch.Generator) -> DistillState:
        """Synthetic sentence embeddings (from random real sentences of each class, or noise), soft labels and the log
        step size."""
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
        """Unroll a fresh TextCNN's training on the synthetic sentences and descend the real-data loss of the result
        through the unroll (DD's meta-gradient)."""
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
        """The synthetic embeddings, soft labels, labels and learned lr as a TextSummary."""
        p = state.params
        return TextSummary(p["x"].detach().float().cpu().clone(), p["soft"].detach().float().cpu().clone(),
                           state.buffers["y"].cpu().clone(), float(p["log_lr"].detach().exp()),
                           self.meta(state, inner_steps=self.cfg.inner_steps, channels=self.cfg.channels,
                                     max_len=self.data.max_len, dim=self.data.dim,
                                     vocab_size=len(self.data.vocab)))


# ---------------------------------------------------------------------- evaluation
def evaluate_text(summary: TextSummary, data: TextData, *, runs: int = 3, repeats: int = 1, steps: int | None = None,
                  lr: float | None = None, seed: int = 0, device: str = "cpu") -> EvalResult:
    """Fresh TextCNNs trained as in the distillation (plain SGD at the learned step size, ``inner_steps x
    repeats`` full-batch steps unless ``steps`` is given, soft labels), dev accuracy mean and std over ``runs``."""
    summary.validate()
    if summary.x.shape[1:] != (data.max_len, data.dim):
        raise DataError(f"The summary's sentences are {tuple(summary.x.shape[1:])} but the data's embedding space is "
                        f"({data.max_len}, {data.dim}): load the data with the same max_len/dim/embedding.")
    steps = int(summary.meta.get("inner_steps", 10)) * repeats if steps is None else steps
    lr = summary.lr if lr is None else lr
    channels = int(summary.meta.get("channels", 32))
    dev = pick_device(device)
    accs, t0 = [], time.perf_counter()
    for r in range(runs):
        g = generator("eval-text", seed, r)
        net = new_textcnn(data, g, dev, channels=channels, dropout=0.0)
        fit(net, summary.x, summary.soft, steps=steps, lr=lr, momentum=0.0, weight_decay=0.0,
            batch_size=len(summary), label_kind="logits", decay_at_half=False, amp=False, generator=g)
        accs.append(accuracy(net, data.dev_ids.to(dev), data.dev_y))
    return _text_result(accs, data, steps, lr, t0, sentences=len(summary), optimizer="sgd")


def _text_result(accs: list[float], data: TextData, steps: int | None, lr: float, t0: float, **extra) -> EvalResult:
    """An EvalResult from per-run accuracies (std only with more than one run)."""
    t = torch.tensor(accs)
    return EvalResult(float(t.mean()), float(t.std()) if len(accs) > 1 else 0.0, accs, len(accs), "textcnn", data.name,
                      "train", steps, None, lr, time.perf_counter() - t0, extra)


def train_on_ids(data: TextData, idx: torch.Tensor | None, *, runs: int = 3, epochs: int = 1, steps: int | None = None,
                 lr: float = 1e-3, seed: int = 0, device: str = "cpu", channels: int = 32) -> EvalResult:
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
    return _text_result(accs, data, steps, lr, t0, sentences=len(y), optimizer="adam",
                        **({} if steps is not None else {"data_epochs": epochs}))


def random_subset(data: TextData, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` random training sentences of every class."""
    g = generator("text-random-subset", seed)
    return torch.cat([ix[torch.randperm(len(ix), generator=g)[:per_class]] for ix in data.by_class()])


def random_sentences(data: TextData, per_class: int, seed: int = 0, like: TextSummary | None = None) -> TextSummary:
    """Baseline in summary form: ``per_class`` random real training sentences of every class (their embedding
    sequences), labelled as the text method starts (one-hot logits x 2), trained by the same protocol as
    ``like`` (its learned step size, inner steps and width; else the method's defaults)."""
    idx = random_subset(data, per_class, seed)
    y = data.train_y[idx].clone()
    meta = {"method": "random", "dataset": data.name, "ipc": per_class, "seed": seed, "versions": library_versions()}
    meta.update({k: like.meta[k] for k in ("inner_steps", "channels") if like is not None and k in like.meta})
    lr = like.lr if like is not None else TextConfig().init_lr
    return TextSummary(data.embedding[data.train_ids[idx]].clone(), F.one_hot(y, data.num_classes).float() * 2.0, y,
                       lr, meta)


def _random_baseline(data: TextData, summary: TextSummary, ipc: int, seed: int, device: str) -> TextSummary:
    """Random real sentences, ``ipc`` per class, shaped like ``summary``."""
    return random_sentences(data, ipc, seed, like=summary)


register_modality(Modality("text", "synthetic sentences per class", "sst2", "textcnn", _random_baseline))
