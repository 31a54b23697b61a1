"""LinBa, HaBa, KFS: storage fits the "IPC k" budget, gradients reach every factor, decoded shapes and labels,
and the factorised summary survives save/load."""
import math

import pytest
import torch

import distill_apps as da
from distill_apps.engine import make_distiller
from distill_apps.errors import ConfigError
from distill_apps.methods.factorized import (StoragePlan, check_storage, hallucinate, image_budget, plan_hallucinated,
                                             plan_linba)
from distill_apps.runtime import generator
from distill_apps.summary import SyntheticSet

MODEL = "convnet-d1-w16"
CONFIGS = {
    "linba": {"unroll_steps": 5},
    "kfs": {"batch_real": 32},
    "haba": {"num_experts": 1, "expert_train_epochs": 2, "max_start_epoch": 1, "syn_steps": 3,
             "batch_real_feat": 40},
}


@pytest.fixture
def cfg(tmp_path):
    def make(method):
        c = dict(CONFIGS[method])
        if method == "haba":
            c["expert_dir"] = str(tmp_path / "experts")
        return c
    return make


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("ipc", [1, 10])
def test_plans_fill_the_image_budget(shape, ipc):
    budget = ipc * 10 * math.prod(shape)
    assert image_budget(10, shape, ipc) == budget
    lin = plan_linba(10, shape, ipc, recalls=2 * ipc)
    assert lin.total <= budget < lin.total + lin.unit  # one more basis would not fit
    for n, hidden, affine in ((5, 3, True), (4, 16, False)):
        p = plan_hallucinated("x", 10, shape, ipc, n, hidden, shape[0], (1, 2, 4), affine, "codes")
        assert p.total <= budget < p.total + p.unit  # one more code per class would not fit
        assert p.shapes["codes"][0] == 10 * p.settings["per_class"]
        # the shared networks are counted: their floats are part of the total
        nets = sum(math.prod(s) for k, s in p.shapes.items() if k != "codes")
        assert nets > 0 and p.total == nets + math.prod(p.shapes["codes"])


def test_plans_refuse_what_does_not_fit():
    with pytest.raises(ConfigError, match="budget"):
        check_storage(StoragePlan("m", 10, {"a": (11,)}, unit=1))
    with pytest.raises(ConfigError, match="raise the IPC"):
        plan_linba(10, (1, 8, 8), 1, recalls=100)
    with pytest.raises(ConfigError, match="fewer networks"):
        plan_hallucinated("kfs", 10, (1, 8, 8), 1, 200, 4, 1, (1, 2), False, "codes")


def test_hallucinators_give_distinct_images_from_one_basis():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(3, 1, 4, 4, generator=g)
    p = {"enc_w": torch.randn(2, 3, 1, 3, 3, generator=g), "enc_b": torch.zeros(2, 3),
         "dec_w": torch.randn(2, 1, 3, 3, 3, generator=g), "dec_b": torch.zeros(2, 1)}
    x = hallucinate(codes, p, (8, 8))
    assert x.shape == (6, 1, 8, 8)
    assert not torch.allclose(x[0], x[3])  # basis 0 through network 0 vs network 1
    # network 1 on basis 2 equals a single-network run of network 1 on basis 2
    one = hallucinate(codes[2:3], {k: v[1:2] for k, v in p.items()}, (8, 8))
    assert torch.allclose(x[5], one[0], atol=1e-5)


def _grads(loss, tensors):
    gs = torch.autograd.grad(loss, list(tensors.values()), allow_unused=True)
    return {k: (0.0 if gr is None else float(gr.abs().sum())) for k, gr in zip(tensors, gs)}


@pytest.mark.parametrize("method", ["linba", "kfs", "haba"])
def test_gradients_reach_every_factor(method, digits, cfg):
    d = make_distiller(method, digits, 1, cfg(method), device="cpu", model=MODEL)
    state = d.init(generator("init", 0))
    out = d.loss(state, generator("step", 0, 0))
    loss = out[0] if isinstance(out, tuple) else out
    stored = d.factors.stored(state.params)
    if method == "linba":
        stored["log_lr"] = state.params["log_lr"]
    if method == "haba":
        stored["lr"] = state.params["lr"]
    g = _grads(loss, stored)
    assert all(v > 0 for v in g.values()), g
    expected = {"linba": {"bases", "addressing"}, "kfs": {"latents", "enc_w", "dec_w"},
                "haba": {"bases", "enc_w", "dec_w", "mod_scale", "mod_shift"}}[method]
    assert expected <= set(g)


