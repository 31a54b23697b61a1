"""The one unroll (``inner.unroll``): its memory-flat modes give autograd's gradient, for every leaf and method.

Tolerances are stated per test: float64 problems agree to 1e-10 relative (measured: ~1e-15); the methods' own
float32 networks to 1e-4 (measured: ~1e-6), the difference being summation order only.
"""
from __future__ import annotations

import pytest
import torch

from distill_apps.augment import DSA
from distill_apps.engine import make_distiller
from distill_apps.errors import ConfigError
from distill_apps.inner import UnrollPlan, functional, unroll
from distill_apps.methods.trajectory import SavedTensorMeter
from distill_apps.nets import build_model
from distill_apps.runtime import generator
from distill_apps.train import target_loss

MODES = [("adjoint", 0), ("checkpoint", 2), ("checkpoint", 3), ("checkpoint", 7), ("adjoint-micro", 4)]


def _rel(a, b, floor: float = 1e-6):
    """Relative difference; gradients that are zero in exact arithmetic (a conv bias before instance norm) are
    compared against ``floor`` instead of their rounding noise."""
    return float((a - b).norm() / b.norm().clamp_min(floor))


def _setup(digits, n=16):
    net = build_model("convnet-d1-w8", 1, 10, (8, 8), generator=generator("unroll-net")).double()
    f, p0 = functional(net)
    g = torch.Generator().manual_seed(0)
    # a factorised "summary": images decoded linearly from bases, so gradients must pass through a decoder
    bases = digits.x_train[:6].double().flatten(1).clone().requires_grad_(True)
    coef = (0.3 * torch.randn(n, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    soft = torch.randn(n, 10, generator=g, dtype=torch.float64).requires_grad_(True)
    log_lr = torch.tensor([-3.0, -2.5, -2.0], dtype=torch.float64, requires_grad=True)
    xr, yr = digits.x_train[100:140].double(), digits.y_train[100:140]
    return f, p0, bases, coef, soft, log_lr, xr, yr


@pytest.mark.parametrize("case", ["sgd-per-step-lrs", "momentum-decoded", "dsa-soft-labels"])
def test_memory_flat_modes_equal_autograd_float64(case, digits):
    """Every differentiable leaf (decoded images -> bases and coefficients, soft labels, learned step sizes, start
    parameters) gets autograd's gradient from the adjoint (whole minibatches or micro-batches) and from
    checkpointing: 1e-10 relative, float64 (measured ~1e-15); micro-batches 1e-6 (the loss is float32)."""
    f, p0, bases, coef, soft, log_lr, xr, yr = _setup(digits)
    steps = 7
    dsa = DSA() if case == "dsa-soft-labels" else None
    momentum = 0.9 if case == "momentum-decoded" else 0.0
    kind = "logits" if case == "dsa-soft-labels" else "hard"
    y_hard = torch.arange(16) % 10
    theta0 = {k: v.clone().requires_grad_(True) for k, v in p0.items()}
    results = {}
    for memory, chunk in [("autograd", 0)] + MODES:
        plan = UnrollPlan.draw(16, steps, 6, generator("plan"), dsa, (8, 8))
        x = (coef @ bases).view(16, 1, 8, 8)
        y = soft if kind == "logits" else y_hard
        if case == "sgd-per-step-lrs":
            lrs, lr = log_lr.exp().repeat(3)[:steps], None
        else:
            lrs, lr = None, log_lr[0].exp()
        micro = chunk if memory == "adjoint-micro" else 0  # 6-example minibatches in micro-batches of 4 + 2
        end = unroll(f, theta0, x, y, steps, lr, lrs=lrs, plan=plan, dsa=dsa, momentum=momentum, label_kind=kind,
                     memory=memory.split("-")[0], chunk=chunk, micro_batch=micro)
        loss = target_loss(f(end, xr), yr)
        leaves = [bases, coef, log_lr, *theta0.values()] + ([soft] if kind == "logits" else [])
        results[(memory, chunk)] = (float(loss.detach()), torch.autograd.grad(loss, leaves))
    ref_loss, ref = results[("autograd", 0)]
    assert all(float(r.norm()) > 0 for r in ref[:3])  # the comparison means something
    for key in MODES:
        l, grads = results[key]
        assert l == pytest.approx(ref_loss, rel=1e-6)  # target_loss returns float32: one rounding of it
        # micro-batches split the loss's mean, which target_loss takes in float32: float32 rounding (~1e-7)
        tol = 1e-6 if key[0] == "adjoint-micro" else 1e-10
        assert max(_rel(a, b) for a, b in zip(grads, ref)) < tol, key


def test_adjoint_activation_memory_is_flat_in_steps(digits):
    """Peak bytes of tensors saved for backward (deterministic): flat for the adjoint, ~chunk-sized for
    checkpointing, linear for autograd (LinBa's momentum unroll on decoded images)."""
    f, p0, bases, coef, *_ = _setup(digits)
    peaks = {}
    for memory, chunk in (("autograd", 0), ("adjoint", 0), ("checkpoint", 4)):
        for steps in (4, 16):
            plan = UnrollPlan.draw(16, steps, 8, generator("plan"), None, None)
            with SavedTensorMeter() as m:
                x = (coef @ bases).view(16, 1, 8, 8)
                end = unroll(f, p0, x, torch.arange(16) % 10, steps, 0.01, plan=plan, momentum=0.9, memory=memory,
                             chunk=chunk)
                sum(v.sum() for v in end.values()).backward()
            peaks[(memory, steps)] = m.peak
    assert peaks[("adjoint", 16)] == peaks[("adjoint", 4)]
    assert peaks[("checkpoint", 16)] == peaks[("checkpoint", 4)]
    assert peaks[("autograd", 16)] > 3 * peaks[("autograd", 4)]
    assert peaks[("adjoint", 16)] < peaks[("checkpoint", 16)] < peaks[("autograd", 16)]


def test_unroll_refuses_bad_modes(digits):
    f, p0, *_ = _setup(digits)
    x, y = digits.x_train[:4].double(), digits.y_train[:4]
    with pytest.raises(ConfigError, match="memory"):
        unroll(f, p0, x, y, 2, 0.1, 4, generator("g"), memory="bogus")
    with pytest.raises(ConfigError, match="chunk"):
        unroll(f, p0, x, y, 2, 0.1, 4, generator("g"), memory="checkpoint")
    with pytest.raises(ConfigError, match="adjoint"):
        unroll(f, p0, x, y, 2, 0.1, 4, generator("g"), memory="autograd", exact=False)


def _method_grads(digits, method, cfg, leaves, tmp_path):
    out = {}
    for memory, chunk in (("autograd", 0), ("adjoint", 0), ("checkpoint", 2), ("adjoint-micro", 3)):
        c = {**cfg, "unroll_memory": memory.split("-")[0], "unroll_chunk": chunk,
             "unroll_micro_batch": chunk if memory == "adjoint-micro" else 0}
        if "expert_dir" in c:
            c["expert_dir"] = str(tmp_path / "experts")
        d = make_distiller(method, digits, 1, c, device="cpu", model="convnet-d1-w8")
        st = d.init(generator("init", 0))
        res = d.loss(st, generator("step", 0, 0)) if hasattr(d, "loss") else d.outer_loss(st, generator("step", 0, 0))
        loss = res[0] if isinstance(res, tuple) else res
        ps = [st.params[k] for k in leaves]
        out[memory] = torch.autograd.grad(loss, ps)
    return out


@pytest.mark.parametrize("method, cfg, leaves", [
    ("dd", {"inner_steps": 3, "inner_epochs": 2, "tbptt_window": 4}, ["x", "log_lr"]),
    ("linba", {"unroll_steps": 5}, ["bases", "addressing", "log_lr"]),
    ("haba", {"num_experts": 1, "expert_train_epochs": 2, "max_start_epoch": 1, "syn_steps": 4, "expert_dir": "",
              "batch_syn": -1}, ["bases", "enc_w", "dec_w", "mod_scale", "lr"]),
    ("mtt", {"num_experts": 1, "expert_train_epochs": 2, "max_start_epoch": 1, "syn_steps": 4, "expert_dir": ""},
     ["x", "lr"]),
])
def test_each_method_gets_autograds_gradient_from_the_flat_modes(method, cfg, leaves, digits, tmp_path):
    """The method's own loss (float32 network): adjoint (also in micro-batches of 3) and checkpointing within
    1e-4 relative of autograd."""
    if method == "mtt":  # MTT's step is the loss + update: compare its loss function directly
        from distill_apps.methods.trajectory import mtt_loss

        out = {}
        for memory in ("autograd", "adjoint", "checkpoint", "adjoint-micro"):
            d = make_distiller("mtt", digits, 1, {**cfg, "expert_dir": str(tmp_path / "experts")}, device="cpu",
                               model="convnet-d1-w8")
            st = d.init(generator("init", 0))
            start, target, plan, aug = d.draw(st, generator("step", 0, 0))
            loss = mtt_loss(d.student(), start, target, st.params["x"], st.buffers["y"], st.params["lr"], plan, aug,
                            memory=memory.split("-")[0], chunk=3, micro_batch=3 if memory == "adjoint-micro" else 0)
            out[memory] = torch.autograd.grad(loss, [st.params[k] for k in leaves])
    else:
        out = _method_grads(digits, method, cfg, leaves, tmp_path)
    for memory in ("adjoint", "checkpoint", "adjoint-micro"):
        for name, a, b in zip(leaves, out[memory], out["autograd"]):
            assert float(b.norm()) > 0, name
            assert _rel(a, b) < 1e-4, (memory, name, _rel(a, b))


@pytest.mark.slow
def test_sharded_adjoint_on_two_ranks_matches_one_process(digits, tmp_path):
    """MTT with unroll_memory=adjoint under torchrun (2 ranks, every student step's minibatch split, the
    all-reduce inside the recomputed steps): the summary equals the single-process one (measured 3.6e-7)."""
    import os
    import random
    import subprocess
    import sys

    import distill_apps as da
    from distill_apps.summary import SyntheticSet

    config = {"num_experts": 1, "expert_train_epochs": 2, "max_start_epoch": 1, "syn_steps": 3, "lr_img": 100.0,
              "expert_dir": str(tmp_path / "experts"), "dsa": False, "unroll_memory": "adjoint"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = da.distill("mtt", digits, 2, steps=3, seed=2, model="convnet-d2-w16", device="cpu", progress=False,
                            config=config)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "mtt.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(31500 + random.Random(str(out)).randrange(2000)), "-m", "distill_apps.cli",
           "distill", "--method", "mtt", "--ipc", "2", "--steps", "3", "--model", "convnet-d2-w16", "--seed", "2",
           "--no-eval", "--no-progress", "--device", "cpu", "--out", str(out)]
    cmd += [a for k, v in config.items() for a in ("--set", f"{k}={v}")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    multi = SyntheticSet.load(out)
    torch.testing.assert_close(multi.x, single.x, atol=1e-4, rtol=1e-4)
    assert multi.lr == pytest.approx(single.lr, rel=1e-4)
