"""The documentation: the pdoc API reference builds without problems, the docs carry no absolute path of one
machine, and every relative link in README.md and docs/**/*.md points at a file that exists."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
#: absolute paths that only exist on one machine (a user's home, scratch and temp folders, a checkout)
MACHINE_PATH = re.compile(r"(?<![\w.~$<{])(/(?:work|tmp|root|home|Users|mnt|scratch|data)/[\w.\-]+"
                          r"|[A-Za-z]:\\(?:Users|work)\\)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_api", REPO / "docs" / "build_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_api_reference_builds_without_problems(tmp_path):
    pytest.importorskip("pdoc")
    builder = _load_builder()
    modules, problems = builder.build(tmp_path / "api", quick=True)
    assert problems == [], "\n".join(problems)
    for page in ("index.html", "distill_apps.html", "distill_apps/engine.html", "distill_apps/data.html",
                 "distill_apps/summary.html", "distill_apps/methods/distribution.html",
                 "distill_apps/integrations/avalanche.html", "distill_apps/integrations/flower.html",
                 "distill_apps/integrations/nni.html", "distill_apps/integrations/opacus.html",
                 "distill_apps/recipes/continual_replay.html"):
        assert (tmp_path / "api" / page).is_file(), page
    top = (tmp_path / "api" / "distill_apps.html").read_text(encoding="utf-8")
    assert "def</span> <span class=\"name\">distill</span>" in top or 'id="distill"' in top
    assert "distill_apps.integrations.avalanche" in modules and "distill_apps.methods.trajectory" in modules


def test_public_module_list_skips_private_names():
    pytest.importorskip("pdoc")
    names = _load_builder().public_modules()
    assert "distill_apps.engine" in names and "distill_apps.integrations.flower.client" in names
    assert not [n for n in names if any(p.startswith("_") for p in n.split("."))]


def test_docs_hold_no_absolute_machine_paths():
    found = [f"{f.relative_to(REPO)}:{i}: {m.group(0)}" for f in DOCS
             for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
             for m in MACHINE_PATH.finditer(line)]
    assert found == [], "use a placeholder such as <datasets folder>:\n" + "\n".join(found)


def test_machine_path_pattern_catches_what_it_should():
    assert MACHINE_PATH.search("DISTILL_APPS_DATA=/work/shared/datasets python x.py")
    assert MACHINE_PATH.search("--out /tmp/h9_med")
    assert not MACHINE_PATH.search("DISTILL_APPS_DATA=<datasets folder> and ~/.cache/distill_apps/data")
    assert not MACHINE_PATH.search("see docs/results/fidelity.md and benchmarks/results/x.json")


def _relative_links(path: Path):
    in_code = False
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        for target in LINK.findall(line):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
                continue  # http(s):, mailto:, in-page anchors
            yield i, target


def test_relative_links_point_at_existing_files():
    broken = [f"{f.relative_to(REPO)}:{i}: {t}" for f in DOCS for i, t in _relative_links(f)
              if not (f.parent / t.split("#", 1)[0]).exists()]
    assert broken == [], "\n".join(broken)
    assert sum(1 for f in DOCS for _ in _relative_links(f)) > 20  # the check did find links to check


def test_guide_code_blocks_parse():
    import ast
    import tomllib

    blocks = [(f, lang, code) for f in sorted((REPO / "docs" / "guide").glob("*.md"))
              for lang, code in re.findall(r"```(\w*)\n(.*?)```", f.read_text(encoding="utf-8"), re.S)]
    parsed = 0
    for f, lang, code in blocks:
        if lang == "python":
            ast.parse(code, filename=str(f))
            parsed += 1
        elif lang == "toml":
            tomllib.loads(code)
            parsed += 1
    assert parsed >= 8  # the guide's Python and TOML examples were all found and are valid
