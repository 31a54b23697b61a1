"""Meta-model matching: DD's hypergradient, RFAD's linear cost vs KIP, FRePO's pool, and the shared contract."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import distill_apps as da
from distill_apps.engine import make_distiller
from distill_apps.inner import functional
from distill_apps.methods.meta import dd_outer_loss
from distill_apps.runtime import generator

TINY = "convnet-d1-w8-nn"


def test_dd_hypergradient_matches_finite_differences():
    """d(outer loss)/d(one synthetic pixel) by BPTT through 4 SGD steps vs a central difference.

    The net is float64 but ``target_loss`` computes the loss in float32, so the step is 1e-2 (rounding error
    ~1e-5 absolute, truncation error O(eps^2)) and the tolerance 1 %; a wrong hypergradient (e.g. a missing
    create_graph, which drops the second-order terms) is off by far more."""
    g0 = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g0, dtype=torch.float64) * 0.5)
    f, p0 = functional(net)
    x = torch.randn(6, 1, 4, 4, generator=g0, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    xr = torch.randn(9, 1, 4, 4, generator=g0, dtype=torch.float64)
    yr = torch.arange(9) % 3
    lrs = torch.tensor([0.3, 0.2, 0.25, 0.1], dtype=torch.float64)

    def loss(xs):
        return dd_outer_loss(f, p0, xs, y, lrs, xr, yr, window=0, batch_size=6, g=torch.Generator().manual_seed(3))

    xs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(xs), xs)
    pix, eps = (2, 0, 1, 3), 1e-2
    xp, xm = x.clone(), x.clone()
    xp[pix] += eps
    xm[pix] -= eps
    fd = (loss(xp) - loss(xm)) / (2 * eps)
    assert abs(float(grad[pix])) > 1e-4  # the pixel matters, so the comparison means something
    assert float(grad[pix]) == pytest.approx(float(fd.detach()), rel=1e-2)
    # truncation keeps only the last step's dependence, so its hypergradient differs from the full one
    xs2 = x.clone().requires_grad_(True)
    (gt,) = torch.autograd.grad(dd_outer_loss(f, p0, xs2, y, lrs, xr, yr, 1, 6, torch.Generator().manual_seed(3)), xs2)
    assert not torch.allclose(gt, grad)


def test_dd_fixed_init_keeps_one_initialisation(digits):
    d = make_distiller("dd", digits, 1, {"init_mode": "fixed", "inner_steps": 2, "inner_epochs": 1}, "cpu", TINY)
    st = d.init(generator("init", 0))
    w0 = {k: v.clone() for k, v in st.modules["net0"].state_dict().items()}
    lr0 = st.params["log_lr"].detach().clone()
    x0 = st.params["x"].detach().clone()
    for t in range(2):
        d.step(st, generator("step", 0, t))
    assert all(torch.equal(w0[k], v) for k, v in st.modules["net0"].state_dict().items())
    assert not torch.equal(lr0, st.params["log_lr"].detach())  # step sizes are learned
    assert not torch.equal(x0, st.params["x"].detach())


def test_dd_summary_evaluates_with_its_learned_schedule(digits):
    from dataclasses import replace

    from distill_apps.errors import DataError

    s = da.distill("dd", digits, 1, steps=3, model=TINY, progress=False,
                   config={"inner_steps": 3, "inner_epochs": 2, "lr_init": 0.3})
    lrs = s.meta["inner_lrs"]
    assert len(lrs) == 3 and all(v > 0 for v in lrs) and lrs != [0.3] * 3  # learned, exported
    res = da.evaluate(s, digits, model=TINY, protocol="schedule", runs=2)
    assert res.protocol == "schedule" and res.extra["unrolled_steps"] == 6 and res.extra["inner_lrs"] == lrs
    # the schedule is what trains the network: with (almost) zero step sizes it stays at chance
    still = replace(s, meta={**s.meta, "inner_lrs": [1e-9] * 3})
    assert res.accuracy_mean > da.evaluate(still, digits, model=TINY, protocol="schedule", runs=2).accuracy_mean + 0.15
    with pytest.raises(DataError, match="schedule"):
        da.evaluate(da.distill("random", digits, 1, progress=False), digits, model=TINY, protocol="schedule")


def _flops_of_step(method: str, real, ipc: int, cfg: dict) -> int:
    """FLOPs of one outer step (forward, backward, optimiser), with the linear-algebra solves counted too."""
    def chol(a, *args, out_shape=None, **kw):
        return a[-1] ** 3 // 3

    def chol_solve(b, a, *args, out_shape=None, **kw):
        return 2 * a[-1] ** 2 * b[-1]

    def tri_solve(a, b, *args, out_shape=None, **kw):
        return a[-1] ** 2 * b[-1]

    ops = torch.ops.aten
    mapping = {ops.linalg_cholesky_ex: chol, ops.cholesky_solve: chol_solve, ops.linalg_solve_triangular: tri_solve}
    d = make_distiller(method, real, ipc, cfg, "cpu", TINY)
    st = d.init(generator("init", 0))
    with FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        d.step(st, generator("step", 0, 0))
    return fc.get_total_flops()


def test_rfad_step_cost_grows_linearly_while_kip_grows_faster(digits):
    """Measured cost of one outer step (forward, backward, optimiser; FLOPs counted by torch's FlopCounterMode
    plus the Cholesky solves, so a loaded machine cannot make it flaky) at support sizes 40, 200 and 360.

    RFAD solves KRR in the primal (feature) form, so its cost is affine in the support size: the second
    increment equals the first (seen: ratio 1.00). KIP's empirical-NTK Gram matrix is quadratic and its solve
    cubic (seen: ratio 1.82; a pure quadratic gives 2.33). Over 9x the support RFAD grew x5.3, KIP x13.0.
    ``reg=1e-3`` keeps both systems well conditioned, so no jitter retries add solves.
    """
    rf_cfg = {"feature_model": "convnet-d2-w8-nn", "n_models": 2, "krr_form": "primal", "batch_real": 5,
              "reg": 1e-3}
    kip_cfg = {"kernel_model": "convnet-d1-w16-nn", "batch_real": 5, "reg": 1e-3}
    sizes = (4, 20, 36)  # images per class: support 40, 200, 360
    rf = [_flops_of_step("rfad", digits, ipc, rf_cfg) for ipc in sizes]
    kp = [_flops_of_step("kip", digits, ipc, kip_cfg) for ipc in sizes]
    rf_curv = (rf[2] - rf[1]) / (rf[1] - rf[0])
    kp_curv = (kp[2] - kp[1]) / (kp[1] - kp[0])
    assert 0.9 <= rf_curv <= 1.1, f"RFAD step cost is not linear in the support size: increments {rf}"
    assert kp_curv >= 1.4, f"KIP step cost grew only linearly: {kp}"
    assert rf[2] / rf[0] <= 9 * 1.1  # at most proportional to the 9x larger support
    assert kp[2] / kp[0] > 2 * rf[2] / rf[0]


def test_frepo_pool_refreshed_on_schedule_and_features_detached(digits):
    cfg = {"pool_size": 2, "max_online_updates": 3, "batch_real": 4}
    d = make_distiller("frepo", digits, 1, cfg, "cpu", TINY)
    st = d.init(generator("init", 0))
    assert st.info["age"] == [0, 1]  # staggered start
    ages, refreshes = list(st.info["age"]), [0, 0]
    for t in range(8):
        g = generator("step", 0, t)
        before = {k: v.detach().clone() for k, v in st.modules[f"pool{d.pick(generator('step', 0, t))}"].state_dict().items()}
        d.step(st, g)
        slot = st.info["last_slot"]
        ages[slot] += 1
        net = st.modules[f"pool{slot}"]
        if ages[slot] == 3:  # the schedule: re-initialised after max_online_updates online steps
            ages[slot], refreshes[slot] = 0, refreshes[slot] + 1
            fresh_opt = st.optimizers[f"pool{slot}"].state
            assert len(fresh_opt) == 0  # the optimiser restarts with the network
        else:
            changed = any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
            assert changed  # trained online on the synthetic data
        assert st.info["age"] == ages and st.info["refreshes"] == refreshes
    assert sum(refreshes) >= 2

    # features: target side carries no graph, support side reaches the images only
    x = st.params["x"]
    xt, _ = d.target(generator("t", 0))
    phi_t, phi_s = d.features(st, 0, x, xt)
    assert not phi_t.requires_grad and phi_s.requires_grad
    params = list(st.modules["pool0"].parameters())
    grads = torch.autograd.grad(phi_s.sum(), [x, *params], allow_unused=True)
    assert grads[0] is not None and all(gr is None for gr in grads[1:])
    assert all(p.requires_grad for p in params)  # frozen only inside the feature computation
    loss, _ = d.outer_loss(st, generator("step", 0, 99))
    used = st.modules[f"pool{st.info['last_slot']}"]
    grads = torch.autograd.grad(loss, [x, *used.parameters()], allow_unused=True)
    assert grads[0] is not None and all(gr is None for gr in grads[1:])  # outer gradient: images only


def test_kip_learns_regression_labels(digits):
    d = make_distiller("kip", digits, 1, {"kernel_model": TINY, "batch_real": 4}, "cpu", TINY)
    st = d.init(generator("init", 0))
    y0 = st.params["y_soft"].detach().clone()
    d.step(st, generator("step", 0, 0))
    s = d.export(st)
    assert s.label_kind == "regression" and not torch.equal(s.soft, y0.cpu())
    assert s.meta["kernel"] == "conv_entk" and s.meta["kernel_model"] == TINY


@pytest.mark.parametrize("method,cfg", [
    ("dd", {"inner_steps": 2, "inner_epochs": 1, "tbptt_window": 1, "batch_real": 4}),
    ("kip", {"kernel": "fc_ntk", "batch_real": 4}),
    ("rfad", {"feature_model": TINY, "n_models": 2, "batch_real": 4}),
    ("frepo", {"pool_size": 2, "max_online_updates": 2, "batch_real": 4}),
])
def test_method_runs_exports_roundtrips_and_evaluates(method, cfg, digits, tmp_path):
    s = da.distill(method, digits, ipc=1, steps=3, model=TINY, config=cfg, progress=False)
    assert s.x.shape == (10, 1, 8, 8) and torch.isfinite(s.x).all() and s.meta["method"] == method
    path = s.save(tmp_path / f"{method}.safetensors")
    back = da.SyntheticSet.load(path)
    torch.testing.assert_close(back.x, s.x)
    assert back.label_kind == s.label_kind and back.meta["steps"] == 3
    res = da.evaluate(back, digits, protocol="krr", kernel="fc_ntk")
    assert res.protocol == "krr" and 0.0 <= res.accuracy_mean <= 1.0
    tr = da.evaluate(back, digits, model=TINY, runs=1, epochs=2)
    assert tr.protocol == "train"


def test_meta_checkpoint_resume_is_exact(digits, tmp_path):
    """FRePO keeps the most state (pool, optimisers, ages): resuming reproduces the uninterrupted run."""
    cfg = {"pool_size": 2, "max_online_updates": 2, "batch_real": 4}
    full = da.distill("frepo", digits, ipc=1, steps=4, model=TINY, config=cfg, progress=False)
    ck = tmp_path / "run.ckpt"
    da.distill("frepo", digits, ipc=1, steps=2, model=TINY, config=cfg, progress=False, checkpoint=ck,
               checkpoint_every=1)
    resumed = da.distill("frepo", digits, ipc=1, steps=4, model=TINY, config=cfg, progress=False, checkpoint=ck,
                         checkpoint_every=1, resume=True)
    torch.testing.assert_close(resumed.x, full.x)
    torch.testing.assert_close(resumed.soft, full.soft)


def test_bad_config_is_refused(digits):
    with pytest.raises(da.DistillError, match="init_mode"):
        da.distill("dd", digits, ipc=1, steps=1, model=TINY, config={"init_mode": "sometimes"}, progress=False)
    with pytest.raises(da.DistillError, match="pool_size"):
        da.distill("frepo", digits, ipc=1, steps=1, model=TINY, config={"pool_size": 0}, progress=False)
