"""The README's examples run as written: every ```python block, and every ```bash block whose lines are all
``distill-apps`` commands (install and test blocks are not examples). Each runs in a fresh folder, in order (the
shell blocks share one folder, so ``info`` and ``export`` find the summary the default run wrote); the only
change is the data root, ``$DISTILL_APPS_DATA`` (set by ``conftest.py``), which the examples read through their
defaults. The times the README states next to each example are measured by hand (see the README), not asserted.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def examples() -> list[tuple[str, str]]:
    """(language, code) of every runnable README example, in order."""
    out = []
    for lang, code in BLOCK.findall((REPO / "README.md").read_text()):
        lines = [ln for ln in code.splitlines() if ln.strip()]
        if lang == "python" or (lang == "bash" and lines and all(ln.startswith("distill-apps ") for ln in lines)):
            out.append((lang, code))
    return out


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "FLWR_TELEMETRY_ENABLED": "0"}


def test_readme_has_examples_of_both_kinds():
    kinds = [lang for lang, _ in examples()]
    assert "python" in kinds and "bash" in kinds
    assert any("distill-apps distill" == code.strip() for _, code in examples())  # the default run, bare


@pytest.mark.slow
def test_readme_examples_run(tmp_path, data_root):
    shell = tmp_path / "shell"
    shell.mkdir()
    for n, (lang, code) in enumerate(examples()):
        if lang == "python":
            cwd = tmp_path / f"python{n}"
            cwd.mkdir()
            cmds = [[sys.executable, "-c", code]]
        else:
            cwd = shell
            cmds = [[sys.executable, "-m", "distill_apps.cli", *shlex.split(ln)[1:]] for ln in code.splitlines()
                    if ln.strip()]
        for cmd in cmds:
            r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f"README example failed: {' '.join(cmd[2:])[:200]}\n{r.stderr[-3000:]}"
            assert "Traceback" not in r.stderr
    assert (shell / "out" / "dm_digits_ipc1.safetensors").is_file()
    assert len(list((shell / "out" / "dm_digits_pngs").rglob("*.png"))) == 10
    assert (shell / "out" / "compare_digits" / "accuracy_vs_ipc.png").is_file()
