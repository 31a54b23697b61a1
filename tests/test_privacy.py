"""Differential privacy: Opacus accounting, the stop-before-budget rule, clipping, noise, and audits."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("opacus")

import distill_apps as da  # noqa: E402
from distill_apps.engine import make_distiller  # noqa: E402
from distill_apps.errors import ConfigError  # noqa: E402
from distill_apps.methods.private import (clip_rows, clipped_class_embedding_sums,  # noqa: E402
                                          clipped_class_grad_sums)
from distill_apps.privacy import (BudgetExceededError, PrivacyBudget, calibrate_noise, epsilon_for,  # noqa: E402
                                  membership_inference, nearest_neighbour_audit)

NET = "convnet-d1-w8"


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_equals_opacus_accountant(accountant):
    from opacus.accountants import create_accountant

    sigma, q, steps, delta = 1.1, 256 / 60000, 1000, 1e-5
    acc = create_accountant(accountant)
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    ours = epsilon_for(sigma, q, steps, delta, accountant)
    assert ours == pytest.approx(acc.get_epsilon(delta=delta), rel=1e-6)
    budget = PrivacyBudget(10.0, delta, accountant)
    budget.spend(sigma, q, steps)
    assert budget.spent() == pytest.approx(ours, rel=1e-9)
    if accountant == "rdp":  # calibration: Opacus' noise for this target lands within (and near) the target
        s = calibrate_noise(ours, delta, q, steps, accountant)
        assert epsilon_for(s, q, steps, delta, accountant) <= ours + 1e-9
        assert s == pytest.approx(sigma, rel=0.05)


def test_budget_refuses_the_overspending_release():
    b = PrivacyBudget(1.0, 1e-5)
    n = b.max_releases(2.0, 0.05, limit=10_000)
    assert 0 < n < 10_000
    b.spend(2.0, 0.05, n)
    assert b.spent() <= 1.0
    with pytest.raises(BudgetExceededError):
        b.spend(2.0, 0.05, 1)
    assert b.steps == n  # nothing recorded by the refused release


@pytest.fixture(scope="module")
def small(digits):
    g = torch.Generator().manual_seed(0)
    return digits.subset(torch.randperm(len(digits.x_train), generator=g)[:400], name="digits")


def test_run_stops_before_target_budget(small):
    cfg = {"noise_multiplier": 2.0, "sample_rate": 0.1, "releases": 25, "epsilon": 1.0, "delta": 1e-5}
    s = da.distill("dp-dm", small, ipc=1, steps=25, config=cfg, model=NET, progress=False)
    p = s.meta["privacy"]
    allowed = p["releases"]
    assert 0 < allowed < 25  # it stopped releasing although steps continued
    assert p["epsilon"] <= 1.0
    assert epsilon_for(2.0, 0.1, allowed, 1e-5) <= 1.0 < epsilon_for(2.0, 0.1, allowed + 1, 1e-5)
    assert p["epsilon"] == pytest.approx(epsilon_for(2.0, 0.1, allowed, 1e-5))
    assert p["accountant"] == "rdp" and p["delta"] == 1e-5 and p["sampling"] == "poisson"


def test_clipping_bounds_each_sample(small):
    g = torch.Generator().manual_seed(1)
    net = da.build_model(NET, 1, 10, (8, 8), generator=g)
    x, y = small.x_train[:12], small.y_train[:12]
    for clip in (1e-3, 0.5):
        for i in range(len(x)):  # one sample's whole contribution, over all parameters and classes
            sums = clipped_class_grad_sums(net, x[i:i + 1], y[i:i + 1], 10, clip)
            norm = torch.sqrt(sum((s ** 2).sum() for s in sums))
            assert norm <= clip * (1 + 1e-4)
            if clip == 1e-3:  # real gradients are far larger than 1e-3: clipped exactly to the bound
                assert norm == pytest.approx(clip, rel=1e-3)
            e = clipped_class_embedding_sums(net, x[i:i + 1], y[i:i + 1], 10, clip)
            assert e.norm() <= clip * (1 + 1e-4)
    v = torch.randn(50, 7) * 10
    assert (clip_rows(v, 2.0).norm(dim=1) <= 2.0 + 1e-5).all()
    # the per-sample sums add up: a batch's class sum equals the sum of single-sample sums
    batch = clipped_class_grad_sums(net, x, y, 10, 0.5, chunk=5)
    single = [clipped_class_grad_sums(net, x[i:i + 1], y[i:i + 1], 10, 0.5) for i in range(len(x))]
    for j, b in enumerate(batch):
        assert torch.allclose(b, sum(s[j] for s in single), atol=1e-5)


def _released_target(real, seed: int, cfg: dict) -> torch.Tensor:
    d = make_distiller("dp-dm", real, 1, {"releases": 5, **cfg}, device="cpu", model=NET, seed=0)
    state = d.init(torch.Generator().manual_seed(0))
    d.release(state, 0, torch.Generator().manual_seed(seed))
    return state.buffers["targets"][0].clone(), d, state


def test_noise_is_added_and_zero_noise_refused(small):
    a, d, state = _released_target(small, 1, {"epsilon": 2.0})
    b, _, _ = _released_target(small, 2, {"epsilon": 2.0})
    assert not torch.allclose(a, b)  # different noise draws, same data, same network
    exact, _, _ = _released_target(small, 1, {"non_private": True})
    exact2, _, _ = _released_target(small, 2, {"non_private": True})
    assert torch.allclose(exact, exact2)  # without noise the release is deterministic (q = 1 on 400 images)
    p = state.info["privacy"]
    counts = torch.tensor(small.class_counts(), dtype=torch.float32)[:, None] * p["sample_rate"]
    resid = (a - exact) * counts  # back to the scale of the noisy sum
    assert resid.std().item() == pytest.approx(p["noise_multiplier"] * p["clip"], rel=0.2)
    with pytest.raises(ConfigError, match="non_private"):
        make_distiller("dp-dm", small, 1, {"noise_multiplier": 0.0}, device="cpu", model=NET).init(
            torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="publish real"):
        make_distiller("dp-dm", small, 1, {"init": "real"}, device="cpu", model=NET).init(
            torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="BatchNorm"):
        make_distiller("dp-dm", small, 1, {}, device="cpu", model="convnet-d1-w8-bn").init(
            torch.Generator().manual_seed(0))
    s = da.distill("dp-dm", small, ipc=1, steps=2, config={"non_private": True}, model=NET, progress=False)
    assert s.meta["privacy"]["non_private"] and s.meta["privacy"]["epsilon"] == float("inf")
    s1 = da.distill("dp-dm", small, ipc=1, steps=3, config={"epsilon": 5.0, "releases": 3}, model=NET, seed=1,
                    progress=False)
    s2 = da.distill("dp-dm", small, ipc=1, steps=3, config={"epsilon": 5.0, "releases": 3}, model=NET, seed=2,
                    progress=False)
    assert not torch.allclose(s1.x, s2.x)


def test_dp_dc_accounts_each_release(small):
    cfg = {"epsilon": 3.0, "noise_multiplier": 2.0, "releases": 4, "outer_loop": 2, "inner_loop": 1, "batch_real": 8}
    s = da.distill("dp-dc", small, ipc=1, steps=3, config=cfg, model=NET, progress=False)
    p = s.meta["privacy"]
    assert p["releases"] == 4  # 2 steps x 2 rounds, then the third step releases nothing
    assert p["epsilon"] == pytest.approx(epsilon_for(p["noise_multiplier"], p["sample_rate"], 4, 1e-5))
    assert p["epsilon"] <= 3.0 and torch.isfinite(s.x).all()


def test_membership_inference_separates_overfit_members(small):
    from distill_apps.train import fit

    g = torch.Generator().manual_seed(0)
    net = da.build_model("mlp", 1, 10, (8, 8), generator=g) if "mlp" in da.list_models() else \
        da.build_model("convnet-d1-w32", 1, 10, (8, 8), generator=g)
    xm, ym = small.x_train[:60], small.y_train[:60].clone()
    ym = (ym + torch.randint(1, 10, ym.shape, generator=g)) % 10  # random labels: pure memorisation
    fit(net, xm, ym, epochs=300, lr=0.05, weight_decay=0.0, generator=g)
    res = membership_inference(net, (xm, ym), (small.x_test[:60], small.y_test[:60]))
    assert res.auc > 0.9 and res.tpr_at_fpr["0.1"] > 0.5
    # a fresh (untrained) model cannot tell them apart much better than chance
    fresh = da.build_model("convnet-d1-w32", 1, 10, (8, 8), generator=torch.Generator().manual_seed(3))
    assert abs(membership_inference(fresh, (xm, ym), (small.x_test[:60], small.y_test[:60])).auc - 0.5) < 0.2


def test_nearest_neighbour_audit_finds_a_copied_image(small, tmp_path):
    s = da.distill("dp-dm", small, ipc=1, steps=2, config={"epsilon": 5.0, "releases": 2}, model=NET,
                   progress=False)
    clean = nearest_neighbour_audit(s, small, png=tmp_path / "clean.png")
    assert clean["closer_than_baseline_min"] == 0
    leaky = s.detach()
    leaky.x[3] = small.x_train[17]
    res = nearest_neighbour_audit(leaky, small, png=tmp_path / "pairs.png", pairs=3)
    assert res["syn_to_train_min"] < 1e-3 and res["closer_than_baseline_min"] >= 1
    assert res["closest_pairs"][0] == {"synthetic": 3, "real_train": 17, "l2": pytest.approx(0.0, abs=1e-3)}
    assert (tmp_path / "pairs.png").stat().st_size > 0


def test_dp_sgd_baseline_spends_its_target(small):
    from distill_apps.integrations.opacus import dp_sgd_baseline

    res, net = dp_sgd_baseline(small, epsilon=2.0, epochs=2, batch_size=64, model="convnet-d1-w8-bn",
                               return_model=True)
    assert 1.5 < res.epsilon <= 2.0 and res.noise_multiplier > 0 and res.steps > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # ModuleValidator.fix ran
    assert 0.0 <= res.accuracy <= 1.0


def test_private_sharing_recipe_repeats_the_whole_pipeline(tmp_path, capsys):
    """--runs repeats distillation (new privacy noise), evaluation and audit per seed; the report aggregates."""
    import json

    from distill_apps.recipes import private_sharing

    out = tmp_path / "report"
    rc = private_sharing.main(["--dataset", "digits", "--ipc", "2", "--epsilons", "2", "--methods", "dp-dm",
                               "--steps", "3", "--set", "dp-dm.releases=3", "--eval-epochs", "5", "--runs", "2",
                               "--dpsgd-epochs", "1", "--audit-n", "50", "--no-non-private", "--out", str(out),
                               "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    per_run = res["per_run"]["summaries"]
    assert [r["seed"] for r in per_run] == [0, 1]
    import torch

    from distill_apps import SyntheticSet

    # the two runs are two different private releases, and the row is their mean
    row = res["summaries"][0]
    assert row["seeds"] == [0, 1] and row["epsilon"] <= 2.0
    assert row["accuracy"] == pytest.approx(sum(r["accuracy"] for r in per_run) / 2)
    assert row["accuracy_std"] == pytest.approx(abs(per_run[0]["accuracy"] - per_run[1]["accuracy"]) / 2)
    assert len(res["per_run"]["dp_sgd"]) == 2 and res["dp_sgd"][0]["seeds"] == [0, 1]
    shared = SyntheticSet.load(out / "summary.safetensors")
    assert shared.meta["privacy"]["epsilon"] <= 2.0 and not torch.isnan(shared.x).any()
    assert "±" in (out / "report.md").read_text() and (out / "DATA_CARD.md").exists()


def test_summary_privacy_and_the_cli_prints_epsilon(tmp_path, capsys):
    """``summary.privacy`` exposes the accounting of a dp-* summary (None otherwise); ``distill`` and ``evaluate``
    print epsilon, in their text and in ``--json``."""
    import json

    from distill_apps.cli import main

    out = tmp_path / "dp.safetensors"
    assert main(["distill", "--method", "dp-dm", "--ipc", "1", "--steps", "2", "--model", NET, "--set", "epsilon=3",
                 "--set", "releases=2", "--no-eval", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    p = res["privacy"]
    assert 0 < p["epsilon"] <= 3.0 and p["delta"] == 1e-5 and p["accountant"] == "rdp" and p["private"]
    s = da.load_summary(out)
    assert s.privacy.epsilon == pytest.approx(p["epsilon"]) and s.privacy.epsilon == s.meta["privacy"]["epsilon"]
    assert main(["evaluate", str(out), "--json", "--runs", "1", "--epochs", "1", "--model", NET]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["privacy"]["epsilon"] == pytest.approx(p["epsilon"]) and "accuracy_mean" in ev
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "1", "--model", NET]) == 0
    text = capsys.readouterr().out
    assert f"privacy: ({p['epsilon']:.3g}, 1e-05)-DP, rdp accountant" in text
    plain = tmp_path / "random.safetensors"
    assert main(["distill", "--method", "random", "--ipc", "1", "--no-eval", "--out", str(plain), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["privacy"] is None
    assert da.load_summary(plain).privacy is None
