"""MTT, TESLA and expert trajectories: the defining mechanisms (issue 3)."""
from __future__ import annotations

import pytest
import torch

import distill_apps as da
from distill_apps.augment import DSA
from distill_apps.errors import SummaryFormatError
from distill_apps.experts import ExpertConfig, get_or_train_experts
from distill_apps.inner import functional, sgd_step
from distill_apps.methods.trajectory import SavedTensorMeter, UnrollPlan, mtt_loss, tesla_gradients
from distill_apps.nets import build_model
from distill_apps.runtime import generator

MODEL = "convnet-d1-w8"


def _problem(digits, dtype=torch.float32, n=20):
    net = build_model(MODEL, 1, 10, (8, 8), generator=generator("test-net")).to(dtype)
    f, start = functional(net)
    g = generator("test-target")
    target = {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=dtype) for k, v in start.items()}
    x = digits.x_train[:n].to(dtype).clone().requires_grad_(True)
    return f, start, target, x, digits.y_train[:n]


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_mtt_loss_zero_at_target_positive_otherwise_and_lr_gets_gradient(digits):
    f, start, _, x, y = _problem(digits, torch.float64)
    dsa = DSA()
    plan = UnrollPlan.draw(len(y), 3, 10, generator("plan"), dsa, (8, 8))
    lr = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    # the target is exactly where the student ends: unroll the same plan once more, without a graph
    end = {k: v.detach().requires_grad_(True) for k, v in start.items()}
    for i in range(len(plan)):
        xb, yb = plan.batch(i, x.detach(), y, dsa)
        end = sgd_step(f, end, xb, yb, 0.01, create_graph=False)
        end = {k: v.detach().requires_grad_(True) for k, v in end.items()}
    at_target = mtt_loss(f, start, {k: v.detach() for k, v in end.items()}, x, y, lr, plan, dsa)
    assert float(at_target.detach()) < 1e-20
    shifted = {k: v.detach() + 0.01 for k, v in end.items()}
    loss = mtt_loss(f, start, shifted, x, y, lr, plan, dsa)
    assert float(loss.detach()) > 1e-6
    loss.backward()
    assert lr.grad is not None and torch.isfinite(lr.grad) and float(lr.grad.abs()) > 0
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_tesla_gradient_equals_mtt_autograd(digits):
    """Tolerances: the adjoint pass ("exact") matches autograd through the unroll to 1e-10 relative (float64);
    TESLA's decomposition drops the terms through later parameters, so it matches to O(lr): within 1% at
    lr 1e-3, and its error shrinks with the learning rate."""
    f, start, target, x, _ = _problem(digits, torch.float64)
    soft = torch.randn(x.shape[0], 10, generator=generator("soft"), dtype=torch.float64).requires_grad_(True)
    dsa = DSA()
    plan = UnrollPlan.draw(x.shape[0], 4, 10, generator("plan"), dsa, (8, 8))
    errs = {}
    for lr0 in (1e-2, 1e-3):
        lr = torch.tensor(lr0, dtype=torch.float64, requires_grad=True)
        loss = mtt_loss(f, start, target, x, soft, lr, plan, dsa, "logits")
        gx, gy, glr = torch.autograd.grad(loss, [x, soft, lr])
        l_ex, ex = tesla_gradients(f, start, target, x, soft, lr, plan, dsa, "logits", mode="exact")
        assert abs(float(l_ex - loss.detach())) < 1e-12
        assert _rel(ex["x"], gx) < 1e-10 and _rel(ex["y"], gy) < 1e-10 and _rel(ex["lr"], glr) < 1e-10
        _, te = tesla_gradients(f, start, target, x, soft, lr, plan, dsa, "logits", mode="tesla")
        errs[lr0] = _rel(te["x"], gx)
    assert errs[1e-3] < 0.01
    assert errs[1e-3] < errs[1e-2] / 3


def test_tesla_memory_flat_while_mtt_grows(digits):
    """Memory = peak bytes of tensors saved for backward (SavedTensorMeter), deterministic on CPU."""
    f, start, target, x, y = _problem(digits)
    dsa = DSA()
    lr = torch.tensor(0.01, requires_grad=True)
    peaks = {}
    for n in (2, 8):
        plan = UnrollPlan.draw(len(y), n, 10, generator("plan"), dsa, (8, 8))
        with SavedTensorMeter() as m:
            mtt_loss(f, start, target, x, y, lr, plan, dsa).backward()
        with SavedTensorMeter() as t:
            tesla_gradients(f, start, target, x, y, lr, plan, dsa, mode="tesla")
        with SavedTensorMeter() as e:
            tesla_gradients(f, start, target, x, y, lr, plan, dsa, mode="exact")
        peaks[n] = (m.peak, t.peak, e.peak)
    assert peaks[8][0] > 3 * peaks[2][0]  # MTT: the whole unroll's graph
    assert peaks[8][1] == peaks[2][1] and peaks[8][2] == peaks[2][2]  # TESLA: one step's graph
    assert peaks[8][1] < peaks[8][0] / 3


