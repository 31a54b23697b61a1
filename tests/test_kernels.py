"""Kernels and KRR: analytic FC NTK vs a wide finite network, KRR vs a direct solve, the "krr" protocol."""
from __future__ import annotations

import math

import pytest
import torch

import distill_apps as da
from distill_apps import kernels as K
from distill_apps.errors import ConfigError


@pytest.mark.parametrize("depth,width,tol", [(1, 32768, 0.05), (2, 2048, 0.15)])
def test_analytic_fc_ntk_matches_empirical_ntk_of_wide_net(depth, width, tol):
    """Relative Frobenius error of the empirical NTK (torch.func) of an NTK-parameterised ReLU MLP of the
    stated width against the arc-cosine recursion; seen: ~0.011 (depth 1, width 32768), ~0.06-0.09 (depth 2,
    width 2048), so the tolerances leave 4x / 1.7x room for other seeds."""
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    _, ntk = K.fc_relu_kernels(x, x, depth)
    net = K.NTKParamMLP(16, width, depth, generator=torch.Generator().manual_seed(0))
    emp = K.empirical_ntk(net, x, x)
    err = float((emp - ntk).norm() / ntk.norm())
    assert err < tol, f"analytic vs empirical NTK relative error {err:.3f} at width {width}"


def test_fc_kernels_closed_forms():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sw, sb = math.sqrt(2.0), 0.1
    nngp0, ntk0 = K.fc_relu_kernels(x, x, depth=0, sigma_w=sw, sigma_b=sb)
    lin = sw ** 2 * x @ x.T / 7 + sb ** 2
    torch.testing.assert_close(nngp0, lin)
    torch.testing.assert_close(ntk0, lin)
    nngp1, ntk1 = K.fc_relu_kernels(x, x, depth=1, sigma_w=sw, sigma_b=sb)
    # on the diagonal E[relu(u)^2] = Sigma/2, and E[relu'(u)^2] = 1/2
    torch.testing.assert_close(nngp1.diagonal(), sw ** 2 * lin.diagonal() / 2 + sb ** 2)
    torch.testing.assert_close(ntk1.diagonal(), nngp1.diagonal() + sw ** 2 * 0.5 * lin.diagonal())
    assert torch.linalg.eigvalsh(ntk1).min() > 0  # a valid (PD) kernel
    torch.testing.assert_close(ntk1, ntk1.T)


def test_krr_predictions_equal_direct_linear_solve():
    g = torch.Generator().manual_seed(0)
    phi_s = torch.randn(12, 30, generator=g, dtype=torch.float64)
    phi_t = torch.randn(7, 30, generator=g, dtype=torch.float64)
    y_s = torch.randn(12, 4, generator=g, dtype=torch.float64)
    k_ss, k_ts = phi_s @ phi_s.T, phi_t @ phi_s.T
    reg = 1e-3
    lam = reg * torch.trace(k_ss) / 12
    direct = k_ts @ torch.linalg.solve(k_ss + lam * torch.eye(12, dtype=torch.float64), y_s)
    torch.testing.assert_close(K.krr_predict(k_ts, k_ss, y_s, reg), direct)
    # the primal (feature-space) form is the same predictor (Woodbury), and so is "dual" on features
    torch.testing.assert_close(K.krr_predict_features(phi_t, phi_s, y_s, reg, "primal"), direct)
    torch.testing.assert_close(K.krr_predict_features(phi_t, phi_s, y_s, reg, "dual"), direct)


def test_krr_jitter_rescues_singular_kernel_and_refuses_nan():
    phi = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = phi @ phi.T  # rank 3 of 10: singular without a regulariser
    out = K.krr_predict(k, k, torch.eye(10, dtype=torch.float64)[:, :2], reg=0.0)
    assert torch.isfinite(out).all()
    bad = k.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(da.DistillError, match="positive definite"):
        K.krr_solve(bad, torch.ones(10, 1, dtype=torch.float64))


def test_krr_protocol_reports_itself_and_its_kernel(digits):
    summary = da.distill("random", digits, ipc=5, progress=False)
    res = da.evaluate(summary, digits, protocol="krr", kernel="fc_ntk")
    assert res.protocol == "krr" and res.extra["kernel"] == "fc_ntk"
    assert res.epochs is None and res.lr is None  # train-protocol fields are not pretended
    assert res.accuracy_mean > 0.7  # 50 real digits with the FC NTK (seen: ~0.88); chance is 0.1
    rf = da.evaluate(summary, digits, protocol="krr", kernel="rf_nngp", model="convnet-d1-w16-nn", runs=2,
                     n_models=2)
    assert rf.runs == 2 and rf.extra["kernel"] == "rf_nngp" and rf.accuracy_mean > 0.5
    with pytest.raises(ConfigError, match="Unknown kernel"):
        da.evaluate(summary, digits, protocol="krr", kernel="nope")


def test_conv_entk_is_differentiable_wrt_inputs():
    spec = K.make_kernel("conv_entk", image_shape=(1, 8, 8), g=torch.Generator().manual_seed(0),
                         model="convnet-d1-w8-nn")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    k = spec.fn(x, x)
    torch.testing.assert_close(k, k.T)
    (gx,) = torch.autograd.grad(k.sum(), x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0
