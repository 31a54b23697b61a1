"""Shared test fixtures: the data root (``$DISTILL_APPS_DATA`` or ``../shared/datasets``), digits, temp homes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_DEFAULT_ROOT = REPO.parent / "shared" / "datasets"
if not os.environ.get("DISTILL_APPS_DATA") and _DEFAULT_ROOT.is_dir():
    os.environ["DISTILL_APPS_DATA"] = str(_DEFAULT_ROOT)
# Pin the numerics: bf16 autocast switches on by itself on CPUs with AVX-512-BF16/AMX (runtime.bf16_fast) and off
# on AVX2-only ones, so exactness tests would pass on one CI machine and fail on the other. Tests run in fp32
# unless a test asks for autocast itself (DISTILL_APPS_FP32 is read at call time).
os.environ.setdefault("DISTILL_APPS_FP32", "1")
if not os.environ.get("DISTILL_APPS_CACHE"):  # expert trajectories, generators, Planetoid copies: never in ~
    import tempfile

    os.environ["DISTILL_APPS_CACHE"] = tempfile.mkdtemp(prefix="distill_apps_test_cache_")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared datasets folder; tests that need real files skip with a reason when it is absent."""
    root = Path(os.environ.get("DISTILL_APPS_DATA", _DEFAULT_ROOT))
    if not root.is_dir():
        pytest.skip(f"no data root at {root}: set DISTILL_APPS_DATA")
    return root


@pytest.fixture(scope="session")
def digits():
    import distill_apps as da

    return da.load_dataset("digits")


@pytest.fixture
def tmp_home(tmp_path, monkeypatch) -> Path:
    """A temporary HOME so libraries that write under ~ (NNI, Flower) never touch the real one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home
