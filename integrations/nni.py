"""Neural architecture search and HPO on distilled proxy sets, through NNI 3.0.

Dataset distillation papers use their summaries as NAS proxies (Zhao et al., "Dataset Condensation with
Gradient Matching", ICLR 2021, Sec. 4.3; Zhao & Bilen, DSA, ICML 2021; DM, WACV 2023): every candidate network
trains on the small synthetic set instead of the full data, and the search only needs the *ranking* of
candidates to be right. This module plugs that into NNI's own extension points:

- :class:`ConvNetSpace`: a ``ModelSpace`` over the field's ConvNet (depth, width and pooling with
  ``nni.choice``; normalisation and activation with shared-label ``LayerChoice``).
- :func:`proxy_evaluator`: a ``FunctionalEvaluator`` that trains each candidate on a :class:`ProxyTask`
  (a SyntheticSet, using its learned lr and soft labels, trained through :func:`distill_apps.train.fit`) and
  reports the accuracy on held-out *real* validation images with ``nni.report_final_result``.
- :func:`search_architecture`: NNI strategies (``random``, ``evolution`` = RegularizedEvolution, ``tpe``,
  ``grid``) in NNI's sequential engine: no NNI manager, no web server, no subprocesses.
- :func:`search_hyperparameters`: TPE over training hyper-parameters on the proxy, either in the sequential
  engine (``engine="sequential"``, the default) or through NNI's HPO ``Experiment`` (``engine="experiment"``),
  which runs the NNI manager in a child process whose HOME, config and experiment folders are the working
  directory and whose REST server is bound to 127.0.0.1.
- :func:`rank_correlation_study`: K architectures trained on full data and on proxies (distilled sets and
  random subsets); Spearman / Kendall correlation (:func:`spearman`, :func:`kendall_tau`, plain numpy) and
  top-k overlap of the rankings, and the wall-clock speed-up per candidate.

Everything NNI writes goes under the ``workdir`` you pass (a fresh temp dir when omitted), never ``~``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

try:
    with warnings.catch_warnings():  # NNI 3.0 warns about every torch.nn class newer than it (harmless)
        warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module", category=RuntimeWarning)
        import nni
        from nni.mutable import ensure_frozen
        from nni.nas.evaluator import FunctionalEvaluator
        from nni.nas.experiment import NasExperiment, NasExperimentConfig
        from nni.nas.nn.pytorch import LayerChoice, ModelSpace
        from nni.nas.space import model_context
        from nni.nas import strategy as nas_strategy
        from nni.runtime import log as nni_log
        from nni.tools.nnictl.config_utils import Experiments
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("distill_apps.integrations.nni needs NNI 3.0 and PyTorch Lightning: "
                      "pip install 'distill-apps[nas]'") from exc

from .. import safe_io
from ..augment import DSA
from ..data import RealData, load_dataset
from ..errors import ConfigError, DataError
from ..nets.convnet import make_act, make_norm
from ..registry import Registry
from ..runtime import generator, pick_device, seeded_global_rng
from ..summary import SyntheticSet
from ..train import accuracy, fit

__all__ = [
    "ConvNetSpace", "ProxyTask", "holdout_split", "train_and_score", "evaluate_on_proxy", "proxy_evaluator",
    "sample_architectures", "build_candidate", "search_architecture", "search_hyperparameters", "STRATEGIES",
    "train_full", "rankdata", "spearman", "kendall_tau", "top_k_overlap", "rank_correlation_study", "StudyResult",
    "StudyCheckpoint",
]

VAL_KIND, VAL_VERSION = "nas-validation", 1


# ====================================================================== rank correlation (pure numpy)
def rankdata(a: Sequence[float]) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (``scipy.stats.rankdata(method="average")``)."""
    a = np.asarray(a, dtype=float)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    ranks = np.empty(len(a), dtype=float)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(f"rank correlation needs two 1-D sequences of the same length; got {a.shape} and {b.shape}.")
    if len(a) < 2:
        raise DataError("rank correlation needs at least 2 candidates: raise --k.")
    return a, b


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (NaN when one side is constant)."""
    a, b = _check_pair(a, b)
    ra, rb = rankdata(a) - (len(a) + 1) / 2, rankdata(b) - (len(b) + 1) / 2
    den = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b (ties corrected, as ``scipy.stats.kendalltau``): (C - D) / sqrt(pairs untied in a * in b)."""
    a, b = _check_pair(a, b)
    sa = np.sign(a[:, None] - a[None, :])
    sb = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    sa, sb = sa[iu], sb[iu]
    den = math.sqrt(float(np.abs(sa).sum() * np.abs(sb).sum()))
    return float((sa * sb).sum() / den) if den > 0 else float("nan")


