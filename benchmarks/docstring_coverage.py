"""Docstring coverage of the package: an ``ast`` count of functions and methods with and without a docstring.

Counts every ``def``/``async def`` (nested ones included, lambdas excluded) in the Python files under the given
roots, skipping ``tests/``. Prints the share per file and overall; ``--json PATH`` also writes the figures.
Module and class docstrings are reported separately.

Usage::

    python benchmarks/docstring_coverage.py                      # distill_apps, integrations, recipes, benchmarks
    python benchmarks/docstring_coverage.py --public-only        # skip names starting with "_"
    python benchmarks/docstring_coverage.py distill_apps --missing   # list the functions without a docstring
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOTS = ("distill_apps", "integrations", "recipes", "benchmarks")


def _python_files(roots):
    """Yield every ``.py`` file under ``roots`` (no symlinked folders twice, nothing under ``tests``)."""
    seen = set()
    for root in roots:
        base = (ROOT / root) if not Path(root).is_absolute() else Path(root)
        paths = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for path in paths:
            real = path.resolve()
            if real in seen or "tests" in path.relative_to(ROOT).parts:
                continue
            if any((ROOT / parent).is_symlink() for parent in path.relative_to(ROOT).parents):
                continue  # distill_apps/integrations -> ../integrations is counted once, under its real folder
            seen.add(real)
            yield path


def file_coverage(path: Path, public_only: bool = False) -> dict:
    """Count functions, classes and the module docstring of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    funcs, missing, classes, classes_doc = 0, [], 0, 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if public_only and node.name.startswith("_") and not node.name.startswith("__"):
                continue
            funcs += 1
            if ast.get_docstring(node) is None:
                missing.append(f"{node.name}:{node.lineno}")
        elif isinstance(node, ast.ClassDef):
            if public_only and node.name.startswith("_"):
                continue
            classes += 1
            classes_doc += ast.get_docstring(node) is not None
    return {"functions": funcs, "documented": funcs - len(missing), "missing": missing,
            "classes": classes, "classes_documented": classes_doc,
            "module_docstring": ast.get_docstring(tree) is not None}


def coverage(roots=DEFAULT_ROOTS, public_only: bool = False) -> dict:
    """Per-file and total coverage for the files under ``roots``."""
    files = {str(p.relative_to(ROOT)): file_coverage(p, public_only) for p in _python_files(roots)}
    total = sum(f["functions"] for f in files.values())
    doc = sum(f["documented"] for f in files.values())
    cls = sum(f["classes"] for f in files.values())
    cls_doc = sum(f["classes_documented"] for f in files.values())
    return {"files": files, "functions": total, "documented": doc, "share": doc / total if total else 1.0,
            "classes": cls, "classes_documented": cls_doc,
            "modules": len(files), "modules_documented": sum(f["module_docstring"] for f in files.values())}


def main(argv=None) -> int:
    """Print the coverage table (worst files first) and the totals."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="*", default=list(DEFAULT_ROOTS), help="folders or files, relative to the repo")
    ap.add_argument("--public-only", action="store_true", help="skip private names (leading underscore)")
    ap.add_argument("--missing", action="store_true", help="list undocumented functions per file")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    res = coverage(args.roots, args.public_only)
    rows = sorted(res["files"].items(), key=lambda kv: (kv[1]["documented"] / kv[1]["functions"]
                                                        if kv[1]["functions"] else 1.0, kv[0]))
    print(f"{'file':58s} {'funcs':>5s} {'doc':>5s} {'share':>6s}  module")
    for name, f in rows:
        share = f["documented"] / f["functions"] if f["functions"] else 1.0
        print(f"{name:58s} {f['functions']:5d} {f['documented']:5d} {share:6.0%}  {'yes' if f['module_docstring'] else 'NO'}")
        if args.missing and f["missing"]:
            print("    missing: " + ", ".join(f["missing"]))
    print(f"\nfunctions: {res['documented']}/{res['functions']} documented ({res['share']:.1%}); "
          f"classes: {res['classes_documented']}/{res['classes']}; "
          f"modules: {res['modules_documented']}/{res['modules']}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in res.items()}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
