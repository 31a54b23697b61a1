"""Searches on the proxy: NNI's NAS strategies in its sequential engine (no NNI manager, no web server, no
subprocesses), and TPE over training hyper-parameters (in process, or through NNI's HPO ``Experiment``).
Everything NNI writes goes under the ``workdir`` passed (a fresh temp dir when omitted), never ``~``."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from nni.nas import strategy as nas_strategy
from nni.nas.experiment import NasExperimentConfig
from nni.nas.nn.pytorch import ModelSpace
from nni.runtime import log as nni_log

from distill_apps.errors import ConfigError
from distill_apps.registry import Registry
from distill_apps.runtime import generator

from .host_compat import SandboxedNasExperiment
from .proxy import ProxyTask, proxy_evaluator, train_and_score
from .space import ConvNetSpace, build_candidate, space_choices

__all__ = ["STRATEGIES", "SearchResult", "search_architecture", "search_hyperparameters", "HPO_SPACE", "HPO_KEYS"]

#: NNI NAS strategies by name: ``(seed, trials) -> strategy``
STRATEGIES: Registry[Callable[..., Any]] = Registry("NNI strategy")


@STRATEGIES.register("random")
def _random(seed: int = 0, trials: int = 10) -> Any:
    """NNI's Random strategy (deduplicated, seeded)."""
    return nas_strategy.Random(dedup=True, seed=seed)


@STRATEGIES.register("evolution")
def _evolution(seed: int = 0, trials: int = 10) -> Any:
    """RegularizedEvolution (Real et al. 2019), population and tournament scaled to the trial budget."""
    pop = max(2, min(20, trials // 2))
    return nas_strategy.RegularizedEvolution(population_size=pop, sample_size=max(2, pop // 4), mutation_prob=0.2,
                                             dedup=True, seed=seed)


@STRATEGIES.register("tpe")
def _tpe(seed: int = 0, trials: int = 10) -> Any:
    """NNI's TPE strategy (Bergstra et al., NeurIPS 2011), maximising accuracy."""
    return nas_strategy.TPE(optimize_mode="maximize", seed=seed)


@STRATEGIES.register("grid")
def _grid(seed: int = 0, trials: int = 10) -> Any:
    """NNI's GridSearch over the space."""
    return nas_strategy.GridSearch(seed=seed)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them."""
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


def workdir_path(workdir: str | os.PathLike | None) -> Path:
    """``workdir`` created and absolute (a fresh temporary folder when None)."""
    path = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="distill-apps-nni-"))
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


@dataclass(repr=False)
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
        """The result as a plain dict (JSON-ready)."""
        return asdict(self)

    def __repr__(self) -> str:
        from distill_apps.reprs import one_line

        return one_line("SearchResult", [self.strategy, f"{len(self.trials)} trials",
                                         f"best {100 * self.best_accuracy:.2f} %", f"{self.best}",
                                         f"{self.seconds:.0f} s"])


def _run_nas(space: ModelSpace, evaluator: Any, strategy: Any, name: str, trials: int, work: Path,
             verbose: bool) -> SearchResult:
    """Run a NAS experiment in NNI's sequential engine (sandboxed manifest, working folder under ``work``) and collect
    every trial."""
    if trials < 1:
        raise ConfigError(f"trials must be >= 1; got {trials}.")
    cfg = NasExperimentConfig("sequential", "simplified", "local")
    cfg.max_trial_number = trials
    cfg.experiment_working_directory = str(work / "experiments")
    cfg.experiment_name = f"distill-apps-{name}"
    t0 = time.perf_counter()
    if not verbose:
        nni_log.silence_stdout()
    exp = SandboxedNasExperiment(space, evaluator, strategy, config=cfg, manifest_dir=work / "manifest")
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
                    workdir_path(workdir), verbose)


HPO_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"_type": "loguniform", "_value": [1e-3, 3e-1]},
    "weight_decay": {"_type": "loguniform", "_value": [1e-5, 1e-2]},
}
HPO_KEYS = ("lr", "weight_decay", "epochs", "batch_size")


def _check_hpo_space(space: dict[str, dict[str, Any]]) -> None:
    """Refuse HPO parameters the proxy trainer does not take."""
    bad = sorted(set(space) - set(HPO_KEYS))
    if bad:
        raise ConfigError(f"unknown HPO parameter(s) {bad}: the proxy trainer tunes {', '.join(HPO_KEYS)}.")


def search_hyperparameters(task: ProxyTask, architecture: dict[str, Any] | None = None,
                           space: dict[str, dict[str, Any]] | None = None, *, trials: int = 10, seed: int = 0,
                           engine: str = "sequential", workdir: str | os.PathLike | None = None,
                           port: int | None = None, verbose: bool = False, timeout: float = 1800) -> SearchResult:
    """TPE over training hyper-parameters (NNI's search-space format, keys from lr/weight_decay/epochs/
    batch_size) for one architecture (default: the space's first choices) on the proxy.

    ``engine="sequential"``: NNI's ``TpeTuner`` driven in this process (NNI's NAS TPE strategy refuses
    continuous ranges, so the HPO tuner API is used directly; no NNI manager). ``engine="experiment"``: NNI's
    HPO ``Experiment("local")`` with the TPE tuner, each trial a ``python -m distill_apps.integrations.nni
    trial`` process; the NNI manager runs in a child process with HOME / NNI_CONFIG_DIR inside ``workdir`` and
    its REST server bound to 127.0.0.1 (:mod:`.experiment`).
    """
    space = dict(space or HPO_SPACE)
    _check_hpo_space(space)
    s = task.summary
    base = ConvNetSpace(s.image_shape[0], s.num_classes, s.image_shape[1:])
    arch = architecture or {label: vals[0] for label, vals in space_choices(base).items()}
    work = workdir_path(workdir)
    if engine == "sequential":
        return _hpo_in_process(task, base, arch, space, trials, seed, work)
    if engine == "experiment":
        from .experiment import hpo_experiment

        return hpo_experiment(task, arch, space, trials, seed, work, port, timeout)
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
