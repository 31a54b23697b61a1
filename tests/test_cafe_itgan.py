"""CAFE's per-block alignment and discrimination term; IT-GAN's generator, inversion, latents and generator checks."""
import pytest
import torch

import distill_apps as da
from distill_apps.engine import make_distiller
from distill_apps.errors import SummaryFormatError
from distill_apps.methods.feature_alignment import block_features, discrimination_loss
from distill_apps.methods.generative import invert, load_generator, save_generator
from distill_apps.runtime import generator
from distill_apps.summary import SyntheticSet

MODEL = "convnet-d2-w16"
GAN = {"gan_steps": 30, "invert_steps": 40, "ngf": 8, "nz": 16, "batch_real": 32}


def test_block_features_one_per_block(digits):
    d = make_distiller("cafe", digits, 1, device="cpu", model=MODEL)
    net = d.new_net(generator("n", 0))
    fs = block_features(net, digits.x_train[:4])
    assert [tuple(f.shape) for f in fs] == [(4, 16, 4, 4), (4, 16, 2, 2)]
    assert torch.allclose(fs[-1].flatten(1), net.embed(digits.x_train[:4]))


def test_discrimination_loss_rewards_separated_centres():
    er = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    good = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    swapped = good.flip(0)
    assert discrimination_loss(er * 5, good * 5, 2) < discrimination_loss(er * 5, swapped * 5, 2)


def test_cafe_discrimination_term_changes_the_gradient(digits):
    d = make_distiller("cafe", digits, 2, {"batch_real": 16}, device="cpu", model=MODEL)
    state = d.init(generator("init", 0))
    x = state.params["x"]
    net = d.new_net(generator("net", 0))
    grads = {}
    for beta in (0.0, 1.0):
        loss, lf, ld = d.loss(net, x, generator("step", 0), beta=beta)
        grads[beta] = torch.autograd.grad(loss, x)[0]
        assert ld > 0
    diff = (grads[1.0] - grads[0.0]).norm()
    assert diff > 1e-3 * grads[0.0].norm()


def test_cafe_dynamic_early_stop_ends_the_updates_on_a_network(digits):
    base = {"batch_real": 16, "outer_loop": 6, "inner_loop": 1}
    full = make_distiller("cafe", digits, 2, {**base, "early_stop_patience": 0}, device="cpu", model=MODEL)
    st = full.init(generator("init", 0))
    assert full.step(st, generator("step", 0, 0))["updates"] == 6  # off: the fixed schedule
    # a tolerance no update can meet: every update is "stale", so the step ends after `patience` of them
    early = make_distiller("cafe", digits, 2, {**base, "early_stop_patience": 2, "early_stop_tol": 0.999},
                           device="cpu", model=MODEL)
    st = early.init(generator("init", 0))
    assert early.step(st, generator("step", 0, 0))["updates"] == 3  # the first sets the best, 2 stale ones


def test_cafe_runs_and_roundtrips(digits, tmp_path):
    s = da.distill("cafe", digits, 2, steps=2, model=MODEL, progress=False, config={"batch_real": 16})
    assert s.x.shape == (20, 1, 8, 8) and torch.bincount(s.y).tolist() == [2] * 10
    t = SyntheticSet.load(s.save(tmp_path / "cafe.safetensors"))
    assert torch.equal(t.materialize().x, s.materialize().x)


@pytest.fixture
def itgan_run(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_APPS_CACHE", str(tmp_path / "cache"))
    s = da.distill("itgan", digits, 2, steps=2, model=MODEL, progress=False, config=GAN)
    return s


def test_itgan_trains_and_caches_a_generator_and_roundtrips(itgan_run, digits, tmp_path):
    s = itgan_run
    path = s.decoder_spec["path"]
    assert str(tmp_path / "cache") in path and s.decoder_spec["sha256"]
    assert set(s.params) == {"z"} and s.params["z"].shape == (20, 16) and s.x is None
    assert s.storage_floats() == 20 * 16  # latents only; the generator is shared by reference
    m = s.materialize()
    assert m.x.shape == (20, 1, 8, 8) and torch.bincount(m.y).tolist() == [2] * 10
    t = SyntheticSet.load(s.save(tmp_path / "itgan.safetensors"))
    assert torch.equal(t.materialize().x, m.x)
    # a second run reuses the cached generator (same file, same hash)
    again = da.distill("itgan", digits, 2, steps=2, model=MODEL, progress=False, config=GAN)
    assert again.decoder_spec["sha256"] == s.decoder_spec["sha256"]
    assert torch.equal(again.params["z"], s.params["z"])


def test_itgan_refuses_a_changed_or_missing_generator(itgan_run, tmp_path):
    s = itgan_run
    path = s.decoder_spec["path"]
    gen, header = load_generator(path)
    sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in gen.state_dict().items()}
    gen.load_state_dict(sd)
    save_generator(path, gen, header["arch"], header["info"])
    with pytest.raises(SummaryFormatError, match="changed"):
        s.materialize()
    import os

    os.remove(path)
    with pytest.raises(SummaryFormatError, match="missing"):
        s.materialize()


def test_itgan_inversion_beats_a_random_latent_and_latents_get_gradients(itgan_run, digits):
    gen, _ = load_generator(itgan_run.decoder_spec["path"])
    x = digits.x_train[:8]
    z = invert(gen, x, 60, 0.05, torch.Generator().manual_seed(0))
    with torch.no_grad():
        inv = ((gen(z) - x) ** 2).mean()
        rand = ((gen(torch.randn(8, gen.nz, generator=torch.Generator().manual_seed(1))) - x) ** 2).mean()
    assert inv < 0.8 * rand
    d = make_distiller("itgan", digits, 2, GAN, device="cpu", model=MODEL)  # reuses the fixture's cached generator
    state = d.init(generator("init", 0))
    net = d.new_net(generator("net", 0))
    loss, match, reg = d.loss(state, net, generator("s", 0))
    gz = torch.autograd.grad(loss, state.params["z"])[0]
    assert gz.abs().sum() > 0 and match > 0
