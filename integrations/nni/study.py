"""The rank-correlation study: are distilled sets good NAS proxies? K architectures trained on the full data
(ground truth) and on each proxy; Spearman / Kendall / top-k agreement of the rankings and the speed-up, with a
checkpoint folder that lets a long study resume. Dataset distillation papers use their summaries this way (Zhao
et al., "Dataset Condensation with Gradient Matching", ICLR 2021, Sec. 4.3; Zhao & Bilen, DSA, ICML 2021; DM,
WACV 2023)."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from nni.nas.nn.pytorch import ModelSpace

import distill_apps as da
from distill_apps import RealData, SyntheticSet
from distill_apps.errors import ConfigError
from distill_apps.runtime import generator, pick_device
from distill_apps.safe_io import write_json
from distill_apps.train import fit

from .proxy import ProxyTask, holdout_split, train_and_score
from .ranking import kendall_tau, spearman, top_k_overlap
from .space import ConvNetSpace, arch_key, build_candidate, sample_architectures

__all__ = ["StudyResult", "StudyCheckpoint", "train_full", "rank_correlation_study", "BASELINE_PROXIES",
           "proxy_preference"]


#: proxies that are baselines, not distilled sets: a Spearman tie with a distilled proxy goes to the distilled one
BASELINE_PROXIES = frozenset({"random"})


def proxy_preference(name: str, spearman_rho: float) -> tuple[float, bool]:
    """Sort key of a proxy: its Spearman rho (NaN, a constant proxy, ranks last), ties broken toward a distilled
    proxy over a baseline of :data:`BASELINE_PROXIES` (then the first in the study's order)."""
    return (-2.0 if math.isnan(spearman_rho) else spearman_rho, name not in BASELINE_PROXIES)


@dataclass(repr=False)
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
        """The result as a plain dict (JSON-ready)."""
        return asdict(self)

    def table(self) -> list[dict[str, Any]]:
        """One row per proxy: spearman, kendall, top-k overlap, seconds per candidate, speed-up."""
        return [{"proxy": n, **{k: p[k] for k in ("spearman", "kendall", "top_k_overlap", "top_k", "mean_proxy_acc",
                                                  "seconds_per_candidate", "speedup", "distill_seconds",
                                                  "amortised_speedup")}} for n, p in self.proxies.items()]

    def __repr__(self) -> str:
        from distill_apps.reprs import one_line

        rho = [f"{n} rho {p.get('spearman', float('nan')):.2f}" for n, p in self.proxies.items()]
        return one_line("StudyResult", [self.dataset, f"ipc {self.ipc}", f"{len(self.archs)} architectures", *rho])

    def best_proxy(self) -> str:
        """The proxy with the highest Spearman rho; a tie goes to a distilled proxy (:func:`proxy_preference`)."""
        return max(self.proxies, key=lambda n: proxy_preference(n, self.proxies[n]["spearman"]))


def train_full(space: ModelSpace, sample: dict[str, Any], real: RealData, epochs: int, seed: int,
               dev: torch.device) -> tuple[float, float]:
    """Ground truth of the study: ``sample`` trained on all of ``real``'s training split, test accuracy and seconds."""
    t0 = time.perf_counter()
    g = generator("nas-full", seed, arch_key(sample))
    net = build_candidate(space, sample, generator("nas-candidate-init", seed, arch_key(sample)), dev)
    fit(net, real.x_train.to(dev), real.y_train.to(dev), epochs=epochs, lr=0.01, generator=g)  # real data
    secs = time.perf_counter() - t0
    return da.score(net, real), secs


class StudyCheckpoint:
    """Files under ``folder`` that let a long study resume where it stopped (written atomically as it goes).

    ``settings.json`` pins what the files belong to (data, architectures, epochs, seed, methods' network);
    ``ground_truth.json`` grows by one architecture at a time; each proxy keeps its summary
    (``proxy_<method>_ipc<k>.safetensors``, the package's safe format) and its scores
    (``scores_<method>_ipc<k>.json``, one candidate at a time). A folder of another study is refused.
    """

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any]):
        """Open (or start) a study checkpoint in ``folder``; one of other settings is a ConfigError naming the settings
        that differ."""
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(settings, default=str))
        old = self.load("settings")
        if old is not None and old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ConfigError(f"the checkpoint folder {self.dir} holds a study with other settings "
                              f"({', '.join(diff)}); resume with the same options, or give another folder (or delete "
                              "this one).")
        self.save("settings", settings)

    def load(self, name: str) -> Any:
        """The JSON file ``name`` of the folder, or None when it is not there yet."""
        f = self.dir / f"{name}.json"
        if not f.exists():
            return None
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{f} is not valid JSON ({e}); delete it to recompute that part.") from e

    def save(self, name: str, obj: Any) -> None:
        """Write ``obj`` as the folder's JSON file ``name`` (atomically)."""
        write_json(self.dir / f"{name}.json", obj)

    def summary_path(self, method: str, ipc: int) -> Path:
        """Where this study keeps its proxy summary of ``method`` at ``ipc``."""
        return self.proxy_file(self.dir, method, ipc)

    @staticmethod
    def proxy_file(folder: str | os.PathLike, method: str, ipc: int) -> Path:
        """Where a study's proxy summary of ``method`` at ``ipc`` lives in its checkpoint ``folder``."""
        return Path(folder) / f"proxy_{method}_ipc{ipc}.safetensors"


