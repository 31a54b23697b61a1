"""One contract test over every registered image method: a few steps on digits, shapes, save/load, determinism."""
import pytest
import torch

import distill_apps as da
from distill_apps.engine import METHODS
from distill_apps.summary import SyntheticSet

IMAGE_METHODS = [m for m in da.list_methods() if METHODS.get(m).modality == "image"]
_TRAJ = {"num_experts": 2, "expert_train_epochs": 2, "expert_epochs": 1, "max_start_epoch": 1, "syn_steps": 4}
# Smaller inner budgets so one contract run stays in seconds; the defining mechanisms are tested per family.
SMOKE = {"itgan": {"gan_steps": 20, "invert_steps": 10}, "mtt": _TRAJ, "tesla": _TRAJ, "haba": _TRAJ,
         "linba": {"unroll_steps": 5}, "idc": {"outer_loop": 2}, "idc-i": {"outer_loop": 2},
         "dp-dm": {"releases": 4}, "dp-dc": {"releases": 4}, "dd": {"inner_steps": 3, "inner_epochs": 1},
         "frepo": {"pool_size": 2}, "rfad": {"n_models": 2},
         "sre2l": {"teacher_model": "convnet-d2-w16-bn", "teacher_epochs": 1},
         "rded": {"teacher_model": "convnet-d2-w16-bn", "teacher_epochs": 1, "mipc": 20}}


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_contract(method, digits, tmp_path):
    kw = dict(steps=2, seed=3, model="convnet-d2-w16", progress=False, config=SMOKE.get(method))
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
