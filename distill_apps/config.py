"""Typed method configs: dataclasses with the papers' defaults, built from dicts/YAML with clear errors."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any, TypeVar, get_type_hints

from .errors import ConfigError

C = TypeVar("C", bound="MethodConfig")


@dataclass
class MethodConfig:
    """Fields every method has. ``steps`` is the paper's outer-iteration count; ``quick_steps`` a CPU preset."""

    steps: int = 1000
    quick_steps: int = 100
    amp: bool = True  # bf16 autocast where the hardware makes it fast (runtime.bf16_fast)
    compile: bool = False  # torch.compile the embedding pass (one compile, reused by every fresh network)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A hash of the fields that change the result (``steps`` budgets excluded so runs can be extended)."""
        d = {k: v for k, v in self.as_dict().items() if k not in ("steps", "quick_steps")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_config(cls: type[C], overrides: dict[str, Any] | None = None, method: str = "") -> C:
    """Build ``cls`` from ``overrides``; unknown keys and uncoercible values raise :class:`ConfigError`."""
    overrides = dict(overrides or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"Unknown option(s) {unknown} for method {method or cls.__name__}. "
                          f"Known options: {', '.join(sorted(names))}.")
    hints = get_type_hints(cls)
    kw = {}
    for k, v in overrides.items():
        t = hints.get(k)
        try:
            if t in (int, float, str) and v is not None:
                v = t(v)
            elif t is bool and isinstance(v, str):
                v = v.lower() in ("1", "true", "yes", "on")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Option {k}={v!r} of {method or cls.__name__} must be {t.__name__}.") from exc
        kw[k] = v
    return cls(**kw)


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML (or JSON) file of option overrides."""
    import yaml

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"Config file {path} does not exist.") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of option: value.")
    return data
