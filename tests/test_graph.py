"""Graph condensation (GCond, GCond-X, DosCond, GCDM) on the real Cora graph."""
from __future__ import annotations

import pytest
import torch

import distill_apps as da
from distill_apps.engine import make_distiller
from distill_apps.errors import ConfigError, SummaryFormatError
from distill_apps.modalities import graph as G
from distill_apps.runtime import generator


@pytest.fixture(scope="module")
def cora(data_root, tmp_path_factory):
    if not (data_root / "planetoid" / "Cora" / "raw").is_dir():
        pytest.skip("Planetoid Cora raw files are not in the data root")
    return G.load_planetoid("cora", data_root, cache_dir=tmp_path_factory.mktemp("cache"))


def test_cora_loads_public_split(cora):
    assert (cora.num_nodes, cora.num_features, cora.num_classes) == (2708, 1433, 7)
    assert (len(cora.train_idx), len(cora.test_idx)) == (140, 1000)
    assert G.class_budget(cora, 0.25) == [5] * 7  # 35 nodes = 1.3 % of Cora, GCond's smallest ratio


def test_unknown_graph_dataset_is_refused(data_root, tmp_path):
    with pytest.raises(ConfigError, match="Known graph datasets: citeseer, cora"):
        G.load_planetoid("pubmedx", data_root, cache_dir=tmp_path)


def test_gcond_adjacency_is_a_function_of_features_and_gets_gradient(cora):
    d = make_distiller("gcond", cora, 5, config={"outer_loop": 1, "inner_loop": 0}, device="cpu")
    state = d.init(generator("t", 0))
    x = state.params["x"]
    a1 = d.syn_adj(state, generator("a"), x)
    a2 = d.syn_adj(state, generator("a"), x + 0.01 * torch.randn(x.shape, generator=generator("n")))
    assert a1.shape == (35, 35) and torch.allclose(a1, a1.T) and not torch.allclose(a1, a2)
    loss = d.match_loss(d.new_gcn(generator("net")), state, x, G.normalize_dense(a1))
    loss.backward()
    pge = state.modules["pge"]
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in pge.parameters()) and pge.first_j.weight.grad.abs().sum() > 0


def test_gcond_alternates_structure_and_feature_updates(cora):
    d = make_distiller("gcond", cora, 5, config={"outer_loop": 2, "inner_loop": 2, "alt_cycle": 2, "adj_every": 1,
                                                 "lr_feat": 0.01, "lr_adj": 0.01}, device="cpu")
    state = d.init(generator("t", 0))
    x0, w0 = state.params["x"].detach().clone(), state.modules["pge"].first_i.weight.detach().clone()
    m = d.step(state, generator("s", 0))  # step 0: structure only
    assert (m["matches"], m["inner_steps"], m["updated"]) == (2, 2, 1)
    assert torch.equal(state.params["x"], x0) and not torch.equal(state.modules["pge"].first_i.weight, w0)
    state.step = 1
    w1 = state.modules["pge"].first_i.weight.detach().clone()
    assert d.step(state, generator("s", 1))["updated"] == 0  # step 1: features only
    assert not torch.equal(state.params["x"], x0) and torch.equal(state.modules["pge"].first_i.weight, w1)


def test_doscond_uses_one_step_matching_and_updates_features_and_structure_together(cora):
    d = make_distiller("doscond", cora, 5, device="cpu")
    state = d.init(generator("t", 0))
    x0 = state.params["x"].detach().clone()
    w0 = state.modules["pge"].first_i.weight.detach().clone()
    m = d.step(state, generator("s", 0))
    assert (m["matches"], m["inner_steps"], m["updated"]) == (1, 0, 2)  # one match at the initialisation
    assert not torch.equal(state.params["x"], x0) and not torch.equal(state.modules["pge"].first_i.weight, w0)
    adj = d.syn_adj(state, generator("a"), state.params["x"])
    assert adj.requires_grad and not torch.allclose(adj, adj.round())  # GCond's continuous PGE weights
    kept = adj.detach() >= d.cfg.threshold
    assert torch.equal(d.export(state).adj, torch.where(kept, adj.detach(), torch.zeros_like(adj)))


def test_doscond_discrete_structure_is_a_straight_through_bernoulli_sample(cora):
    d = make_distiller("doscond", cora, 5, config={"structure": "bernoulli"}, device="cpu")
    state = d.init(generator("t", 0))
    d.step(state, generator("s", 0))
    adj = d.syn_adj(state, generator("a"), state.params["x"])
    assert torch.allclose(adj, adj.round()) and adj.requires_grad  # a hard 0/1 sample with an ST gradient
    cg = d.export(state)
    assert set(cg.adj.unique().tolist()) <= {0.0, 1.0} and torch.equal(cg.adj, cg.adj.T)
    with pytest.raises(ConfigError, match="structure"):
        make_distiller("doscond", cora, 5, config={"structure": "dense"}, device="cpu")


def test_ipc_is_nodes_per_class_and_reduction_is_gcond_ratio(cora):
    per_class = make_distiller("gcdm", cora, 3, device="cpu")
    ratio = make_distiller("gcdm", cora, 3, config={"reduction": 0.25}, device="cpu")
    assert per_class.budget == [3] * 7 and ratio.budget == G.class_budget(cora, 0.25) == [5] * 7
    with pytest.raises(ConfigError, match="condensed nodes per class"):
        make_distiller("gcdm", cora, 0, device="cpu")


def test_gcondx_has_identity_structure_and_gcdm_resumes_exactly(cora, tmp_path):
    cg = da.distill("gcond-x", cora, 5, steps=1, config={"outer_loop": 1, "inner_loop": 0}, device="cpu",
                    progress=False)
    assert cg.adj.abs().sum() == 0 and torch.allclose(G.normalize_dense(cg.adj), torch.eye(len(cg)))
    straight = da.distill("gcdm", cora, 5, steps=4, device="cpu", progress=False)
    ck = tmp_path / "gcdm.ckpt"
    da.distill("gcdm", cora, 5, steps=2, checkpoint=str(ck), checkpoint_every=2, device="cpu", progress=False)
    resumed = da.distill("gcdm", cora, 5, steps=4, checkpoint=str(ck), checkpoint_every=2, resume=True, device="cpu",
                         progress=False)
    assert torch.equal(straight.x, resumed.x) and torch.equal(straight.adj, resumed.adj)


def test_condensed_graph_round_trip_and_evaluation(cora, tmp_path):
    cg = da.distill("gcdm", cora, 5, steps=2, device="cpu", progress=False)
    path = cg.save(tmp_path / "cora.safetensors")
    back = G.CondensedGraph.load(path)
    assert torch.equal(back.x, cg.x) and torch.equal(back.adj, cg.adj) and torch.equal(back.y, cg.y)
    assert back.meta["method"] == "gcdm" and back.meta["reduction_ratio"] == pytest.approx(35 / 2708)
    res = G.evaluate_graph(back, cora, runs=2, epochs=30)
    assert len(res.accuracies) == 2 and 0.0 <= res.accuracy_mean <= 1.0 and res.extra["nodes"] == 35
    assert da.evaluate(back, cora, runs=2, epochs=30, device="cpu").accuracies == res.accuracies  # same protocol
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(SummaryFormatError):
        G.CondensedGraph.load(path)