def top_k_overlap(a: Sequence[float], b: Sequence[float], k: int) -> float:
    """Fraction of the ``k`` best candidates under ``a`` that are also among the ``k`` best under ``b``."""
    a, b = _check_pair(a, b)
    if not 1 <= k <= len(a):
        raise ConfigError(f"top-k needs 1 <= k <= {len(a)}; got k={k}.")
    ta = set(np.argsort(-a, kind="mergesort")[:k].tolist())
    tb = set(np.argsort(-b, kind="mergesort")[:k].tolist())
    return len(ta & tb) / k


# ====================================================================== the model space
class ConvNetSpace(ModelSpace):
    """The ConvNet of the distillation literature as an NNI model space.

    Blocks of conv3x3(width) -> norm -> act -> pool, then a linear classifier. ``depth``, ``width`` and
    ``pool`` are ``nni.choice`` values (they change shapes, so they are frozen with ``ensure_frozen``);
    ``norm`` and ``act`` are ``LayerChoice``s whose label is shared by every block (one decision each).
    A sample is a dict ``{depth, width, pool, norm, act}``.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: Sequence[int],
                 depths: Sequence[int] = (1, 2, 3), widths: Sequence[int] = (16, 32, 64),
                 norms: Sequence[str] = ("instance", "batch", "none"),
                 acts: Sequence[str] = ("relu", "leakyrelu", "sigmoid", "gelu"),
                 pools: Sequence[str] = ("avg", "max")) -> None:
        super().__init__()
        for name, vals in (("depths", depths), ("widths", widths), ("norms", norms), ("acts", acts),
                           ("pools", pools)):
            if len(vals) == 0:
                raise ConfigError(f"ConvNetSpace needs at least one value for {name}.")
        depth = ensure_frozen(self.add_mutable(nni.choice("depth", list(depths))))
        width = ensure_frozen(self.add_mutable(nni.choice("width", list(widths))))
        pool = ensure_frozen(self.add_mutable(nni.choice("pool", list(pools))))
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(depth):
            layers.append(nn.Conv2d(c, width, 3, padding=1))
            layers.append(LayerChoice({n: make_norm(n, width, (h, w)) for n in norms}, label="norm"))
            layers.append(LayerChoice({a: make_act(a) for a in acts}, label="act"))
            c = width
            if pool != "none" and min(h, w) >= 2:  # never pool a 1x1 map away (8x8 digits at depth 4)
                layers.append(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    @classmethod
    def for_data(cls, real: RealData, **choices) -> "ConvNetSpace":
        c, h, w = real.image_shape
        return cls(c, real.num_classes, (h, w), **choices)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def space_choices(space: ModelSpace) -> dict[str, list[Any]]:
    """``{label: candidate values}`` of every decision in ``space`` (NNI's ``simplify()``)."""
    return {label: list(m.values) for label, m in space.simplify().items()}


def arch_key(sample: dict[str, Any]) -> str:
    """A stable short name of an architecture sample, e.g. ``act=relu,depth=2,norm=batch,pool=avg,width=32``."""
    return ",".join(f"{k}={sample[k]}" for k in sorted(sample))


def sample_architectures(space: ModelSpace, k: int, seed: int = 0) -> list[dict[str, Any]]:
    """``k`` distinct uniform samples of ``space`` (all of it when it holds fewer), in a seeded order."""
    choices = space_choices(space)
    total = math.prod(len(v) for v in choices.values())
    if k < 1:
        raise ConfigError(f"k must be >= 1; got {k}.")
    k = min(k, total)
    rng = np.random.default_rng(seed)
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < k:
        s = {label: vals[int(rng.integers(len(vals)))] for label, vals in choices.items()}
        seen.setdefault(arch_key(s), s)
    return list(seen.values())


def build_candidate(space: ModelSpace, sample: dict[str, Any], g: torch.Generator,
                    device: torch.device | str = "cpu") -> nn.Module:
    """The concrete network of ``sample`` with initial weights drawn from ``g`` (global RNG untouched)."""
    with seeded_global_rng(g), model_context(sample):
        # what NNI's SimplifiedModelSpace.executable_model() does: re-run the space's __init__ with the sample
        return space.trace_copy().get(traceable=False).to(device)


def reinit_(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Re-draw every parameter of ``model`` from ``g`` (NNI builds candidates with the global RNG)."""
    with seeded_global_rng(g):
        for m in model.modules():
            if m is not model and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return model


# ====================================================================== proxy task and evaluator
def holdout_split(real: RealData, val_per_class: int, seed: int = 0) -> tuple[RealData, torch.Tensor, torch.Tensor]:
    """Hold ``val_per_class`` real training images of every class out: ``(rest, x_val, y_val)``.

    The search scores candidates on these (never on the test split); distil the proxies from ``rest``.
    """
    if val_per_class < 1:
        raise ConfigError(f"val_per_class must be >= 1; got {val_per_class}.")
    smallest = min(real.class_counts())
    if val_per_class >= smallest:
        raise ConfigError(f"val_per_class={val_per_class} leaves no training image in the smallest class of "
                          f"{real.name} ({smallest} images): use --val-per-class {max(1, smallest // 5)}.")
    val = real.sample_balanced(val_per_class, generator("nas-holdout", seed))
    keep = torch.ones(real.x_train.shape[0], dtype=torch.bool)
    keep[val] = False
    rest = real.subset(torch.nonzero(keep).flatten())
    return rest, real.x_train[val], real.y_train[val]


@dataclass
class ProxyTask:
    """What each candidate trains on (``summary``) and is scored on (held-out real ``x_val``, ``y_val``).

    ``lr=None`` uses the summary's learned lr (else 0.01); soft labels are used when the summary has them;
    ``augment="auto"`` trains with DSA when the summary's method is evaluated with it (as the papers do).
    """

    summary: SyntheticSet
    x_val: torch.Tensor
    y_val: torch.Tensor
    epochs: int = 300
    lr: float | None = None
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 256
    augment: str | None = "auto"
    flip_invariant: bool = False
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"proxy epochs must be >= 1; got {self.epochs}.")
        if self.x_val.ndim != 4 or tuple(self.x_val.shape[1:]) != tuple(self.summary.image_shape):
            raise DataError(f"validation images {tuple(self.x_val.shape)} do not match the summary's image shape "
                            f"{tuple(self.summary.image_shape)}: hold out images of the dataset it was distilled from.")
        if self.x_val.shape[0] != self.y_val.shape[0] or self.x_val.shape[0] == 0:
            raise DataError(f"validation split needs as many labels as images (and at least one); got "
                            f"{self.x_val.shape[0]} images and {self.y_val.shape[0]} labels.")
        if self.augment not in ("auto", "dsa", None, "none"):
            raise ConfigError(f"augment must be 'auto', 'dsa' or None; got {self.augment!r}.")

    @property
    def augment_used(self) -> str | None:
        if self.augment == "auto":
            return "dsa" if self.summary.meta.get("eval_augment") == "dsa" else None
        return None if self.augment == "none" else self.augment

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the task (summary + validation split + options) under ``folder`` for trial processes."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.summary.save(folder / "proxy.safetensors")
        opts = {k: v for k, v in asdict(self).items() if k not in ("summary", "x_val", "y_val")}
        safe_io.write(folder / "validation.safetensors", {"x": self.x_val, "y": self.y_val}, {"options": opts},
                      VAL_KIND, VAL_VERSION)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ProxyTask":
        folder = Path(folder)
        tensors, header = safe_io.read(folder / "validation.safetensors", VAL_KIND, VAL_VERSION)
        return cls(SyntheticSet.load(folder / "proxy.safetensors"), tensors["x"], tensors["y"], **header["options"])


def train_and_score(model: nn.Module, task: ProxyTask, *, lr: float | None = None,
                    weight_decay: float | None = None, epochs: int | None = None,
                    batch_size: int | None = None, seed: int | None = None) -> dict[str, float]:
    """Train ``model`` on the task's summary with :func:`~distill_apps.train.fit`; score on the real split.

    Keyword overrides are the hyper-parameters HPO tunes. Returns ``accuracy`` (validation), ``train_seconds``
    and ``seconds`` (training + scoring).
    """
    dev = pick_device(task.device)
    t0 = time.perf_counter()
    m = task.summary.materialize()
    target = m.soft if m.soft is not None else m.y
    aug = task.augment_used
    dsa = DSA.for_dataset(task.flip_invariant) if aug == "dsa" else None
    g = generator("nas-proxy-train", task.seed if seed is None else seed)
    model = model.to(dev)
    fit(model, m.x.to(dev), target.to(dev), epochs=epochs or task.epochs,
        lr=lr if lr is not None else (task.lr or m.lr or 0.01),
        weight_decay=task.weight_decay if weight_decay is None else weight_decay, momentum=task.momentum,
        batch_size=batch_size or task.batch_size, label_kind=m.label_kind,
        augment=(lambda xb, gg: dsa(xb, gg)) if dsa else None, generator=g)
    t1 = time.perf_counter()
    acc = accuracy(model, task.x_val.to(dev), task.y_val)
    return {"accuracy": acc, "train_seconds": t1 - t0, "seconds": time.perf_counter() - t0}


def evaluate_on_proxy(model: nn.Module, task: ProxyTask, seed: int = 0, **hparams: Any) -> float:
    """NNI evaluator function: re-initialise ``model`` from ``seed``, train it on the proxy, report accuracy.

    ``nni.report_final_result`` receives the validation accuracy as a float (higher is better), the metric
    NNI's strategies sort by. ``hparams`` (lr, weight_decay, epochs, batch_size) may be NNI mutables; the
    evaluator sees their sampled values.
    """
    reinit_(model, generator("nas-candidate-init", seed))
    res = train_and_score(model, task, seed=seed, **hparams)
    nni.report_final_result(float(res["accuracy"]))
    return float(res["accuracy"])


def proxy_evaluator(task: ProxyTask, seed: int = 0, **hparams: Any) -> FunctionalEvaluator:
    """A ``FunctionalEvaluator`` running :func:`evaluate_on_proxy` on ``task`` (``hparams`` may be mutables)."""
    return FunctionalEvaluator(evaluate_on_proxy, task=task, seed=seed, **hparams)


# ====================================================================== NNI experiments, sandboxed
STRATEGIES: Registry[Callable[..., Any]] = Registry("NNI strategy")


@STRATEGIES.register("random")
def _random(seed: int = 0, trials: int = 10) -> Any:
    return nas_strategy.Random(dedup=True, seed=seed)


@STRATEGIES.register("evolution")
def _evolution(seed: int = 0, trials: int = 10) -> Any:
    """RegularizedEvolution (Real et al. 2019), population and tournament scaled to the trial budget."""
    pop = max(2, min(20, trials // 2))
    return nas_strategy.RegularizedEvolution(population_size=pop, sample_size=max(2, pop // 4), mutation_prob=0.2,
                                             dedup=True, seed=seed)


@STRATEGIES.register("tpe")
def _tpe(seed: int = 0, trials: int = 10) -> Any:
    return nas_strategy.TPE(optimize_mode="maximize", seed=seed)


@STRATEGIES.register("grid")
def _grid(seed: int = 0, trials: int = 10) -> Any:
    return nas_strategy.GridSearch(seed=seed)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _SandboxedNasExperiment(NasExperiment):
    """``NasExperiment`` whose experiment manifest lives in the working directory, not ``~/nni-experiments``."""

    def __init__(self, *args: Any, manifest_dir: Path, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._manifest_dir = manifest_dir

    def _manifest(self) -> Experiments:
        return Experiments(home_dir=str(self._manifest_dir))

    def _start_without_nni_manager(self) -> None:
        self._manifest().add_experiment(self.id, "N/A", int(time.time() * 1000), "N/A", self.config.experiment_name,
                                        "N/A", status="RUNNING", tag=["retiarii"],
                                        logDir=str(self.config.experiment_working_directory))

    def _stop_without_nni_manager(self) -> None:
        self._manifest().update_experiment(self.id, "status", "STOPPED")
        self._manifest().update_experiment(self.id, "endTime", int(time.time() * 1000))


def _workdir(workdir: str | os.PathLike | None) -> Path:
    path = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="distill-apps-nni-"))
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


@dataclass
class SearchResult:
    """What a search tried and what it found; ``trials`` rows are ``{sample, accuracy}``."""

    best: dict[str, Any]
    best_accuracy: float
    trials: list[dict[str, Any]]
    strategy: str
    seconds: float
    workdir: str
    experiment_id: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run_nas(space: ModelSpace, evaluator: Any, strategy: Any, name: str, trials: int, work: Path,
             verbose: bool) -> SearchResult:
    if trials < 1:
        raise ConfigError(f"trials must be >= 1; got {trials}.")
    cfg = NasExperimentConfig("sequential", "simplified", "local")
    cfg.max_trial_number = trials
    cfg.experiment_working_directory = str(work / "experiments")
    cfg.experiment_name = f"distill-apps-{name}"
    t0 = time.perf_counter()
    if not verbose:
        nni_log.silence_stdout()
    exp = _SandboxedNasExperiment(space, evaluator, strategy, config=cfg, manifest_dir=work / "manifest")
    with _env(NNI_CONFIG_DIR=str(work / "nni-config")):
        try:
            exp.start()
        finally:
            exp.stop()
    rows = []
    for model in exp.strategy.list_models(sort=False):
        rows.append({"sample": dict(model.sample or {}), "accuracy": model.metric})
    done = [r for r in rows if r["accuracy"] is not None]
    if not done:
        raise ConfigError(f"no NNI trial finished: read the log under {work / 'experiments'}.")
    best = max(done, key=lambda r: r["accuracy"])
    return SearchResult(best["sample"], float(best["accuracy"]), rows, name, time.perf_counter() - t0, str(work),
                        exp.id)


def search_architecture(task: ProxyTask, space: ModelSpace | None = None, *, strategy: str = "evolution",
                        trials: int = 10, seed: int = 0, workdir: str | os.PathLike | None = None,
                        verbose: bool = False) -> SearchResult:
    """Search ``space`` (default: :class:`ConvNetSpace` for the task's image shape) with an NNI strategy.

    Runs NNI's sequential engine in this process (no NNI manager, no REST server). Every candidate trains on
    the proxy; the best sample by validation accuracy is returned. Files go under ``workdir``.
    """
    make = STRATEGIES.get(strategy)
    s = task.summary
    space = space or ConvNetSpace(s.image_shape[0], s.num_classes, s.image_shape[1:])
    return _run_nas(space, proxy_evaluator(task, seed=seed), make(seed=seed, trials=trials), strategy, trials,
                    _workdir(workdir), verbose)


HPO_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"_type": "loguniform", "_value": [1e-3, 3e-1]},
    "weight_decay": {"_type": "loguniform", "_value": [1e-5, 1e-2]},
}
_HPO_KEYS = ("lr", "weight_decay", "epochs", "batch_size")


def _check_hpo_space(space: dict[str, dict[str, Any]]) -> None:
    bad = sorted(set(space) - set(_HPO_KEYS))
    if bad:
        raise ConfigError(f"unknown HPO parameter(s) {bad}: the proxy trainer tunes {', '.join(_HPO_KEYS)}.")


def search_hyperparameters(task: ProxyTask, architecture: dict[str, Any] | None = None,
                           space: dict[str, dict[str, Any]] | None = None, *, trials: int = 10, seed: int = 0,
                           engine: str = "sequential", workdir: str | os.PathLike | None = None,
                           port: int | None = None, verbose: bool = False, timeout: float = 1800) -> SearchResult:
    """TPE over training hyper-parameters (NNI's search-space format, keys from lr/weight_decay/epochs/
    batch_size) for one architecture (default: the space's first choices) on the proxy.

    ``engine="sequential"``: NNI's ``TpeTuner`` driven in this process (NNI's NAS TPE strategy refuses
    continuous ranges, so the HPO tuner API is used directly; no NNI manager). ``engine="experiment"``: NNI's HPO ``Experiment("local")`` with the TPE
    tuner, each trial a ``python -m distill_apps.integrations.nni trial`` process; the NNI manager runs in a
    child process with HOME / NNI_CONFIG_DIR inside ``workdir`` and its REST server bound to 127.0.0.1.
    """
    space = dict(space or HPO_SPACE)
    _check_hpo_space(space)
    s = task.summary
    base = ConvNetSpace(s.image_shape[0], s.num_classes, s.image_shape[1:])
    arch = architecture or {label: vals[0] for label, vals in space_choices(base).items()}
    work = _workdir(workdir)
    if engine == "sequential":
        return _hpo_in_process(task, base, arch, space, trials, seed, work)
    if engine == "experiment":
        return _hpo_experiment(task, arch, space, trials, seed, work, port, timeout)
    raise ConfigError(f"engine must be 'sequential' or 'experiment'; got {engine!r}.")


def _hpo_in_process(task: ProxyTask, base: ConvNetSpace, arch: dict[str, Any], space: dict[str, dict[str, Any]],
                    trials: int, seed: int, work: Path) -> SearchResult:
    """NNI's TPE tuner driven directly (its HPO API: update_search_space / generate_parameters /
    receive_trial_result); each trial trains on the proxy. No NNI manager, nothing written but ``work``."""
    from nni.algorithms.hpo.tpe_tuner import TpeTuner

    if trials < 1:
        raise ConfigError(f"trials must be >= 1; got {trials}.")
    t0 = time.perf_counter()
    tuner = TpeTuner(optimize_mode="maximize", seed=seed)
    tuner.update_search_space(space)
    rows = []
    for i in range(trials):
        params = tuner.generate_parameters(i)
        hp = {k: (int(v) if k in ("epochs", "batch_size") else float(v)) for k, v in params.items()}
        model = build_candidate(base, arch, generator("nas-candidate-init", seed))
        acc = float(train_and_score(model, task, seed=seed, **hp)["accuracy"])
        tuner.receive_trial_result(i, params, acc)
        rows.append({"sample": dict(params), "accuracy": acc})
    (work / "hpo_trials.json").write_text(json.dumps(rows, indent=1, default=float))
    best = max(rows, key=lambda r: r["accuracy"])
    return SearchResult(best["sample"], best["accuracy"], rows, "tpe-hpo", time.perf_counter() - t0, str(work))


# ---------------------------------------------------------------------- HPO Experiment (NNI manager)
_LOOPBACK_JS = """// distill-apps: bind NNI's REST server (app.listen(port)) to loopback only
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && (args.length === 1 || typeof args[1] === 'function')) {
    args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sandbox_env(work: Path) -> dict[str, str]:
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    (work / "nni-config").mkdir(parents=True, exist_ok=True)
    preload = work / "loopback.js"
    preload.write_text(_LOOPBACK_JS)
    env = dict(os.environ)
    node_opts = env.get("NODE_OPTIONS", "")
    env.update(HOME=str(home), NNI_CONFIG_DIR=str(work / "nni-config"), XDG_CACHE_HOME=str(work / "cache"),
               NODE_OPTIONS=f"{node_opts} --require {preload}".strip(), PYTHONUNBUFFERED="1")
    # the trial processes import distill_apps from wherever this process did
    pkg_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), pkg_root) if p)
    return env


