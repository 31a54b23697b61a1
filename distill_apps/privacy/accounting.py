"""Privacy accounting through Opacus' accountants (Mironov 2017, RDP; Gopi et al. 2021, PRV).

Every private release in distill-apps is one subsampled Gaussian mechanism: a (Poisson-)sampled batch whose
per-sample contributions are clipped to an L2 bound ``C`` and summed, plus ``N(0, sigma^2 C^2)`` noise.
:func:`calibrate_noise` asks Opacus (``opacus.accountants.utils.get_noise_multiplier``) for the smallest
``sigma`` that keeps a planned number of releases within a target ``(epsilon, delta)``; :class:`PrivacyBudget`
records every release in an Opacus accountant and refuses the release that would overspend, so a run stops
*before* the target is exceeded, never after.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, DistillError
from ..quiet import quieted

ACCOUNTANTS = ("rdp", "prv")


class BudgetExceededError(DistillError):
    """A release would spend more than the target (epsilon, delta); it was not made."""


def check_accountant(accountant: str) -> str:
    """``accountant`` if Opacus has it (``rdp`` or ``prv``), else a :class:`ConfigError` naming both."""
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"Unknown privacy accountant {accountant!r}: use one of {', '.join(ACCOUNTANTS)} "
                          "(Opacus' RDP is the default, PRV is tighter).")
    return accountant


def make_accountant(accountant: str = "rdp"):
    """A fresh Opacus accountant (``RDPAccountant`` or ``PRVAccountant``)."""
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=check_accountant(accountant))


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                accountant: str = "rdp") -> float:
    """Epsilon spent by ``steps`` releases at ``noise_multiplier`` and ``sample_rate`` (Opacus' computation)."""
    if steps <= 0:
        return 0.0
    history = ((float(noise_multiplier), float(sample_rate), int(steps)),)
    return _epsilon(check_accountant(accountant), history, float(delta))


@functools.lru_cache(maxsize=4096)
@quieted()  # Opacus' "optimal order is the largest alpha" hint (distill_apps.quiet.RULES)
def _epsilon(accountant: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Opacus' epsilon for a history (cached: an RDP/PRV evaluation costs up to a second on a busy CPU)."""
    acc = make_accountant(accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


@quieted()
def calibrate_noise(target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
                    accountant: str = "rdp", epsilon_tolerance: float = 0.01) -> float:
    """The noise multiplier that keeps ``steps`` releases at ``sample_rate`` within ``(target_epsilon,
    target_delta)``, found by Opacus' ``get_noise_multiplier`` (binary search on its accountant)."""
    check_target(target_epsilon, target_delta)
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate must lie in (0, 1]; got {sample_rate}.")
    if steps < 1:
        raise ConfigError(f"The number of private releases must be >= 1; got {steps}.")
    return _calibrated(float(target_epsilon), float(target_delta), float(sample_rate), int(steps),
                       check_accountant(accountant), float(epsilon_tolerance))


@functools.lru_cache(maxsize=256)
def _calibrated(eps: float, delta: float, q: float, steps: int, accountant: str, tol: float) -> float:
    """Opacus' noise multiplier for ``(eps, delta)`` over ``steps`` releases at sample rate ``q`` (cached)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=eps, target_delta=delta, sample_rate=q, steps=steps,
                                      accountant=accountant, epsilon_tolerance=tol))


def check_target(epsilon: float, delta: float) -> None:
    """Refuse a target epsilon that is not positive and finite, or a delta outside (0, 1)."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ConfigError(f"Target epsilon must be positive and finite; got {epsilon}. For a run without "
                          "privacy, ask for it explicitly (non_private: true).")
    if not 0 < delta < 1:
        raise ConfigError(f"Target delta must lie in (0, 1), typically below 1/N; got {delta}.")


@dataclass(repr=False)
class PrivacyBudget:
    """A target ``(epsilon, delta)`` and the releases spent so far, accounted by Opacus.

    ``history`` holds ``[noise_multiplier, sample_rate, steps]`` triples (Opacus' own history format), so the
    budget is JSON-able and goes into a checkpoint's ``DistillState.info`` and into ``SyntheticSet.meta``.
    """

    epsilon: float
    delta: float
    accountant: str = "rdp"
    history: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Refuse an impossible target or an unknown accountant."""
        check_target(self.epsilon, self.delta)
        check_accountant(self.accountant)

    def _eps(self, history: list[list[float]]) -> float:
        """Epsilon spent by ``history`` (rows ``[sigma, q, releases]``) at this budget's delta."""
        if not history:
            return 0.0
        return _epsilon(self.accountant, tuple((float(s), float(q), int(n)) for s, q, n in history), float(self.delta))

    @staticmethod
    def _merged(history: list[list[float]], sigma: float, q: float, n: int) -> list[list[float]]:
        """``history`` with ``n`` more releases at ``(sigma, q)`` (merged into the last row when it matches)."""
        h = [list(x) for x in history]
        if h and h[-1][0] == sigma and h[-1][1] == q:
            h[-1][2] += n
        else:
            h.append([float(sigma), float(q), int(n)])
        return h

    @property
    def steps(self) -> int:
        """Number of releases accounted so far."""
        return int(sum(n for _, _, n in self.history))

    def __repr__(self) -> str:
        return (f"PrivacyBudget(target ({self.epsilon:g}, {self.delta:g}), {self.accountant}, {self.steps} releases, "
                f"spent {self.spent():.3g})")

    def spent(self) -> float:
        """Epsilon spent so far at this budget's delta."""
        return self._eps(self.history)

    def would_exceed(self, noise_multiplier: float, sample_rate: float, n: int = 1) -> bool:
        """Whether ``n`` more releases would take the spent epsilon above the target."""
        if noise_multiplier <= 0:
            return True
        return self._eps(self._merged(self.history, noise_multiplier, sample_rate, n)) > self.epsilon

    def spend(self, noise_multiplier: float, sample_rate: float, n: int = 1, checked: bool = False) -> None:
        """Record ``n`` releases, or raise :class:`BudgetExceededError` (recording nothing) if they overspend.

        ``checked=True`` skips the accountant call when the caller already knows the releases fit (e.g. from
        :meth:`max_releases`); Opacus' RDP/PRV evaluation takes up to a second on a busy CPU.
        """
        if not checked and self.would_exceed(noise_multiplier, sample_rate, n):
            raise BudgetExceededError(
                f"{n} more release(s) at noise multiplier {noise_multiplier:.4g} and sample rate {sample_rate:.4g} "
                f"would exceed the target epsilon {self.epsilon} (spent {self.spent():.4g}); stopped before it. "
                "Raise the noise multiplier, lower the number of releases, or raise the target epsilon.")
        self.history = self._merged(self.history, noise_multiplier, sample_rate, n)

    def max_releases(self, noise_multiplier: float, sample_rate: float, limit: int = 1_000_000) -> int:
        """The largest number (at most ``limit``) of further releases that stays within the target."""
        if not self.would_exceed(noise_multiplier, sample_rate, limit):
            return limit
        lo, hi = 0, 1
        while hi <= limit and not self.would_exceed(noise_multiplier, sample_rate, hi):
            lo, hi = hi, hi * 2
        hi = min(hi, limit + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if not self.would_exceed(noise_multiplier, sample_rate, mid) else (lo, mid)
        return lo

    def as_dict(self, with_epsilon: bool = True) -> dict[str, Any]:
        """Target, delta, accountant, releases and history (and the epsilon spent), for metadata and checkpoints."""
        out = {"target_epsilon": self.epsilon, "delta": self.delta, "accountant": self.accountant,
               "releases": self.steps, "history": [list(h) for h in self.history]}
        return {**out, "epsilon": self.spent()} if with_epsilon else out
