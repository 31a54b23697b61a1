"""NNI integration: proxy evaluator, ConvNet model space, sequential-engine search, HPO, rank correlations."""
from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nni", reason="needs the nas extra: pip install 'distill-apps[nas]'")
pytest.importorskip("pytorch_lightning", reason="needs the nas extra: pip install 'distill-apps[nas]'")

import distill_apps as da  # noqa: E402
from distill_apps.errors import ConfigError  # noqa: E402
from distill_apps.integrations import nni as dn  # noqa: E402
from distill_apps.integrations.nni import study as dn_study  # noqa: E402  (where the study looks its helpers up)
from distill_apps.train import accuracy  # noqa: E402

TINY = dict(depths=(1, 2), widths=(8, 16), norms=("instance", "none"), acts=("relu", "sigmoid"), pools=("avg",))


@pytest.fixture(scope="module")
def proxy(digits):
    rest, x_val, y_val = dn.holdout_split(digits, 15, seed=0)
    summary = da.distill("random", rest, 3, progress=False)
    return dn.ProxyTask(summary, x_val, y_val, epochs=10, lr=0.05)


def _real_home_manifest() -> tuple[Path, float | None]:
    path = Path(pwd.getpwuid(os.getuid()).pw_dir) / "nni-experiments" / ".experiment"
    return path, (path.stat().st_mtime if path.exists() else None)


# ---------------------------------------------------------------- correlations vs scipy
def test_rank_correlations_match_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    cases = [
        (rng.normal(size=25), rng.normal(size=25)),
        ([0.1, 0.5, 0.5, 0.3, 0.9, 0.9, 0.2], [1, 3, 2, 2, 5, 4, 0]),          # ties on both sides
        ([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]),
        (np.round(rng.uniform(size=40), 1), np.round(rng.uniform(size=40), 1)),  # many ties
    ]
    for a, b in cases:
        assert dn.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        assert dn.kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)
        np.testing.assert_allclose(dn.rankdata(a), stats.rankdata(a))
    assert dn.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(dn.spearman([1, 1, 1], [1, 2, 3]))  # as scipy: undefined for a constant side
    assert dn.top_k_overlap([0.9, 0.8, 0.1, 0.2], [0.7, 0.1, 0.9, 0.3], 2) == 0.5
    with pytest.raises(Exception):
        dn.spearman([1, 2], [1, 2, 3])


# ---------------------------------------------------------------- model space
def test_space_choices_and_frozen_candidates(digits):
    space = dn.ConvNetSpace.for_data(digits, **TINY)
    choices = dn.space_choices(space)
    assert choices == {"depth": [1, 2], "width": [8, 16], "pool": ["avg"], "norm": ["instance", "none"],
                       "act": ["relu", "sigmoid"]}
    samples = dn.sample_architectures(space, 100, seed=1)
    assert len(samples) == 16 and len({dn.arch_key(s) for s in samples}) == 16  # the whole space, no repeats
    s = {"depth": 2, "width": 16, "pool": "avg", "norm": "none", "act": "sigmoid"}
    net = dn.build_candidate(space, s, torch.Generator().manual_seed(0))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and convs[0].out_channels == 16
    assert any(isinstance(m, torch.nn.Sigmoid) for m in net.modules())
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    assert net(digits.x_test[:4]).shape == (4, 10)
    again = dn.build_candidate(space, s, torch.Generator().manual_seed(0))  # same generator, same weights
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters()))


# ---------------------------------------------------------------- the evaluator reports what NNI expects
def test_evaluator_reports_final_accuracy_on_real_validation(digits, proxy):
    from nni.runtime.trial_command_channel import (TrialCommandChannel, get_default_trial_command_channel,
                                                   set_default_trial_command_channel)

    class Recorder(TrialCommandChannel):
        def __init__(self):
            self.metrics = []

        def receive_parameter(self):
            return None

        def send_metric(self, type, parameter_id, trial_job_id, sequence, value):  # noqa: A002
            self.metrics.append((type, value))

    space = dn.ConvNetSpace.for_data(digits, **TINY)
    arch = {"depth": 1, "width": 16, "pool": "avg", "norm": "instance", "act": "relu"}
    net = dn.build_candidate(space, arch, torch.Generator().manual_seed(0))
    rec, prev = Recorder(), get_default_trial_command_channel()
    set_default_trial_command_channel(rec)
    try:
        acc = dn.evaluate_on_proxy(net, proxy, seed=0)
    finally:
        set_default_trial_command_channel(prev)
    assert len(rec.metrics) == 1
    kind, value = rec.metrics[0]
    assert kind == "FINAL" and isinstance(value, float) and value == acc
    # the reported number is the trained candidate's accuracy on the held-out real images
    assert value == pytest.approx(accuracy(net, proxy.x_val, proxy.y_val))
    assert value > 0.3  # trained, not chance (10 classes)


