"""Typed method configs: dataclasses with the papers' defaults, built from dicts/YAML with clear errors.

Every field is type- and range-checked when a config is built (``make_config`` or the dataclass itself), with
no silent coercion: ``2.7`` never becomes ``2``, ``"maybe"`` never becomes ``False``, NaN and Inf are refused.
Ranges are declarative. A field may carry its own, ``field(default=..., metadata={"min": 1})`` (keys ``min``,
``max``, ``min_open``, ``max_open``, ``choices``); otherwise the rules below apply by field name and type:

* whole numbers: iteration counts (``*_steps``, ``*_loop``, ``*_epochs``, ``*_every``) ``>= 0``; sizes and other
  counts ``>= 1``, or ``>= 0`` when the method's default is 0 (0 = "auto"/"off");
* rates (``lr*``, ``*_lr``): ``> 0``, or ``>= 0`` when the default is 0 (0 = "use the schedule");
* momenta ``[0, 1)``, weights ``lambda_*`` ``>= 0``, probabilities and fractions in their interval (see
  :data:`NAME_RULES`), and the named choices of :data:`CHOICES`;
* every float finite.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, TypeVar, get_type_hints

from .errors import ConfigError
from .validation import in_range, is_int, is_real

C = TypeVar("C", bound="MethodConfig")

# name pattern -> range; the first match wins; a field's own metadata overrides
NAME_RULES: list[tuple[str, dict[str, Any]]] = [
    ("steps", {"min": 0}), ("quick_steps", {"min": 0}),
    ("momentum*", {"min": 0.0, "max": 1.0, "max_open": True}), ("*_momentum", {"min": 0.0, "max": 1.0, "max_open": True}),
    ("lambda_*", {"min": 0.0}), ("beta", {"min": 0.0}), ("reg", {"min": 0.0}), ("threshold", {"min": 0.0}),
    ("early_stop_tol", {"min": 0.0}), ("early_stop_patience", {"min": 0}),
    ("tau", {"min": 0.0, "min_open": True}), ("temperature", {"min": 0.0, "min_open": True}),
    ("epsilon", {"min": 0.0, "min_open": True}), ("delta", {"min": 0.0, "max": 1.0, "min_open": True, "max_open": True}),
    ("clip", {"min": 0.0, "min_open": True}), ("noise_multiplier", {"min": 0.0}),
    ("sample_rate", {"min": 0.0, "max": 1.0}), ("sparsity", {"min": 0.0, "max": 1.0, "max_open": True}),
    ("reduction", {"min": 0.0, "max": 1.0}),  # 0: the budget is --ipc nodes per class (graph methods)
    ("adj_every", {"min": 0}), ("releases", {"min": 0}),
    # iteration counts: 0 means "none" (the method says when it needs at least one)
    ("*_steps", {"min": 0}), ("*_loop", {"min": 0}), ("*_epochs", {"min": 0}), ("*_every", {"min": 0}),
    ("lr*", {"rate": True}), ("*_lr", {"rate": True}),
]
CHOICES: dict[str, tuple[str, ...]] = {
    "dis_metric": ("ours", "mse", "l1", "cos"), "krr_form": ("auto", "primal", "dual"),
    "grad_mode": ("tesla", "exact"), "unroll_memory": ("autograd", "checkpoint", "adjoint"),
    "decode": ("nearest", "bilinear", "bicubic", "area", "nearest-exact"), "init_mode": ("random", "fixed"),
    "embedding": ("trained", "random", "pixels"), "structure": ("", "pge", "bernoulli", "none"),
}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_INT_RE = re.compile(r"^[+-]?\d+$")


def _base_type(t: Any) -> tuple[Any, bool]:
    """``(type, optional)`` of a field annotation (``float | None`` -> ``(float, True)``)."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return (args[0] if len(args) == 1 else t), type(None) in typing.get_args(t)
    return t, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def field_rule(cls: type, f: dataclasses.Field, t: Any) -> dict[str, Any]:
    """The range rule of one field: its metadata, else the first :data:`NAME_RULES` match, else by type."""
    rule: dict[str, Any] = {}
    for pat, r in NAME_RULES:
        if fnmatch.fnmatchcase(f.name, pat):
            rule = dict(r)
            break
    if f.name in CHOICES:
        rule["choices"] = CHOICES[f.name]
    rule.update(f.metadata or {})
    default = _default(f)
    if rule.pop("rate", False):
        rule.setdefault("min", 0.0)
        rule.setdefault("min_open", not (is_real(default) and default == 0))
    if t is int and "min" not in rule:
        rule["min"] = 0 if default == 0 else 1
    return rule