def _hpo_experiment(task: ProxyTask, arch: dict[str, Any], space: dict[str, dict[str, Any]], trials: int,
                    seed: int, work: Path, port: int | None, timeout: float) -> SearchResult:
    if trials < 1:
        raise ConfigError(f"trials must be >= 1; got {trials}.")
    task.save(work / "task")
    spec = {"arch": arch, "space": space, "trials": trials, "seed": seed, "port": port or _free_port(),
            "work": str(work), "python": sys.executable}
    (work / "hpo_spec.json").write_text(json.dumps(spec, indent=1))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "distill_apps.integrations.nni", "hpo-experiment",
                             str(work / "hpo_spec.json")], env=_sandbox_env(work), cwd=str(work),
                            stdout=open(work / "hpo_driver.log", "w"), stderr=subprocess.STDOUT)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=30)
        raise ConfigError(f"the NNI HPO experiment ran past {timeout:.0f} s and was stopped; see "
                          f"{work / 'hpo_driver.log'}; lower trials or proxy epochs.") from None
    out = work / "hpo_result.json"
    if rc != 0 or not out.exists():
        raise ConfigError(f"the NNI HPO experiment failed (exit {rc}); see {work / 'hpo_driver.log'}.")
    res = json.loads(out.read_text())
    return SearchResult(res["best"], res["best_accuracy"], res["trials"], "tpe-experiment",
                        time.perf_counter() - t0, str(work), res.get("experiment_id", ""))


