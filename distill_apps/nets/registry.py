"""Model registry: ``@register_model`` and ``build_model(name, in_channels, num_classes, image_size, **kw)``."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..registry import Registry
from ..runtime import seeded_global_rng

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the glob ``pattern``."""
    return MODELS.names(pattern)


def build_model(name: str, in_channels: int, num_classes: int, image_size: tuple[int, int] | int,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu", **kw) -> nn.Module:
    """Build a registered model; with ``generator`` the initial weights come from it (global RNG untouched).

    ``name`` is a registered name (``list_models()``, e.g. ``vgg11-bn``) or one followed by options in the timm
    style, e.g. ``convnet-d4-w64-bn`` (depth, width, norm) or ``resnet18-bn-w32``; an option the model does not
    take is refused with the ones it does.
    """
    base, opts = _parse(name)
    factory = MODELS.get(base)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    _check_options(name, factory, opts)
    kw = {**opts, **kw}
    if generator is None:
        model = factory(in_channels=in_channels, num_classes=num_classes, image_size=size, **kw)
    else:
        with seeded_global_rng(generator):
            model = factory(in_channels=in_channels, num_classes=num_classes, image_size=size, **kw)
    return model.to(device)


def check_model_name(name: str) -> str:
    """Validate a model name with its options (``vgg11-bn-w32``) without building it; returns the name."""
    base, opts = _parse(name)
    _check_options(name, MODELS.get(base), opts)
    return name


_NORM_ALIASES = {"in": "instance", "bn": "batch", "gn": "group", "ln": "layer", "nn": "none"}


def _check_options(name: str, factory: Callable[..., nn.Module], opts: dict) -> None:
    """Refuse name options (``-d4``, ``-bn``, ...) that the model's constructor does not take."""
    import inspect

    from ..errors import ConfigError

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover  (builtins without a signature)
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # a factory taking **kw decides itself
    taken = set(params)
    bad = [k for k in opts if k not in taken]
    if bad:
        ok = sorted(k for k in ("depth", "width", "norm", "act", "pool") if k in taken)
        raise ConfigError(f"Model {name!r} does not take option(s) {', '.join(bad)}; it takes "
                          f"{', '.join(ok) or 'no options'}.")


def _parse(name: str) -> tuple[str, dict]:
    """``convnet-d4-w64-bn-relu-maxpool`` -> ("convnet", {depth: 4, width: 64, norm: batch, ...}).

    A registered name that itself holds a dash (``vgg11-bn``) is taken whole, then its further options parsed.
    """
    key = name.lower()
    parts = key.split("-")
    for cut in range(len(parts), 0, -1):  # longest registered prefix: "vgg11-bn-w32" -> "vgg11-bn" + w32
        if "-".join(parts[:cut]) in MODELS:
            parts = ["-".join(parts[:cut])] + parts[cut:]
            break
    opts: dict = {}
    for p in parts[1:]:
        if p[:1] == "d" and p[1:].isdigit():
            opts["depth"] = int(p[1:])
        elif p[:1] == "w" and p[1:].isdigit():
            opts["width"] = int(p[1:])
        elif p in _NORM_ALIASES or p in _NORM_ALIASES.values():
            opts["norm"] = _NORM_ALIASES.get(p, p)
        elif p in ("relu", "leakyrelu", "sigmoid", "gelu"):
            opts["act"] = p
        elif p in ("avgpool", "maxpool", "nopool"):
            opts["pool"] = p[:-4] if p != "nopool" else "none"
        else:
            from ..errors import ConfigError

            raise ConfigError(f"Cannot read model option {p!r} in {name!r}: use d<depth>, w<width>, "
                              "in/bn/gn/ln/nn, relu/leakyrelu/sigmoid/gelu, avgpool/maxpool/nopool.")
    return parts[0], opts
