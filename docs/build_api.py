"""Build the API reference (HTML) from the docstrings with pdoc.

Usage (from the repository root, with the ``dev`` extra installed)::

    python docs/build_api.py                 # writes site/api/index.html, site/api/distill_apps/*.html
    python docs/build_api.py -o OUT_FOLDER

It documents ``distill_apps`` and every public submodule (names without a leading underscore, the host adapters
under ``distill_apps.integrations`` and the recipes included; the adapters import their host libraries, so build
in an environment with the ``all`` extra). Any module that fails to import, and any warning pdoc raises while
rendering, is printed and makes the exit code 1, so CI catches a broken reference (``tests/test_docs.py``).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _package_dirs(package: str) -> dict[str, Path]:
    """Folders of ``package`` and of its sub-packages mapped elsewhere (``package-dir`` in pyproject.toml)."""
    import tomllib

    dirs = {package: ROOT / package}
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for name, folder in conf.get("tool", {}).get("setuptools", {}).get("package-dir", {}).items():
        if name.startswith(package + "."):
            dirs[name] = ROOT / folder
    return dirs


def public_modules(package: str = "distill_apps") -> list[str]:
    """``package`` and all its submodules whose dotted names have no part starting with ``_``.

    Found on disk, without importing anything; sub-packages that live elsewhere (``distill_apps.integrations`` in
    ``integrations/``, as pyproject.toml's ``package-dir`` maps them) are read from their own folder."""
    names = set()
    for pkg, base in _package_dirs(package).items():
        for folder, subdirs, files in os.walk(base):
            subdirs[:] = [d for d in subdirs if not (Path(folder) / d).is_symlink()]
            if "__init__.py" not in files:
                subdirs[:] = []
                continue
            for f in files:
                if not f.endswith(".py"):
                    continue
                parts = (Path(folder) / f).relative_to(base).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                if not any(p.startswith("_") for p in parts):
                    names.add(".".join((pkg, *parts)))
    return sorted(names)


def build(output: str | Path, package: str = "distill_apps", *, quick: bool = False) -> tuple[list[str], list[str]]:
    """Render the reference into ``output``; returns ``(modules documented, problems)``.

    ``quick`` leaves out the highlighted source and the search index (what the test uses: same pages, same
    checks, a fraction of the time).

    A problem is a module that does not import or a warning pdoc emitted (unresolved reference, bad docstring
    syntax, a member it could not inspect)."""
    import importlib

    import pdoc

    problems: list[str] = []
    modules = []
    for name in public_modules(package):
        try:
            importlib.import_module(name)
            modules.append(name)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            problems.append(f"import {name}: {type(exc).__name__}: {exc}")
    pdoc.render.configure(docformat="restructuredtext", footer_text="distill-apps API reference",
                          show_source=not quick, search=not quick)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*modules, output_directory=Path(output))
    # pdoc walks the submodules of a package without ``__all__`` itself, so a submodule named here as well is
    # "already added": the same page, not a problem.
    problems += [f"pdoc: {w.message}" for w in caught
                 if "pdoc" in str(w.filename) and "has already been added" not in str(w.message)]
    return modules, problems


def main(argv=None) -> int:
    """Command line: build into ``-o`` (default ``site/api``) and report problems."""
    ap = argparse.ArgumentParser(description="Build the distill-apps API reference with pdoc.")
    ap.add_argument("-o", "--output", default=str(ROOT / "site" / "api"), help="output folder (default: site/api)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    modules, problems = build(args.output)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(modules)} modules documented under {args.output}; {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