def _trial_command(spec: dict[str, Any], work: Path) -> str:
    """The trial's shell command (NNI runs it through a shell), built from an argument list, every argument quoted."""
    return shlex.join([str(spec["python"]), "-m", "distill_apps.integrations.nni", "trial", str(work / "task"),
                       json.dumps(spec["arch"]), str(int(spec["seed"]))])


def _driver(spec_path: str) -> int:
    """Child process of :func:`_hpo_experiment`: run NNI's HPO ``Experiment`` with TPE, write the result."""
    from nni.experiment import Experiment, launcher

    # NNI polls the new manager's REST server only 3 times, 1 s apart; a busy machine needs longer to start
    # Node, so this (dedicated) child process allows 60 polls
    launcher._check_rest_server.__defaults__ = (60, None)
    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    exp = Experiment("local")
    c = exp.config
    c.experiment_name = "distill-apps-hpo"
    c.trial_command = _trial_command(spec, work)
    c.trial_code_directory = str(work)
    c.search_space = spec["space"]
    c.tuner.name = "TPE"
    c.tuner.class_args = {"optimize_mode": "maximize", "seed": int(spec["seed"])}
    c.max_trial_number = int(spec["trials"])
    c.trial_concurrency = 1
    c.experiment_working_directory = str(work / "experiments")
    c.nni_manager_ip = "127.0.0.1"
    c.training_service.use_active_gpu = False
    try:
        exp.run(int(spec["port"]))
        rows = []
        for t in exp.export_data():
            rows.append({"sample": dict(t.parameter), "accuracy": float(t.value)
                         if not isinstance(t.value, dict) else float(t.value["default"])})
    finally:
        exp.stop()
    if not rows:
        print(f"no trial reported a result; see {work / 'experiments'}", file=sys.stderr)
        return 1
    best = max(rows, key=lambda r: r["accuracy"])
    (work / "hpo_result.json").write_text(json.dumps({"best": best["sample"], "best_accuracy": best["accuracy"],
                                                      "trials": rows, "experiment_id": exp.id}))
    return 0


