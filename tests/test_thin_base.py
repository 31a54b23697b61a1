"""The thin base (issue 19, item 4): methods write only ``init``/``step``/``export`` and compose their
parameterisation (image tensors, factorised bases, generator latents); HaBa exports its bases without a mixin; a
dp-* run keeps all its run state in the checkpointed state, so a resumed run equals the uninterrupted one."""
from __future__ import annotations

import inspect

import pytest
import torch

import distill_apps as da
from distill_apps.engine import METHODS, Distiller, make_distiller
from distill_apps.errors import ConfigError
from distill_apps.methods.factorized import HaBa, Hallucinated
from distill_apps.methods.trajectory import MTT
from distill_apps.runtime import generator

CONTRACT = {"init", "step", "export"}
SERVICES = sorted(n for n, v in vars(Distiller).items()
                  if inspect.isfunction(v) and not n.startswith("__") and n not in CONTRACT)


def test_no_method_overrides_a_service_of_the_base():
    assert {"update", "synthetic", "real_batch"} <= set(SERVICES)
    for name in da.list_methods():
        cls = METHODS.get(name)
        changed = [s for s in SERVICES if inspect.getattr_static(cls, s) is not vars(Distiller)[s]]
        assert not changed, f"{name} overrides {changed}: compose a function or parameterisation instead"


def test_haba_exports_its_bases_without_the_mixin_override(digits, tmp_path):
    assert Hallucinated not in HaBa.__mro__  # composed, not inherited
    assert "export" in vars(HaBa)  # its own export, not MTT's plain-image one
    cfg = {"num_experts": 2, "expert_train_epochs": 2, "expert_epochs": 1, "max_start_epoch": 1, "syn_steps": 2}
    d = make_distiller("haba", digits, 1, cfg, device="cpu", model="convnet-d2-w16", seed=1)
    state = d.init(generator("init", 1))
    s = d.export(state)
    plan = d.factors.plan
    assert s.x is None and s.decoder == "hallucinator" and set(s.params) == set(plan.shapes)  # no "lr" stored
    assert s.storage_floats() == plan.total <= plan.budget and s.lr == pytest.approx(0.01)  # the learned step size, at its start
    x, y = d.factors.images(state.params)
    m = s.materialize()
    assert torch.equal(m.y, y) and torch.allclose(m.x, x.detach(), atol=1e-6)  # the file decodes what was trained
    s.save(tmp_path / "haba.safetensors")
    assert torch.equal(da.SyntheticSet.load(tmp_path / "haba.safetensors").materialize().x, m.x)
    # MTT's own export still writes plain images
    assert MTT.export is not HaBa.export


def _small(digits):
    g = torch.Generator().manual_seed(0)
    return digits.subset(torch.randperm(len(digits.x_train), generator=g)[:400], name="digits")


@pytest.mark.parametrize("method,config,steps,stop", [
    # dp-dm: 3 releases, then post-processing steps that reuse a released target; resumed mid-release and after
    ("dp-dm", {"epsilon": 5.0, "releases": 3}, 5, 2),
    ("dp-dm", {"epsilon": 5.0, "releases": 3}, 5, 4),
    # dp-dc: 2 releases per step, the budget runs out during step 3 (of 4)
    ("dp-dc", {"epsilon": 3.0, "noise_multiplier": 2.0, "releases": 5, "outer_loop": 2, "inner_loop": 1,
               "batch_real": 8}, 4, 2),
])
def test_dp_run_resumed_from_a_checkpoint_equals_the_uninterrupted_run(method, config, steps, stop, digits,
                                                                       tmp_path):
    small = _small(digits)
    kw = dict(model="convnet-d1-w8", seed=4, config=config, progress=False)
    straight = da.distill(method, small, 1, steps=steps, **kw)
    ckpt = tmp_path / "run.ckpt"
    da.distill(method, small, 1, steps=stop, checkpoint=ckpt, checkpoint_every=1, **kw)
    resumed = da.distill(method, small, 1, steps=steps, checkpoint=ckpt, checkpoint_every=1, resume="require", **kw)
    assert torch.equal(resumed.x, straight.x) and torch.equal(resumed.y, straight.y)
    p, q = resumed.meta["privacy"], straight.meta["privacy"]
    assert p == q, "releases, noise, sample rate, accountant history and epsilon all resume exactly"
    assert p["releases"] >= 1 and p["epsilon"] <= config["epsilon"]


@pytest.mark.parametrize("method", ["dm", "dd", "kip", "idc", "mtt"])
def test_every_pixel_method_refuses_an_unknown_init(method, digits):
    """One image-tensor start for all (parameterisation.init_pixels): dd, kip and idc used to take any other
    ``init`` silently as ``real``."""
    d = make_distiller(method, digits, 1, {"init": "zeros"}, device="cpu", model="convnet-d2-w16")
    with pytest.raises(ConfigError, match=f"{method}: init must be 'real' or 'noise'; got 'zeros'"):
        d.init(generator("init", 0)) if method != "mtt" else d.initial_images(generator("init", 0))
