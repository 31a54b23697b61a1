"""Errors that name the problem and the fix.

Every user-facing failure in distill-apps is a subclass of :class:`DistillError`. The CLI prints the
message as one paragraph and exits non-zero; library users can catch the specific class.
"""
from __future__ import annotations


class DistillError(ValueError):
    """Base class: a problem the user can fix. The message says what and how."""


class ConfigError(DistillError):
    """A bad argument or configuration value (IPC, unknown name, wrong type)."""


class DataError(DistillError):
    """Missing, malformed or non-finite data."""


class SummaryFormatError(DistillError):
    """A summary, checkpoint or trajectory file that is corrupt, truncated, foreign or too new."""


class CheckpointMismatchError(DistillError):
    """A checkpoint written by another method, dataset or configuration."""


class NonFiniteError(DistillError):
    """NaN or Inf appeared in data, gradients or the synthetic set."""


class MemoryBudgetError(DistillError):
    """The run would exceed (or ran out of) memory; the message says what to lower."""


class DistillWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one line)."""


class LegacyFileWarning(DistillWarning):
    """A file written by an older distill-apps whose checksum does not cover its header."""
