"""Adapters (``distill_apps.integrations.*``, ``distill_apps.recipes.*``) use only the public API of distill_apps:
what ``distill_apps.__all__`` exports and the names ``distill_apps.PUBLIC_SUBMODULES`` lists. Each adapter's
imports (and its ``da.<name>`` attribute uses) are read with ``ast``, without importing its host library."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import distill_apps as da

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = {
    "avalanche": ["integrations/avalanche.py"],
    "flower": sorted(str(p.relative_to(REPO)) for p in (REPO / "integrations" / "flower").glob("*.py")),
    "nni": sorted(str(p.relative_to(REPO)) for p in (REPO / "integrations" / "nni").glob("*.py")),
    "medical": ["integrations/medical.py"],
    "opacus": ["integrations/opacus.py"],
    **{f"recipe:{p.stem}": [str(p.relative_to(REPO))] for p in sorted((REPO / "recipes").glob("*.py"))
       if p.stem != "__init__"},
}


def _module_of(path: str) -> tuple[str, bool]:
    """``integrations/flower/client.py`` -> (``distill_apps.integrations.flower.client``, is a package)."""
    parts = list(Path(path).with_suffix("").parts)
    package = parts[-1] == "__init__"
    return ".".join(["distill_apps", *(parts[:-1] if package else parts)]), package


def _own_scope(module: str, package: bool) -> str:
    """What an adapter may import freely: its sub-package (flower, nni), else only itself."""
    parts = module.split(".")
    if parts[:2] == ["distill_apps", "integrations"] and len(parts) >= 3 and (package or len(parts) > 3):
        return ".".join(parts[:3])
    return module


def _adapter_all(module: str) -> set[str]:
    """``__all__`` of an adapter module, read from its source (the host library is not imported)."""
    rel = Path(*module.split(".")[1:])
    path = next((p for p in (REPO / rel.with_suffix(".py"), REPO / rel / "__init__.py") if p.exists()), None)
    if path is None:
        return set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {e.value for e in node.value.elts}
    return set()


def _public_names(module: str) -> set[str] | None:
    """Names a public submodule offers (None: not a public module of distill_apps)."""
    sub = module.removeprefix("distill_apps.")
    if sub in da.PUBLIC_SUBMODULES:
        listed = da.PUBLIC_SUBMODULES[sub]
        return set(listed) if listed is not None else set(importlib.import_module(module).__all__)
    return None


def _allowed(module: str, names: list[str], own_package: str) -> list[str]:
    """Problems with ``from <module> import <names>`` in an adapter whose own package is ``own_package``."""
    if module == own_package or module.startswith(own_package + "."):
        return []  # the adapter's own modules
    if not module.startswith("distill_apps"):
        return []  # the host library, torch, numpy, ...
    if module == "distill_apps":
        return [f"distill_apps.{n} is not in distill_apps.__all__" for n in names if n not in da.__all__]
    if module == "distill_apps.integrations":
        return []  # importing a host adapter module by name (recipes do)
    if module.startswith("distill_apps.integrations."):  # another adapter: its __all__
        exported = _adapter_all(module)
        return [f"{module}.{n} is not in its __all__" for n in names if n not in exported]
    public = _public_names(module)
    if public is None:
        return [f"{module} is not a public module of distill_apps (see distill_apps.PUBLIC_SUBMODULES)"]
    return [f"{module}.{n} is not public (distill_apps.PUBLIC_SUBMODULES[{module[13:]!r}])" for n in names
            if n not in public]


def violations(source: str, module: str, package: bool = False) -> list[str]:
    """Every use of a non-public distill_apps name in ``source``, the code of adapter module ``module``."""
    tree = ast.parse(source)
    own = _own_scope(module, package)
    problems, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parts = module.split(".")
                anchor = parts[:len(parts) - node.level + (1 if package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            problems += [f"line {node.lineno}: {p}" for p in _allowed(base, [a.name for a in node.names], own)]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "distill_apps":
                    aliases.add(a.asname or a.name)
                elif a.name.startswith("distill_apps.") and not a.name.startswith(own):
                    if _public_names(a.name) is None and not a.name.startswith("distill_apps.integrations."):
                        problems.append(f"line {node.lineno}: import {a.name} (not a public module)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr not in da.__all__ and node.attr not in ("__file__", "__version__"):
                problems.append(f"line {node.lineno}: {node.value.id}.{node.attr} is not in distill_apps.__all__")
    return problems


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_adapter_uses_only_the_public_api(adapter):
    files = ADAPTERS[adapter]
    assert files, f"no source files found for {adapter}"
    problems = []
    for path in files:
        problems += [f"{path} {p}" for p in violations((REPO / path).read_text(), *_module_of(path))]
    assert not problems, "\n".join(problems)


def test_the_check_catches_private_imports():
    """The checker is not vacuous: internals, private names and relative reach-outs are reported."""
    mod = "distill_apps.integrations.flower.client"
    assert violations("from distill_apps.engine import make_distiller\n", mod)
    assert violations("from distill_apps.train import _private\n", mod)
    assert violations("from ...config import make_config\n", mod)  # distill_apps.config via a relative import
    assert violations("import distill_apps as da\nda.engine.run(None, 1)\n", mod)
    assert violations("from distill_apps.integrations.nni import _free_port\n", mod)
    assert not violations("from .wire import summary_to_records\nfrom distill_apps import distill\n", mod)
    assert not violations("from distill_apps.train import fit\nfrom distill_apps.errors import ConfigError\n", mod)


def test_public_submodules_exist_and_list_real_names():
    """Every name PUBLIC_SUBMODULES promises is there (the documented surface is real)."""
    for sub in da.PUBLIC_SUBMODULES:
        module = importlib.import_module(f"distill_apps.{sub}")
        for name in _public_names(f"distill_apps.{sub}"):
            assert hasattr(module, name), f"distill_apps.{sub}.{name}"
    for name in da.__all__:
        assert hasattr(da, name), name
