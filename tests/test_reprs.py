"""Every public object prints as one short line (``print(real)``, ``print(summary)``, results, adapters): never a
tensor's values. Objects are built with tensors large enough that a default dataclass repr would dump them."""
from __future__ import annotations

import pytest
import torch

import distill_apps as da
from distill_apps.engine import METHODS

LIMIT = 200


def check(obj, *words):
    r = repr(obj)
    assert "\n" not in r and len(r) <= LIMIT and "tensor(" not in r, r
    assert r.startswith(type(obj).__name__ + "("), r
    for w in words:
        assert w in r, (w, r)
    return r


@pytest.fixture(scope="module")
def summary(digits):
    return da.distill("random", digits, 10, progress=False)


def test_real_data_and_its_view(digits):
    check(digits, "digits")
    check(digits.view("train"), "digits", "train", f"{digits.size('train')}x1x8x8")


def test_synthetic_set(summary):
    r = check(summary, "random", "digits", "10 classes x 10 ipc", "1x8x8", "hard labels", "KB")
    assert str(summary) == r  # print(summary) shows the same line
    soft = da.SyntheticSet(torch.randn(40, 3, 32, 32), torch.arange(4).repeat(10), 4, (3, 32, 32),
                           soft=torch.randn(40, 4), label_kind="logits", lr=0.02, meta={"method": "sre2l"})
    check(soft, "sre2l", "unknown data", "logits labels", "learned lr 0.02", "3x32x32", "KB")


def test_private_summary_and_privacy():
    meta = {"method": "dp-dm", "dataset": "digits", "ipc": 2, "steps": 3,
            "privacy": {"epsilon": 1.5, "delta": 1e-5, "accountant": "rdp", "target_epsilon": 2.0}}
    s = da.SyntheticSet(torch.randn(20, 1, 8, 8), torch.arange(10).repeat(2), 10, (1, 8, 8), meta=meta)
    check(s, "dp-dm", "(1.5, 1e-05)-DP", "3 steps")
    check(s.privacy, "(1.5, 1e-05)-DP", "rdp")


def test_every_method_config_is_one_line_without_tensors():
    for name in METHODS.names():
        r = repr(METHODS.get(name).Config())
        assert "\n" not in r and "tensor(" not in r, (name, r)


def test_eval_and_cross_arch_results():
    runs = [0.9 + 0.001 * i for i in range(200)]  # a long per-run list stays out of the repr
    res = da.EvalResult(0.95, 0.01, runs, 200, "convnet", "digits", "train", 300, "dsa", 0.01, 12.5,
                        extra={"per_run": torch.randn(200, 10)})
    check(res, "digits", "95.00", "convnet", "200 runs", "12.5 s")
    table = da.CrossArchResult("digits", "dm", 10, ["convnet", "mlp"], {"convnet": res, "mlp": res},
                               baseline={"convnet": res, "mlp": res})
    check(table, "dm", "digits", "ipc 10", "convnet 95.0/95.0")


def test_teacher_and_distill_state():
    net = da.build_model("convnet-d1-w16", 1, 10, 8)
    meta = {"model": "convnet-d1-w16", "dataset": "digits", "seed": 0, "train": {"epochs": 2},
            "test_accuracy": 0.93}
    check(da.Teacher(net, meta, "ab" * 32, cached=True), "convnet-d1-w16 on digits", "93.00 %", "cached")
    state = da.DistillState(params={"x": torch.randn(100, 1, 8, 8)}, buffers={"y": torch.arange(100)}, step=7)
    check(state, "step 7", "x 100x1x8x8", "KB")


def test_zca_and_privacy_budget():
    from distill_apps.data.transforms import ZCA
    from distill_apps.privacy import PrivacyBudget

    check(ZCA(0.1, torch.zeros(64), torch.eye(64), torch.eye(64)), "reg 0.1", "64 dimensions")
    b = PrivacyBudget(2.0, 1e-5)
    b.spend(1.0, 0.01, 50)
    check(b, "(2, 1e-05)", "50 releases", "spent")