def _coerce(name: str, v: Any, t: Any, optional: bool, where: str) -> Any:
    """Parse ``v`` (a YAML/JSON/CLI value) into type ``t`` without losing information, or raise."""
    def bad(must: str) -> ConfigError:
        return ConfigError(f"Option {name}={v!r} of {where} must be {must}.")

    if v is None or (optional and isinstance(v, str) and v.lower() in ("none", "null", "~")):
        if optional:
            return None
        raise bad(f"a {getattr(t, '__name__', t)}, not empty")
    if t is bool:
        if isinstance(v, bool):
            return v
        if is_int(v) and v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
            return v.strip().lower() in _TRUE
        raise bad("true or false (also yes/no, on/off, 1/0)")
    if t is int:
        if is_int(v):
            return v
        if isinstance(v, str) and _INT_RE.match(v.strip()):
            return int(v)
        raise bad("a whole number" + (" (fractions are not rounded)" if is_real(v) else ""))
    if t is float:
        if is_real(v):
            out = float(v)
        elif isinstance(v, str):
            try:
                out = float(v)
            except ValueError:
                raise bad("a number") from None
        else:
            raise bad("a number")
        if not math.isfinite(out):
            raise bad("a finite number (NaN and Inf are refused)")
        return out
    if t is str:
        if isinstance(v, str):
            return v
        if is_int(v):  # YAML reads `--set basis_scales=2` as the int 2: the text the user typed
            return str(v)
        raise bad("a string")
    if isinstance(t, type) and not isinstance(v, t):
        raise bad(f"a {t.__name__}")
    return v


@dataclass
class MethodConfig:
    """Fields every method has. ``steps`` is the paper's outer-iteration count; ``quick_steps`` a CPU preset."""

    steps: int = 1000
    quick_steps: int = 100
    amp: bool = True  # bf16 autocast where the hardware makes it fast (runtime.bf16_fast)
    compile: bool = False  # torch.compile the embedding pass (one compile, reused by every fresh network)

    def __post_init__(self) -> None:
        check_config(self)

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict (what summaries and checkpoints record)."""
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A hash of the fields that change the result (``steps`` budgets excluded so runs can be extended)."""
        d = {k: v for k, v in self.as_dict().items() if k not in ("steps", "quick_steps")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_config(cfg: MethodConfig, method: str = "") -> None:
    """Check every field of ``cfg`` against its type and range rule (see the module docstring)."""
    cls = type(cfg)
    where = method or cls.__name__
    hints = get_type_hints(cls)
    for f in fields(cls):
        t, optional = _base_type(hints.get(f.name))
        v = getattr(cfg, f.name)
        if v is None and optional:
            continue
        ok = {bool: lambda x: isinstance(x, bool), int: is_int, float: lambda x: is_real(x) and math.isfinite(x),
              str: lambda x: isinstance(x, str)}.get(t, lambda x: not isinstance(t, type) or isinstance(x, t))(v)
        if not ok:
            raise ConfigError(f"Option {f.name}={v!r} of {where} must be "
                              f"{'a finite ' if t is float else 'a '}{getattr(t, '__name__', t)}.")
        rule = field_rule(cls, f, t)
        if "choices" in rule and v not in rule["choices"]:
            raise ConfigError(f"Option {f.name}={v!r} of {where} must be one of "
                              f"{', '.join(map(repr, rule['choices']))}.")
        if is_real(v) and not in_range(v, rule.get("min"), rule.get("max"), rule.get("min_open", False),
                                       rule.get("max_open", False)):
            lo, hi = rule.get("min"), rule.get("max")
            rng = (f"in {'(' if rule.get('min_open') else '['}{lo}, {hi}{')' if rule.get('max_open') else ']'}"
                   if lo is not None and hi is not None else
                   f"{'>' if rule.get('min_open') else '>='} {lo}" if lo is not None else f"<= {hi}")
            raise ConfigError(f"Option {f.name}={v!r} of {where} is out of range: it must be {rng}.")


def make_config(cls: type[C], overrides: dict[str, Any] | None = None, method: str = "") -> C:
    """Build ``cls`` from ``overrides``; unknown keys, wrong types and out-of-range values raise :class:`ConfigError`."""
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"Options of {method or cls.__name__} must be a mapping of name: value; got "
                          f"{type(overrides).__name__}.")
    overrides = dict(overrides or {})
    bad_keys = [k for k in overrides if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"Option names must be strings; got {bad_keys!r}.")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"Unknown option(s) {unknown} for method {method or cls.__name__}. "
                          f"Known options: {', '.join(sorted(names))}.")
    hints = get_type_hints(cls)
    where = method or cls.__name__
    kw = {}
    for k, v in overrides.items():
        t, optional = _base_type(hints.get(k))
        kw[k] = _coerce(k, v, t, optional, where)
    try:
        return cls(**kw)
    except ConfigError as exc:  # name the method rather than its config class
        raise ConfigError(str(exc).replace(f" of {cls.__name__} ", f" of {where} ")) from None


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML (or JSON) file of option overrides."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"Config file {path} does not exist.") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"Config file {path} is a folder: pass a YAML file of option: value lines.") from exc
    except PermissionError as exc:
        raise ConfigError(f"Config file {path} cannot be read (permission denied).") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {path} is not text (not UTF-8: {exc.reason} at byte {exc.start}): pass a "
                          "YAML file of option: value lines.") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    except OSError as exc:
        raise ConfigError(f"Config file {path} cannot be read: {exc.strerror or exc}.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(f"Config file {path} must hold a mapping of option: value (names as text); got "
                          f"{type(data).__name__}.")
    return data