def _trial(folder: str, arch_json: str, seed: str) -> int:
    """One HPO trial process: read the tuner's parameters, train on the proxy, report the accuracy."""
    task = ProxyTask.load(folder)
    params = nni.get_next_parameter() or {}
    s = task.summary
    space = ConvNetSpace(s.image_shape[0], s.num_classes, s.image_shape[1:])
    model = build_candidate(space, json.loads(arch_json), generator("nas-candidate-init", int(seed)))
    hp = {k: (int(v) if k in ("epochs", "batch_size") else float(v)) for k, v in params.items() if k in _HPO_KEYS}
    evaluate_on_proxy(model, task, seed=int(seed), **hp)
    return 0


# ====================================================================== the rank-correlation study
@dataclass
class StudyResult:
    """Per-architecture accuracies (full data vs each proxy), correlations and timings."""

    dataset: str
    ipc: int
    k: int
    archs: list[dict[str, Any]]
    full_accuracy: list[float]
    full_seconds: list[float]
    proxies: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[dict[str, Any]]:
        """One row per proxy: spearman, kendall, top-k overlap, seconds per candidate, speed-up."""
        return [{"proxy": n, **{k: p[k] for k in ("spearman", "kendall", "top_k_overlap", "top_k", "mean_proxy_acc",
                                                  "seconds_per_candidate", "speedup", "distill_seconds",
                                                  "amortised_speedup")}} for n, p in self.proxies.items()]

    def best_proxy(self) -> str:
        return max(self.proxies, key=lambda n: -2.0 if math.isnan(self.proxies[n]["spearman"])
                   else self.proxies[n]["spearman"])


