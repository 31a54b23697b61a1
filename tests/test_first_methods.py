"""Defining mechanisms of the first methods: coresets, DC's distance and schedule, DSA's shared draw, DM's loss."""
import torch

import distill_apps as da
from distill_apps.matching import gradient_distance
from distill_apps.methods.gradient import schedule_for

SMALL = dict(model="convnet-d2-w16", progress=False)


def test_gradient_distance_per_output_cosine():
    g = [torch.randn(4, 3, 3, 3), torch.randn(4)]
    assert gradient_distance(g, g).abs() < 1e-5
    scaled = [2 * g[0], g[1]]
    assert gradient_distance(scaled, g).abs() < 1e-5  # cosine: scale-free per output channel
    flipped = [-g[0], g[1]]
    assert torch.isclose(gradient_distance(flipped, g), torch.tensor(8.0), atol=1e-4)  # 4 channels x (1 - (-1))
    assert gradient_distance([g[0], torch.randn(4)], g) < 1e-5  # biases ignored, as in the paper


def test_dc_schedule_by_ipc():
    assert schedule_for(1) == (1, 1) and schedule_for(10) == (10, 50) and schedule_for(50) == (50, 10)
    assert schedule_for(15) == (10, 50)


def test_coresets_select_real_images(digits):
    for m in ("random", "herding", "kcenter"):
        s = da.distill(m, digits, 3, config={"embedding": "pixels"} if m != "random" else None, **SMALL)
        idx = torch.tensor(s.meta["train_index"])
        assert torch.equal(s.x, digits.x_train[idx]) and torch.equal(s.y, digits.y_train[idx])
        assert len(set(idx.tolist())) == 30


def test_herding_mean_closer_than_random(digits):
    h = da.distill("herding", digits, 5, config={"embedding": "pixels"}, **SMALL)
    r = da.distill("random", digits, 5, **SMALL)
    def gap(s):
        return sum(float((s.x[s.y == c].flatten(1).mean(0) - digits.x_train[digits.y_train == c].flatten(1).mean(0)).norm())
                   for c in range(10))
    assert gap(h) < gap(r)


def test_dsa_method_shares_draw_between_real_and_synthetic(digits, monkeypatch):
    from distill_apps.augment import DSA

    seen = []
    orig = DSA.apply

    def spy(self, x, params, groups=None):
        seen.append((id(params), tuple(groups.unique().tolist()) if groups is not None else None))
        return orig(self, x, params, groups)

    monkeypatch.setattr(DSA, "apply", spy)
    da.distill("dsa", digits, 1, steps=1, **SMALL)
    match = seen[:20]  # real then synthetic per class in the first matching round
    for real, syn in zip(match[0::2], match[1::2]):
        assert real == syn


def test_dm_reduces_its_loss_and_moves_images(digits):
    losses = []
    s = da.distill("dm", digits, 2, steps=30, seed=0, callbacks=(lambda t, m, st: losses.append(m["loss"]),), **SMALL)
    start = da.distill("dm", digits, 2, steps=0, seed=0, **SMALL)
    assert not torch.equal(s.x, start.x)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_compiled_real_gradients_match_eager(digits):
    from distill_apps.engine import make_distiller
    from distill_apps.runtime import generator

    d = make_distiller("dc", digits, 1, {"compile": True}, device="cpu", model=SMALL["model"])
    net = d.new_net(generator("net", 0))
    x, y = digits.x_train[:64], digits.y_train[:64]
    compiled = d.real_gradients(net, x, y, "hard")
    d.cfg.compile = False
    for a, b in zip(compiled, d.real_gradients(net, x, y, "hard")):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_compiled_embedding_matches_eager(digits):
    eager = da.distill("dm", digits, 2, steps=2, **SMALL)
    compiled = da.distill("dm", digits, 2, steps=2, config={"compile": True}, **SMALL)
    torch.testing.assert_close(compiled.x, eager.x, atol=1e-5, rtol=1e-5)