def rank_correlation_study(real: RealData | str, *, k: int = 20, ipc: int = 10,
                           methods: Sequence[str] = ("dm", "dsa", "random"), full_epochs: int = 20,
                           proxy_epochs: int = 300, val_per_class: int = 30, steps: int | None = None,
                           method_configs: dict[str, dict[str, Any]] | None = None,
                           augment: str | None = "auto", seed: int = 0, device: str = "auto",
                           data_root: str | None = None, space: ModelSpace | None = None, top_k: int | None = None,
                           summaries: dict[str, SyntheticSet] | None = None, progress: bool = True,
                           distill_model: str = "convnet", ground_truth: StudyResult | None = None,
                           checkpoint: str | os.PathLike | None = None) -> StudyResult:
    """Rank K architectures by full-data training and by each proxy; correlate the rankings.

    Ground truth: each architecture trained on the real training split (minus the held-out validation
    images) for ``full_epochs`` and tested on the test split. Proxies: each method in ``methods`` distils
    ``ipc`` images per class from the same split (``random`` is the random-subset baseline of the same size;
    ``steps=None`` runs the method's quick preset; ``method_configs[method]`` holds its options), then every
    architecture trains on it for ``proxy_epochs`` and is scored on the validation images — what a search
    would see. ``summaries`` may
    give ready proxies by name. Timing is wall-clock per candidate (training + scoring); ``speedup`` is the
    mean full-data time over the mean proxy time, ``amortised_speedup`` also charges the distillation.
    ``distill_model`` is the network the methods distil with; ``ground_truth`` (an earlier study of the same
    data, K and seed, e.g. at another IPC) reuses its full-data accuracies instead of training them again.
    ``checkpoint`` (a folder, see :class:`StudyCheckpoint`) saves every finished piece and reuses what a stopped
    run of the same study left there.
    """
    dev = pick_device(device)
    real = da.load_dataset(real, data_root) if isinstance(real, str) else real
    method_configs = {m: dict(c) for m, c in (method_configs or {}).items() if c}
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
                                          "steps": steps, "method_configs": method_configs, "augment": augment,
                                          "seed": seed, "distill_model": distill_model})
    full_acc, full_sec = _ground_truth(space, archs, rest, full_epochs, seed, dev, real.name, ck, ground_truth, bar)
    result = StudyResult(real.name, ipc, k, archs, full_acc, full_sec,
                         settings={"full_epochs": full_epochs, "proxy_epochs": proxy_epochs,
                                   "val_per_class": val_per_class, "steps": steps, "method_configs": method_configs,
                                   "augment": augment, "seed": seed, "device": str(dev),
                                   "train_images": int(rest.x_train.shape[0]), "methods": list(methods),
                                   "distill_model": distill_model})
    for method in methods:
        summary, dsec = _proxy_summary(method, rest, ipc, (summaries or {}).get(method), ck, steps=steps,
                                       model=distill_model, seed=seed, device=str(dev),
                                       config=method_configs.get(method))
        task = ProxyTask(summary, x_val, y_val, epochs=proxy_epochs, augment=augment,
                         flip_invariant=real.flip_invariant, seed=seed, device=str(dev))
        accs, secs = _proxy_scores(space, archs, task, f"{method}_ipc{ipc}", seed, dev, ck, bar)
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


def _ground_truth(space: ModelSpace, archs: list[dict[str, Any]], rest: RealData, full_epochs: int, seed: int,
                  dev: torch.device, dataset: str, ck: StudyCheckpoint | None, ground_truth: StudyResult | None,
                  bar: Any) -> tuple[list[float], list[float]]:
    """Full-data accuracies and seconds of every architecture: from ``ground_truth`` (an earlier study of the
    same architectures), else what a stopped run checkpointed plus the architectures still to train."""
    if ground_truth is not None:
        same = (ground_truth.archs == archs and ground_truth.settings.get("full_epochs") == full_epochs
                and ground_truth.settings.get("seed") == seed and ground_truth.dataset == dataset)
        if not same:
            raise ConfigError("ground_truth comes from a study of other architectures, epochs, seed or data; "
                              "pass a study run with the same dataset, k, space, full_epochs and seed.")
        if bar:
            bar.update(len(archs))
        return list(ground_truth.full_accuracy), list(ground_truth.full_seconds)
    done = (ck.load("ground_truth") if ck is not None else None) or {"accuracy": [], "seconds": []}
    full_acc, full_sec = done["accuracy"], done["seconds"]
    if bar:
        bar.update(len(full_acc))
    for s in archs[len(full_acc):]:
        a, t = train_full(space, s, rest, full_epochs, seed, dev)
        full_acc.append(a)
        full_sec.append(t)
        if ck:
            ck.save("ground_truth", {"accuracy": full_acc, "seconds": full_sec})
        if bar:
            bar.update(1)
    return full_acc, full_sec


def _proxy_summary(method: str, rest: RealData, ipc: int, given: SyntheticSet | None, ck: StudyCheckpoint | None,
                   **run: Any) -> tuple[SyntheticSet, float]:
    """The proxy of ``method`` (given, checkpointed, or distilled now with ``run``) and its distillation seconds."""
    t0 = time.perf_counter()
    saved = ck.load(f"distill_{method}_ipc{ipc}") if ck else None
    if given is None and saved is not None and ck.summary_path(method, ipc).exists():
        return SyntheticSet.load(ck.summary_path(method, ipc)), saved["seconds"]
    summary = given if given is not None else da.distill(method, rest, ipc, budget="quick", progress=False, **run)
    dsec = time.perf_counter() - t0
    if ck:
        summary.save(ck.summary_path(method, ipc))
        ck.save(f"distill_{method}_ipc{ipc}", {"seconds": dsec})
    return summary, dsec


def _proxy_scores(space: ModelSpace, archs: list[dict[str, Any]], task: ProxyTask, tag: str, seed: int,
                  dev: torch.device, ck: StudyCheckpoint | None, bar: Any) -> tuple[list[float], list[float]]:
    """Each architecture trained on the proxy and scored on the held-out images (resuming a checkpoint)."""
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
    return accs, secs