# ---------------------------------------------------------------- end-to-end search, files in the workdir
@pytest.mark.parametrize("strategy", ["random", "evolution"])
def test_nni_search_runs_in_sequential_engine(digits, proxy, tmp_home, tmp_path, strategy):
    manifest, before = _real_home_manifest()
    space = dn.ConvNetSpace.for_data(digits, **TINY)
    work = tmp_path / "nas"
    res = dn.search_architecture(proxy, space, strategy=strategy, trials=3, seed=0, workdir=work)
    assert len(res.trials) == 3
    accs = [t["accuracy"] for t in res.trials]
    assert all(a is not None and 0.0 <= a <= 1.0 for a in accs)
    assert res.best_accuracy == max(accs)
    assert set(res.best) == set(dn.space_choices(space))
    assert len({dn.arch_key(t["sample"]) for t in res.trials}) == 3  # dedup: three different candidates
    # NNI's files went to the chosen folder, not to any home
    assert (work / "manifest" / ".experiment").exists()
    assert (work / "experiments" / res.experiment_id / "log" / "experiment.log").exists()
    assert not (tmp_home / "nni-experiments").exists()
    assert _real_home_manifest() == (manifest, before)


def test_hpo_tpe_on_proxy(proxy, tmp_home, tmp_path):
    space = {"lr": {"_type": "loguniform", "_value": [1e-3, 1e-1]}, "epochs": {"_type": "choice", "_value": [4, 8]}}
    res = dn.search_hyperparameters(proxy, space=space, trials=3, seed=0, workdir=tmp_path / "hpo")
    assert len(res.trials) == 3
    for t in res.trials:
        assert 1e-3 <= t["sample"]["lr"] <= 1e-1 and t["sample"]["epochs"] in (4, 8)
    assert (tmp_path / "hpo" / "hpo_trials.json").exists()
    assert not (tmp_home / "nni-experiments").exists()
    with pytest.raises(ConfigError, match="momentum"):
        dn.search_hyperparameters(proxy, space={"momentum": {"_type": "choice", "_value": [0.9]}}, trials=1,
                                  workdir=tmp_path / "bad")


@pytest.mark.slow
def test_hpo_through_nni_experiment_manager(proxy, tmp_home, tmp_path):
    """NNI's own HPO ``Experiment("local")``: the NNI manager (Node, REST on loopback) runs the TPE tuner and
    launches each trial as a process that reads its parameters with ``nni.get_next_parameter``."""
    space = {"lr": {"_type": "loguniform", "_value": [1e-3, 1e-1]}, "epochs": {"_type": "choice", "_value": [4, 8]}}
    work = tmp_path / "hpo-exp"
    res = dn.search_hyperparameters(proxy, space=space, trials=2, seed=0, workdir=work, engine="experiment",
                                    timeout=400)
    assert res.strategy == "tpe-experiment" and len(res.trials) == 2
    for t in res.trials:
        assert 1e-3 <= t["sample"]["lr"] <= 1e-1 and t["sample"]["epochs"] in (4, 8) and 0 <= t["accuracy"] <= 1
    assert res.best_accuracy == max(t["accuracy"] for t in res.trials)
    # the experiment's files (and its trials' output) live in the work folder, never in a home folder
    trials_dir = work / "experiments" / res.experiment_id / "environments" / "local-env" / "trials"
    assert trials_dir.is_dir() and len(list(trials_dir.iterdir())) == 2
    assert not (tmp_home / "nni-experiments").exists()


# ---------------------------------------------------------------- the study
def test_rank_correlation_study_small(digits):
    space = dn.ConvNetSpace.for_data(digits, **TINY)
    st = dn.rank_correlation_study(digits, k=5, ipc=3, methods=("random",), full_epochs=2, proxy_epochs=5,
                                   val_per_class=10, space=space, progress=False)
    assert st.k == 5 and len(st.full_accuracy) == 5
    p = st.proxies["random"]
    assert len(p["accuracy"]) == 5 and -1.0 <= p["spearman"] <= 1.0 and -1.0 <= p["kendall"] <= 1.0
    assert p["spearman"] == pytest.approx(dn.spearman(p["accuracy"], st.full_accuracy))
    assert p["speedup"] > 0 and p["images"] == 30
    assert st.best_proxy() == "random"
    # a second IPC reuses the ground truth: no architecture is trained on the full data again
    calls = []
    real_train_full = dn_study.train_full
    try:
        dn_study.train_full = lambda *a, **k: calls.append(a) or real_train_full(*a, **k)
        st2 = dn.rank_correlation_study(digits, k=5, ipc=1, methods=("random",), full_epochs=2, proxy_epochs=5,
                                        val_per_class=10, space=space, progress=False, ground_truth=st)
    finally:
        dn_study.train_full = real_train_full
    assert calls == [] and st2.full_accuracy == st.full_accuracy and st2.proxies["random"]["images"] == 10
    with pytest.raises(ConfigError, match="ground_truth"):
        dn.rank_correlation_study(digits, k=5, ipc=1, methods=("random",), full_epochs=3, proxy_epochs=5,
                                  val_per_class=10, space=space, progress=False, ground_truth=st)


