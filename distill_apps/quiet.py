"""Quiet host libraries: the warnings and log lines of torch, numpy, Avalanche, Flower, Ray, Opacus, NNI and
qpsolvers that say nothing a distill-apps user can act on, filtered in one place.

:data:`RULES` lists each filtered warning as ``(category, message pattern, module pattern, reason)``;
:data:`LOG_RULES` the host log records dropped (Flower logs through the ``flwr`` logger, not ``warnings``).
The CLI and the recipes call :func:`quiet_hosts` (``--verbose`` shows everything instead); the adapters wrap the
host calls that emit them in :func:`quieted`, so Python users of an adapter get the same quiet. A warning is
dropped twice over: by ``warnings`` filters, and when it is about to be shown (:func:`is_quieted`), since some hosts
put their own filter in front of ours. Nothing of the package's own (:class:`~distill_apps.errors.DistillWarning`)
is ever filtered here.
"""
from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

__all__ = ["RULES", "LOG_RULES", "Rule", "LogRule", "quiet_hosts", "quieted", "is_quieted"]


@dataclass(frozen=True)
class Rule:
    """A host warning to filter: its category, a regex matched at the start of its message (``warnings``'
    semantics), a regex of the module it is attributed to ("" any), and why a user need not see it."""

    category: type[Warning]
    message: str
    module: str
    reason: str


@dataclass(frozen=True)
class LogRule:
    """Host log records to drop: ``logger``'s records below ``level`` (0: none by level) and those whose message
    matches ``message`` (a regex searched in it; "" none by message)."""

    logger: str
    level: int
    message: str
    reason: str


RULES: tuple[Rule, ...] = (
    Rule(UserWarning, r"no QP solver found", r"qpsolvers",
         "Avalanche imports qpsolvers for GEM/A-GEM at import time; distill-apps never solves a QP."),
    Rule(DeprecationWarning, r"Call to deprecated function update", r"avalanche",
         "Avalanche 0.6's own ReplayPlugin calls its deprecated update(); nothing a user can change."),
    Rule(UserWarning, r"No loggers specified", r"avalanche",
         "Avalanche's EvaluationPlugin without loggers: the recipes collect the metrics themselves."),
    Rule(RuntimeWarning, r"invalid value encountered in (subtract|reduce)", r"numpy",
         "numpy's spread of values holding inf (a non-private run's epsilon): the report prints inf/nan as such."),
    Rule(UserWarning, r"Secure RNG turned off", r"opacus",
         "Opacus' reminder on every engine that secure_mode is off; the recipes are experiments and say so."),
    Rule(UserWarning, r"Optimal order is the (largest|smallest) alpha", r"opacus",
         "Opacus' RDP accountant hint to widen its orders; the epsilon reported is still a valid upper bound."),
    Rule(UserWarning, r"Full backward hook is firing when gradients are computed with respect to module outputs",
         r"", "torch notes that Opacus' per-sample-gradient hooks fire on a first layer whose input needs no "
              "gradient; the gradients are right."),
    Rule(RuntimeWarning, r".*is found to be not a nn\.Module", r"nni",
         "NNI 3.0 warns about every torch.nn class newer than itself while importing."),
    Rule(DeprecationWarning, r"`torch\.jit\.\w+` is deprecated", r"",
         "torch's TorchScript deprecation, raised inside host libraries (NNI, Lightning), not by our code."),
    Rule(FutureWarning, r"Tip: In future versions of Ray", r"ray",
         "Ray's note about a future environment-variable change; the simulation sets its GPUs explicitly."),
)

LOG_RULES: tuple[LogRule, ...] = (
    LogRule("flwr", logging.WARNING, "",
            "Flower's INFO lines (rounds, records, sampling): the recipe reports its own progress and results."),
    LogRule("flwr", 0, r"The `run_simulation` function is deprecated",
            "Flower 1.41 deprecates the Python simulation entry the federated recipe uses (`flwr run` is the "
            "deployment path, documented in the user guide)."),
    LogRule("flwr", 0, r"fraction_evaluate is set to 0\.0",
            "The recipe's strategies evaluate on the server on purpose; no federated evaluation is skipped."),
    LogRule("nni.nas.experiment.config.experiment", 0, r"`training_service` will be ignored for sequential",
            "NNI's note that the in-process sequential engine needs no training service (the search runs here)."),
)


class _HostLogFilter(logging.Filter):
    """Drops the records :data:`LOG_RULES` names for one logger while ``active``."""

    def __init__(self, rules: list[LogRule]) -> None:
        super().__init__()
        self.rules, self.active = rules, True

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active:
            return True
        for r in self.rules:
            if record.levelno < r.level or (r.message and re.search(r.message, record.getMessage())):
                return False
        return True


_FILTERS: dict[str, _HostLogFilter] = {}
_STATE = {"verbose": False}  # what the CLI or a recipe asked for; adapters' quieted() follows it


def _log_filters(active: bool) -> None:
    by_logger: dict[str, list[LogRule]] = {}
    for r in LOG_RULES:
        by_logger.setdefault(r.logger, []).append(r)
    for name, rules in by_logger.items():
        if name not in _FILTERS:
            _FILTERS[name] = _HostLogFilter(rules)
            logging.getLogger(name).addFilter(_FILTERS[name])
        _FILTERS[name].active = active


def is_quieted(message: Warning | str, category: type[Warning], filename: str) -> bool:
    """Whether a warning about to be shown is one of :data:`RULES` (its module pattern looked for in the path
    of the file it is attributed to)."""
    return any(issubclass(category, r.category) and re.match(r.message, str(message), re.I)
               and (not r.module or re.search(rf"(^|[/\\]){r.module}([/\\.]|$)", filename)) for r in RULES)


class _QuietShow:
    """``warnings.showwarning`` that drops :data:`RULES`' warnings at the last step, since some hosts re-add
    their own filter in front of ours (Avalanche's ``@deprecated`` calls ``simplefilter("once")`` on each call)."""

    def __init__(self, shown) -> None:
        self.shown = shown

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        if not is_quieted(message, category, filename):
            self.shown(message, category, filename, lineno, file, line)


def _warning_filters(verbose: bool) -> None:
    if verbose:
        warnings.simplefilter("default")  # every warning, once per place (DeprecationWarnings included)
        if isinstance(warnings.showwarning, _QuietShow):
            warnings.showwarning = warnings.showwarning.shown
        return
    for r in RULES:
        warnings.filterwarnings("ignore", message=r.message, category=r.category, module=r.module)
    if not isinstance(warnings.showwarning, _QuietShow):
        warnings.showwarning = _QuietShow(warnings.showwarning)


def quiet_hosts(verbose: bool = False) -> None:
    """Filter the host warnings and log records of :data:`RULES` and :data:`LOG_RULES` for the rest of the
    process (what the CLI and the recipes do); ``verbose=True`` shows every warning and log record instead."""
    _STATE["verbose"] = bool(verbose)
    _warning_filters(verbose)
    _log_filters(not verbose)


@contextmanager
def quieted(verbose: bool | None = None) -> Iterator[None]:
    """:func:`quiet_hosts` inside a ``with`` block only (warning filters, log filters and the verbose setting
    restored after it). ``verbose=None`` (what adapters pass) follows the enclosing setting: quiet, unless the
    CLI or a recipe was run with ``--verbose``."""
    before, was = {name: f.active for name, f in _FILTERS.items()}, _STATE["verbose"]
    with warnings.catch_warnings():
        quiet_hosts(was if verbose is None else verbose)
        try:
            yield
        finally:
            _STATE["verbose"] = was
            for name, f in _FILTERS.items():
                f.active = before.get(name, False)
