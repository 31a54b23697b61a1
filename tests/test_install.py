"""The install works: torch and torchvision import together (a pin to the local CPU torch breaks torchvision)."""
import torch
import torchvision
from torchvision.utils import make_grid

import distill_apps as da


def test_torchvision_imports_and_runs_with_torch():
    grid = make_grid(torch.zeros(4, 1, 8, 8), nrow=2, padding=0)
    assert grid.shape == (3, 16, 16)
    assert torchvision.__version__


def test_public_api():
    for name in ("distill", "evaluate", "SyntheticSet", "load_dataset", "list_methods", "list_models"):
        assert hasattr(da, name), name
    assert {"random", "herding", "kcenter", "dc", "dsa", "dm"} <= set(da.list_methods())