def test_study_checkpoint_resumes_without_recomputing(digits, tmp_path, monkeypatch):
    """A stopped study resumes from its folder: finished ground truth, proxies and scores are not recomputed."""
    space = dn.ConvNetSpace.for_data(digits, **TINY)
    kw = dict(k=4, ipc=2, methods=("random", "dm"), full_epochs=1, proxy_epochs=3, val_per_class=10,
              steps=2, space=space, progress=False, checkpoint=tmp_path / "ck")
    first = dn.rank_correlation_study(digits, **kw)
    # simulate a stop after two candidates of the dm proxy: drop the rest of its scores
    ck = dn.StudyCheckpoint(tmp_path / "ck", json.loads((tmp_path / "ck" / "settings.json").read_text()))
    part = ck.load("scores_dm_ipc2")
    ck.save("scores_dm_ipc2", {k: v[:2] for k, v in part.items()})
    calls = {"full": 0, "distill": 0, "score": 0}
    real_full, real_distill, real_score = dn_study.train_full, da.distill, dn_study.train_and_score
    monkeypatch.setattr(dn_study, "train_full", lambda *a, **k: calls.__setitem__("full", calls["full"] + 1)
                        or real_full(*a, **k))
    monkeypatch.setattr(da, "distill", lambda *a, **k: calls.__setitem__("distill", calls["distill"] + 1)
                        or real_distill(*a, **k))
    monkeypatch.setattr(dn_study, "train_and_score", lambda *a, **k: calls.__setitem__("score", calls["score"] + 1)
                        or real_score(*a, **k))
    again = dn.rank_correlation_study(digits, **kw)
    assert calls == {"full": 0, "distill": 0, "score": 2}  # only the two dropped candidates are trained again
    assert again.full_accuracy == first.full_accuracy
    assert again.proxies["random"]["accuracy"] == first.proxies["random"]["accuracy"]
    assert again.proxies["dm"]["accuracy"] == pytest.approx(first.proxies["dm"]["accuracy"])
    with pytest.raises(ConfigError, match="other settings.*proxy_epochs"):
        dn.rank_correlation_study(digits, **{**kw, "proxy_epochs": 4})


def test_bad_input_is_refused(digits, proxy):
    with pytest.raises(ConfigError, match="val-per-class"):
        dn.holdout_split(digits, 10_000)
    with pytest.raises(ConfigError, match="Unknown NNI strategy"):
        dn.search_architecture(proxy, strategy="nope", trials=1)
    with pytest.raises(Exception, match="image shape"):
        dn.ProxyTask(proxy.summary, torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.long))


def test_spearman_ties_go_to_the_distilled_proxy(tmp_path):
    """Equal Spearman rho: the study's best proxy and the recipe's search proxy are the distilled one, whatever
    the order; the recipe's report says why."""
    from distill_apps.recipes import nas_proxy

    archs = [{"depth": d} for d in (1, 2, 3)]

    def study(ipc, proxies):
        return dn.StudyResult("digits", ipc, 3, archs, [0.5, 0.6, 0.7], [1.0] * 3,
                              proxies={n: {"spearman": r} for n, r in proxies.items()})

    tied = study(1, {"random": 0.5, "dm": 0.5})  # random first: a plain max() would pick it
    assert tied.best_proxy() == "dm"
    assert study(1, {"random": 0.5, "dm": float("nan")}).best_proxy() == "random"  # NaN still ranks last
    st, name, others = nas_proxy.choose_search_proxy([study(1, {"random": 0.8, "dm": 0.2}),
                                                      study(10, {"random": 0.5, "dm": 0.8})])
    assert (st.ipc, name) == (10, "dm") and others == ["random (IPC 1)"]  # a tie across IPCs, too
    assert dn.proxy_preference("dm", 0.8) > dn.proxy_preference("random", 0.8)
    st, name, others = nas_proxy.choose_search_proxy([study(1, {"random": 0.8, "dsa": 0.8, "dm": 0.8})])
    assert name == "dsa" and others == ["random (IPC 1)", "dm (IPC 1)"]
