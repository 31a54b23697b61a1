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


TU_NAME = "TOYRINGSTAR"


@pytest.fixture(scope="session")
def tu_root(tmp_path_factory) -> Path:
    """A data root holding ``tudataset/TOYRINGSTAR/raw``: TU-format files of a two-class set, rings (class 0) and
    stars (class 1) of 6-12 nodes, 40 graphs per class, no node features (read by the real TU loader)."""
    import numpy as np

    root = tmp_path_factory.mktemp("tu")
    rng = np.random.default_rng(0)
    raw = root / "tudataset" / TU_NAME / "raw"
    raw.mkdir(parents=True)
    edges, indicator, labels, offset = [], [], [], 0
    for gid in range(2 * 40):
        cls, n = gid % 2, int(rng.integers(6, 13))
        pairs = [(i, (i + 1) % n) for i in range(n)] if cls == 0 else [(0, i) for i in range(1, n)]
        for a, b in pairs:  # TU lists both directions, 1-based node ids
            edges += [(a + offset + 1, b + offset + 1), (b + offset + 1, a + offset + 1)]
        indicator += [gid + 1] * n
        labels.append(cls)
        offset += n
    (raw / f"{TU_NAME}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (raw / f"{TU_NAME}_graph_indicator.txt").write_text("".join(f"{i}\n" for i in indicator))
    (raw / f"{TU_NAME}_graph_labels.txt").write_text("".join(f"{c}\n" for c in labels))
    return root