def test_graph_summaries_and_data():
    from distill_apps.modalities.graph import CondensedGraph, GraphData
    from distill_apps.modalities.graph_classification import GraphDataset, GraphSet

    n = 30
    cg = CondensedGraph(torch.rand(n, 50), torch.rand(n, n), torch.arange(3).repeat(10), 3,
                        meta={"method": "gcond", "dataset": "cora", "steps": 5})
    check(cg, "gcond", "cora", "30 nodes", "50 features", "3 classes", "5 steps")
    g = GraphData("cora", torch.rand(100, 50), torch.eye(100).to_sparse(), torch.arange(4).repeat(25),
                  torch.arange(20), torch.arange(20, 40), torch.arange(40, 100), 4)
    check(g, "cora", "100 nodes", "50 features", "20/20/60 train/val/test")
    gs = GraphSet(torch.rand(12, 9, 7), torch.ones(12, 9, 9), torch.ones(12, 9, dtype=torch.bool),
                  torch.arange(2).repeat(6), 2, "toy")
    check(gs, "toy", "12 graphs", "7 features")
    syn = GraphSet(gs.x, gs.adj, gs.mask, gs.y, 2, meta={"method": "doscond-gc", "dataset": "mutag"})
    check(syn, "doscond-gc", "mutag")
    check(GraphDataset("toy", gs, gs.subset(torch.arange(2)), gs.subset(torch.arange(3))), "12/2/3", "2 classes")


def test_interactions_and_text():
    from distill_apps.modalities.recsys import SyntheticInteractions, interactions_from_pairs
    from distill_apps.modalities.text import TextData, TextSummary

    users, items = torch.randint(0, 50, (400,)), torch.randint(0, 80, (400,))
    check(interactions_from_pairs(users, items, name="toy"), "toy", "users x", "items", "test interactions")
    check(SyntheticInteractions(torch.rand(20, 80), meta={"method": "distill_cf", "dataset": "ml-100k"}),
          "distill_cf", "ml-100k", "20 users", "80 items")
    td = TextData("sst2", ["<pad>", "<unk>"] + [f"w{i}" for i in range(98)], torch.randn(100, 16),
                  torch.randint(0, 100, (60, 12)), torch.arange(2).repeat(30), torch.randint(0, 100, (10, 12)),
                  torch.arange(2).repeat(5))
    check(td, "sst2", "60/10 train/dev", "vocabulary 100", "16-d")
    check(TextSummary(torch.randn(20, 12, 16), torch.randn(20, 2), torch.arange(2).repeat(10), 0.1,
                      meta={"method": "text", "dataset": "sst2"}), "text", "sst2", "20 sentences")


def test_avalanche_buffer_and_plugin():
    pytest.importorskip("avalanche")
    from distill_apps.integrations.avalanche import DistilledBuffer, DistilledReplayPlugin

    buf = DistilledBuffer(100, "dm", steps=1)
    buf._x = torch.randn(100, 1, 8, 8)  # what a filled memory holds
    check(buf, "dm", "max 100", "100 images", "hard labels")
    check(DistilledReplayPlugin(100, buf), "mem_size 100", "DistilledBuffer(dm")


def test_nni_objects(summary, digits):
    pytest.importorskip("nni")
    from distill_apps.integrations import nni as dn

    task = dn.ProxyTask(summary, digits.x_test[:50], digits.y_test[:50], epochs=3)
    check(task, "random 100 images", "50 validation images", "3 epochs")
    archs = [{"depth": d} for d in range(40)]
    study = dn.StudyResult("digits", 10, 3, archs, [0.5] * 40, [1.0] * 40, proxies={"dm": {"spearman": 0.8}})
    check(study, "digits", "40 architectures", "dm rho 0.80")
    res = dn.SearchResult({"depth": 2}, 0.9, [{"sample": {"depth": d}, "accuracy": 0.5} for d in range(50)],
                          "evolution", 12.0, "/tmp/x")
    check(res, "evolution", "50 trials", "90.00 %")


def test_flower_config():
    pytest.importorskip("flwr")
    from distill_apps.integrations.flower import FederatedConfig

    cfg = FederatedConfig(num_clients=5, method_config={"lr_img": 0.5}, dp=True)
    check(cfg, "dm ipc 10 on digits", "5 clients dirichlet alpha 0.5", "3 rounds", "dp epsilon 1")


def test_registries():
    check(da.METHODS, f"{len(da.METHODS.names())} methods", "cafe, dc")  # cut to one line when long
