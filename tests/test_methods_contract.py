"""One contract test over every registered image method: a few steps on digits, shapes, save/load, determinism."""
import pytest
import torch

import distill_apps as da
from distill_apps.engine import METHODS
from distill_apps.summary import SyntheticSet

IMAGE_METHODS = [m for m in da.list_methods() if METHODS.get(m).modality == "image"]


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_contract(method, digits, tmp_path):
    kw = dict(steps=2, seed=3, model="convnet-d2-w16", progress=False)
    s = da.distill(method, digits, 1, **kw)
    assert isinstance(s, SyntheticSet)
    m = s.materialize()
    assert m.x.shape[1:] == digits.image_shape and m.x.shape[0] == len(m.y)
    assert set(m.y.tolist()) == set(range(10)), "every class is represented"
    assert torch.isfinite(m.x).all()
    assert s.meta["method"] == method and s.meta["dataset"] == "digits" and s.meta["ipc"] == 1
    path = s.save(tmp_path / f"{method}.safetensors")
    t = SyntheticSet.load(path)
    assert torch.equal(t.materialize().x, m.x) and torch.equal(t.materialize().y, m.y)
    again = da.distill(method, digits, 1, **kw)
    assert torch.equal(again.materialize().x, m.x), "same seed, same summary, bit for bit"


def test_registry_metadata_complete():
    for name in da.list_methods():
        cls = METHODS.get(name)
        assert cls.family and cls.paper, name
        cfg = cls.Config()
        assert cfg.steps >= 0 and cfg.quick_steps >= 0