@pytest.mark.parametrize("batch_syn, expected", [(0, 1 * 10), (7, 7)])
def test_haba_student_batch_defaults_to_the_raw_set_size(batch_syn, expected, digits, cfg, monkeypatch):
    """HaBa decodes many more images than IPC x classes; by default each student step sees that many (MTT's cost)."""
    from distill_apps.methods import factorized

    seen = []
    real_draw = factorized.UnrollPlan.draw.__func__

    def spy(cls, n, steps, batch, *rest):
        plan = real_draw(cls, n, steps, batch, *rest)
        seen.append((n, [len(i) for i in plan.indices]))
        return plan

    monkeypatch.setattr(factorized.UnrollPlan, "draw", classmethod(spy))
    d = make_distiller("haba", digits, 1, {**cfg("haba"), "batch_syn": batch_syn}, device="cpu", model=MODEL)
    state = d.init(generator("init", 0))
    d.loss(state, generator("step", 0, 0))
    (n, sizes), = seen
    assert n > expected  # the decoded set is larger than the batch
    assert sizes == [expected] * 3  # syn_steps=3 student steps


def test_haba_contrastive_constraint_pushes_hallucinations_apart(digits, cfg):
    d = make_distiller("haba", digits, 1, cfg("haba"), device="cpu", model=MODEL)
    state = d.init(generator("init", 0))
    x, _ = d.factors.images(state.params)
    sim = d.hallucinator_similarity(state.modules["feat"], x)
    g = _grads(sim, {k: state.params[k] for k in ("enc_w", "dec_w", "mod_scale")})
    assert all(v > 0 for v in g.values()), g
    # one step of the hallucinators on the similarity alone lowers it (the side they play)
    hal = [state.params[k] for k in ("enc_w", "enc_b", "dec_w", "dec_b", "mod_scale", "mod_shift", "bases")]
    gs = torch.autograd.grad(d.hallucinator_similarity(state.modules["feat"], d.factors.images(state.params)[0]), hal)
    with torch.no_grad():
        for p, gr in zip(hal, gs):
            p -= 0.05 * gr
    after = d.hallucinator_similarity(state.modules["feat"], d.factors.images(state.params)[0])
    assert after < sim


@pytest.mark.parametrize("method", ["linba", "kfs", "haba"])
def test_runs_and_roundtrips(method, digits, cfg, tmp_path):
    s = da.distill(method, digits, 1, steps=2, model=MODEL, progress=False, config=cfg(method))
    assert s.x is None and s.decoder is not None
    m = s.materialize()
    counts = torch.bincount(m.y, minlength=10)
    assert m.x.shape == (len(m.y), 1, 8, 8) and torch.isfinite(m.x).all()
    assert (counts == counts[0]).all() and counts[0] >= 2  # more decoded images than stored images
    store = s.decoder_spec["storage"]
    assert s.storage_floats() == store["total"] <= store["budget"] == 640
    assert torch.equal(s.y, m.y)
    t = SyntheticSet.load(s.save(tmp_path / f"{method}.safetensors"))
    assert t.decoder == s.decoder and set(t.params) == set(s.params)
    assert all(torch.equal(t.params[k], s.params[k]) for k in s.params)
    mt = t.materialize()
    assert torch.equal(mt.x, m.x) and torch.equal(mt.y, m.y) and t.lr == s.lr


def test_linba_initial_addressing_recalls_real_images(digits):
    d = make_distiller("linba", digits, 10, {"images_per_class": 2}, device="cpu", model=MODEL)
    state = d.init(generator("init", 0))
    from distill_apps.methods.factorized import linba_images

    x, y = linba_images(state.params["bases"], state.params["addressing"])
    # least-squares addressing: the recalled images are projections of real images of their class
    means = torch.stack([digits.x_train[digits.y_train == c].flatten(1).mean(0) for c in range(10)])
    nearest = torch.cdist(x.detach().flatten(1), means).argmin(1)
    assert float((nearest == y).float().mean()) >= 0.7


def test_kfs_regularisers_pull_classes_apart_and_change_the_gradient(digits):
    from distill_apps.methods.factorized import class_similarity, supervised_contrastive

    y = torch.tensor([0, 0, 1, 1])
    together = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    mixed = together[[0, 2, 1, 3]]  # each class holds one of each direction
    assert supervised_contrastive(together, y, 0.5) < supervised_contrastive(mixed, y, 0.5)
    assert class_similarity(together, y) > 0.99 and class_similarity(mixed, y) < 0.2
    grads = {}
    for lam in (0.0, 1.0):
        d = make_distiller("kfs", digits, 1, {**CONFIGS["kfs"], "lambda_contrast": lam, "lambda_diversity": lam},
                           device="cpu", model=MODEL)
        st = d.init(generator("init", 0))
        loss = d.loss(st, generator("step", 0, 0))
        grads[lam] = torch.autograd.grad(loss, [st.params["latents"], st.params["dec_w"]])
    for a, b in zip(grads[0.0], grads[1.0]):
        assert (a - b).norm() > 1e-4 * a.norm()  # both reach the latents and the shared decoders