def train_full(space: ModelSpace, sample: dict[str, Any], real: RealData, epochs: int, seed: int,
               dev: torch.device) -> tuple[float, float]:
    """Ground truth of the study: ``sample`` trained on all of ``real``'s training split, test accuracy and seconds."""
    t0 = time.perf_counter()
    g = generator("nas-full", seed, arch_key(sample))
    net = build_candidate(space, sample, generator("nas-candidate-init", seed, arch_key(sample)), dev)
    fit(net, real.x_train.to(dev), real.y_train.to(dev), epochs=epochs, lr=0.01, generator=g)
    secs = time.perf_counter() - t0
    return accuracy(net, real.x_test.to(dev), real.y_test), secs


class StudyCheckpoint:
    """Files under ``folder`` that let a long study resume where it stopped (written atomically as it goes).

    ``settings.json`` pins what the files belong to (data, architectures, epochs, seed, methods' network);
    ``ground_truth.json`` grows by one architecture at a time; each proxy keeps its summary
    (``proxy_<method>_ipc<k>.safetensors``, the package's safe format) and its scores
    (``scores_<method>_ipc<k>.json``, one candidate at a time). A folder of another study is refused.
    """

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any]):
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(settings, default=str))
        old = self.load("settings")
        if old is not None and old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ConfigError(f"the checkpoint folder {self.dir} holds a study with other settings ({', '.join(diff)}); "
                              "resume with the same options, or give another folder (or delete this one).")
        self.save("settings", settings)

    def load(self, name: str) -> Any:
        f = self.dir / f"{name}.json"
        if not f.exists():
            return None
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{f} is not valid JSON ({e}); delete it to recompute that part.") from e

    def save(self, name: str, obj: Any) -> None:
        safe_io.write_json(self.dir / f"{name}.json", obj)

    def summary_path(self, method: str, ipc: int) -> Path:
        return self.proxy_file(self.dir, method, ipc)

    @staticmethod
    def proxy_file(folder: str | os.PathLike, method: str, ipc: int) -> Path:
        """Where a study's proxy summary of ``method`` at ``ipc`` lives in its checkpoint ``folder``."""
        return Path(folder) / f"proxy_{method}_ipc{ipc}.safetensors"