def test_expert_buffer_round_trips_and_refuses_corrupt_file(digits, tmp_path):
    cfg = ExpertConfig(num_experts=2, epochs=3, augment=None)
    buf = get_or_train_experts(digits, MODEL, config=cfg, seed=0, cache_dir=tmp_path, progress=False)
    assert buf.missing() == [] and len(buf) == 2
    p0 = buf.path(0)
    stamp = p0.stat().st_mtime_ns
    traj = buf.load(0)
    assert all(v.shape[0] == 4 for v in traj.values())
    net = build_model(MODEL, 1, 10, (8, 8), generator=generator("expert", 0, 0))
    assert all(torch.equal(traj[k][0], v.detach()) for k, v in net.named_parameters())  # epoch 0 = its init
    assert any(not torch.equal(v[0], v[-1]) for v in traj.values())  # it trained
    again = get_or_train_experts(digits, MODEL, config=cfg, seed=0, cache_dir=tmp_path, progress=False)
    assert p0.stat().st_mtime_ns == stamp  # reused, not retrained
    assert all(torch.equal(again.load(0)[k], v) for k, v in traj.items())
    start, target = again.sample(generator("s"), expert_epochs=2, max_start_epoch=1)
    assert set(start) == set(traj) and all(torch.equal(start[k], traj[k][0]) or torch.equal(start[k],
                                               again.load(1)[k][0]) for k in start)
    other = get_or_train_experts(digits, MODEL, config=cfg, seed=1, cache_dir=tmp_path, progress=False, eager=False)
    assert other.folder != buf.folder  # another seed, another key
    raw = bytearray(p0.read_bytes())
    raw[-5] ^= 0xFF
    p0.write_bytes(bytes(raw))
    fresh = get_or_train_experts(digits, MODEL, config=cfg, seed=0, cache_dir=tmp_path, progress=False)
    with pytest.raises(SummaryFormatError, match="Delete"):
        fresh.load(0)
    p0.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(SummaryFormatError):
        fresh.load(0)


@pytest.mark.parametrize("method", ["mtt", "tesla"])
def test_trajectory_methods_run_and_round_trip(method, digits, tmp_path):
    cfg = {"num_experts": 2, "expert_train_epochs": 3, "max_start_epoch": 1, "syn_steps": 3,
           "expert_dir": str(tmp_path / "experts"), "lr_img": 100.0}
    s = da.distill(method, digits, ipc=1, steps=2, model=MODEL, config=cfg, progress=False)
    assert s.meta["steps"] == 2 and s.lr is not None and s.lr > 0
    if method == "tesla":
        assert s.label_kind == "logits" and s.soft is not None and s.soft.shape == (10, 10)
    back = da.SyntheticSet.load(s.save(tmp_path / f"{method}.safetensors"))
    assert torch.equal(back.x, s.x) and back.lr == s.lr and back.label_kind == s.label_kind
    assert (back.soft is None) == (s.soft is None) and (s.soft is None or torch.equal(back.soft, s.soft))
    res = da.evaluate(back, digits, model=MODEL, runs=1, epochs=5)
    assert 0.0 <= res.accuracy_mean <= 1.0


def test_mtt_adjoint_unroll_takes_the_same_step_as_autograd(digits, tmp_path):
    """The memory-saving unroll (one step's graph at a time) moves images and lr exactly as autograd does."""
    from distill_apps.engine import make_distiller

    cfg = {"num_experts": 1, "expert_train_epochs": 2, "max_start_epoch": 1, "syn_steps": 4, "lr_img": 100.0,
           "expert_dir": str(tmp_path / "experts"), "dsa": False}
    after = {}
    for mode in ("autograd", "adjoint"):
        d = make_distiller("mtt", digits, 2, {**cfg, "unroll_memory": mode}, device="cpu", model=MODEL)
        st = d.init(generator("init", 0))
        x0 = st.params["x"].detach().clone()
        d.step(st, generator("step", 0, 0))
        after[mode] = (st.params["x"].detach() - x0, st.params["lr"].detach().clone())
    assert after["autograd"][0].norm() > 0
    assert _rel(after["adjoint"][0], after["autograd"][0]) < 1e-4
    assert float(after["adjoint"][1]) == pytest.approx(float(after["autograd"][1]), rel=1e-5)


def test_dc_real_chunks_give_the_same_gradient(digits):
    from distill_apps.engine import make_distiller

    d = make_distiller("dc", digits, 1, {"real_chunk": 0}, device="cpu", model=MODEL)
    net = d.new_net(generator("net", 0))
    x, y = digits.x_train[:100], digits.y_train[:100]
    whole = d.real_gradients(net, x, y, "hard")
    d.cfg.real_chunk = 32  # 32 + 32 + 32 + 4
    chunked = d.real_gradients(net, x, y, "hard")
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