def rank_correlation_study(real: RealData | str, *, k: int = 20, ipc: int = 10,
                           methods: Sequence[str] = ("dm", "dsa", "random"), full_epochs: int = 20,
                           proxy_epochs: int = 300, val_per_class: int = 30, distill_steps: int | None = None,
                           augment: str | None = "auto", seed: int = 0, device: str = "auto",
                           data_root: str | None = None, space: ModelSpace | None = None, top_k: int | None = None,
                           summaries: dict[str, SyntheticSet] | None = None, progress: bool = True,
                           distill_model: str = "convnet", ground_truth: StudyResult | None = None,
                           checkpoint: str | os.PathLike | None = None) -> StudyResult:
    """Rank K architectures by full-data training and by each proxy; correlate the rankings.

    Ground truth: each architecture trained on the real training split (minus the held-out validation
    images) for ``full_epochs`` and tested on the test split. Proxies: each method in ``methods`` distils
    ``ipc`` images per class from the same split (``random`` is the random-subset baseline of the same size;
    ``distill_steps=None`` runs the method's quick preset), then every architecture trains on it for
    ``proxy_epochs`` and is scored on the validation images — what a search would see. ``summaries`` may
    give ready proxies by name. Timing is wall-clock per candidate (training + scoring); ``speedup`` is the
    mean full-data time over the mean proxy time, ``amortised_speedup`` also charges the distillation.
    ``distill_model`` is the network the methods distil with; ``ground_truth`` (an earlier study of the same
    data, K and seed, e.g. at another IPC) reuses its full-data accuracies instead of training them again.
    ``checkpoint`` (a folder, see :class:`StudyCheckpoint`) saves every finished piece and reuses what a stopped
    run of the same study left there.
    """
    from ..engine import distill

    dev = pick_device(device)
    real = load_dataset(real, data_root) if isinstance(real, str) else real
    rest, x_val, y_val = holdout_split(real, val_per_class, seed)
    space = space or ConvNetSpace.for_data(real)
    archs = sample_architectures(space, k, seed)
    k = len(archs)
    if k < 3:
        raise ConfigError(f"the space holds only {k} architectures: a rank correlation needs at least 3.")
    top = top_k or max(1, k // 5)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=k * (1 + len(methods)), desc="nas-proxy study", dynamic_ncols=True)
    ck = None
    if checkpoint is not None:
        ck = StudyCheckpoint(checkpoint, {"dataset": real.name, "archs": archs, "full_epochs": full_epochs,
                                          "proxy_epochs": proxy_epochs, "val_per_class": val_per_class,
                                          "distill_steps": distill_steps, "augment": augment, "seed": seed,
                                          "distill_model": distill_model})
    full_acc, full_sec = [], []
    done = ck.load("ground_truth") if ck is not None and ground_truth is None else None
    if done is not None:  # a stopped run's finished architectures
        full_acc, full_sec = done["accuracy"], done["seconds"]
        if bar:
            bar.update(len(full_acc))
    if ground_truth is not None:
        same = (ground_truth.archs == archs and ground_truth.settings.get("full_epochs") == full_epochs
                and ground_truth.settings.get("seed") == seed and ground_truth.dataset == real.name)
        if not same:
            raise ConfigError("ground_truth comes from a study of other architectures, epochs, seed or data; "
                              "pass a study run with the same dataset, k, space, full_epochs and seed.")
        full_acc, full_sec = list(ground_truth.full_accuracy), list(ground_truth.full_seconds)
        if bar:
            bar.update(k)
    for s in archs[len(full_acc):] if ground_truth is None else ():
        a, t = train_full(space, s, rest, full_epochs, seed, dev)
        full_acc.append(a)
        full_sec.append(t)
        if ck:
            ck.save("ground_truth", {"accuracy": full_acc, "seconds": full_sec})
        if bar:
            bar.update(1)
    result = StudyResult(real.name, ipc, k, archs, full_acc, full_sec,
                         settings={"full_epochs": full_epochs, "proxy_epochs": proxy_epochs,
                                   "val_per_class": val_per_class, "distill_steps": distill_steps,
                                   "augment": augment, "seed": seed, "device": str(dev),
                                   "train_images": int(rest.x_train.shape[0]), "methods": list(methods),
                                   "distill_model": distill_model})
    for method in methods:
        t0 = time.perf_counter()
        summary = (summaries or {}).get(method)
        tag = f"{method}_ipc{ipc}"
        saved = ck.load(f"distill_{tag}") if ck else None
        if summary is None and saved is not None and ck.summary_path(method, ipc).exists():
            summary, dsec = SyntheticSet.load(ck.summary_path(method, ipc)), saved["seconds"]
        else:
            if summary is None:
                summary = distill(method, rest, ipc, steps=distill_steps, budget="quick", model=distill_model,
                                  seed=seed, device=str(dev), progress=False)
            dsec = time.perf_counter() - t0
            if ck:
                summary.save(ck.summary_path(method, ipc))
                ck.save(f"distill_{tag}", {"seconds": dsec})
        task = ProxyTask(summary, x_val, y_val, epochs=proxy_epochs, augment=augment,
                         flip_invariant=real.flip_invariant, seed=seed, device=str(dev))
        scores = (ck.load(f"scores_{tag}") if ck else None) or {"accuracy": [], "seconds": []}
        accs, secs = scores["accuracy"], scores["seconds"]
        if bar:
            bar.update(len(accs))
        for s in archs[len(accs):]:
            net = build_candidate(space, s, generator("nas-candidate-init", seed, arch_key(s)), dev)
            r = train_and_score(net, task)
            accs.append(r["accuracy"])
            secs.append(r["seconds"])
            if ck:
                ck.save(f"scores_{tag}", scores)
            if bar:
                bar.update(1)
        mean_full, mean_proxy = float(np.mean(full_sec)), float(np.mean(secs))
        result.proxies[method] = {
            "spearman": spearman(accs, full_acc), "kendall": kendall_tau(accs, full_acc),
            "top_k_overlap": top_k_overlap(accs, full_acc, top), "top_k": top, "accuracy": accs, "seconds": secs,
            "mean_proxy_acc": float(np.mean(accs)), "seconds_per_candidate": mean_proxy,
            "speedup": mean_full / mean_proxy, "distill_seconds": dsec,
            "amortised_speedup": k * mean_full / (dsec + k * mean_proxy), "augment": task.augment_used,
            "images": int(len(summary)), "lr": summary.lr,
        }
    if bar:
        bar.close()
    return result


def _main(argv: list[str]) -> int:
    if argv[:1] == ["trial"] and len(argv) == 4:
        return _trial(*argv[1:])
    if argv[:1] == ["hpo-experiment"] and len(argv) == 2:
        return _driver(argv[1])
    print("usage: python -m distill_apps.integrations.nni trial FOLDER ARCH_JSON SEED | hpo-experiment SPEC",
          file=sys.stderr)
    return 2


if __name__ == "__main__":  # the child processes of the HPO Experiment
    sys.exit(_main(sys.argv[1:]))
