"""DosCond for graph classification: TU-format loading through torch_geometric, one-step matching with a learned
discrete structure, safe save/load, and evaluation on real test graphs."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")

import distill_apps as da  # noqa: E402
from distill_apps.errors import ConfigError, DataError, SummaryFormatError  # noqa: E402
from distill_apps.modalities import graph_classification as gc  # noqa: E402

NAME = "TOYRINGSTAR"  # written by the tu_root fixture (conftest.py)


@pytest.fixture(scope="module")
def toy(tu_root, tmp_path_factory):
    return gc.load_tudataset(NAME, tu_root, cache_dir=tmp_path_factory.mktemp("cache"))


def test_tu_loader_pads_splits_and_builds_degree_features(toy):
    n_all = len(toy.train) + len(toy.val) + len(toy.test)
    assert n_all == 80 and toy.num_classes == 2
    assert [len(ix) for ix in toy.train.by_class()] == [32, 32]  # stratified 80 %
    tr = toy.train
    assert tr.x.shape[1] == 12 and bool((tr.adj == tr.adj.transpose(1, 2)).all())
    # no node features in the files: one-hot degree, and a ring's nodes all have degree 2
    ring = int(torch.nonzero(tr.y == 0)[0])
    deg = tr.x[ring][tr.mask[ring]].argmax(1)
    assert bool((deg == 2).all()) and bool((tr.adj[ring].sum(1)[tr.mask[ring]] == 2).all())


def test_missing_files_and_wrong_method_are_clear(tmp_path, toy):
    with pytest.raises(DataError) as err:
        gc.load_tudataset("MUTAG", tmp_path)
    assert "MUTAG_A.txt" in str(err.value) and str(tmp_path / "tudataset" / "MUTAG" / "raw") in str(err.value)
    with pytest.raises(ConfigError, match="is a graph-classification dataset. Graph datasets: citeseer, cora"):
        da.distill("gcond", toy, 1, steps=1, progress=False)
    with pytest.raises(ConfigError, match="more than class"):
        da.distill("doscond-gc", toy, 33, steps=1, progress=False)


def test_doscond_gc_matches_once_per_step_and_learns_structure(toy):
    from distill_apps.engine import make_distiller
    from distill_apps.runtime import generator

    d = make_distiller("doscond-gc", toy, 2, config={"batch_real": 16}, device="cpu", model="gcn")
    state = d.init(generator("init", 0))
    omega0, x0 = state.params["omega"].detach().clone(), state.params["x"].detach().clone()
    calls = []
    orig = d.new_gnn
    d.new_gnn = lambda g: calls.append(1) or orig(g)
    opt_steps = []
    for t in range(3):
        state.step = t
        before = state.params["omega"].detach().clone()
        d.step(state, generator("step", 0, t))
        opt_steps.append(not torch.equal(before, state.params["omega"]))
        state.step = t + 1
    # one fresh GNN and one gradient match per step: nothing trains the GNN in between
    assert len(calls) == 3 and state.info["matches"] == 3 and all(opt_steps)
    assert not torch.equal(omega0, state.params["omega"]) and not torch.equal(x0, state.params["x"])
    assert state.params["x"].shape == (4, d.n, toy.num_features) and d.n == 9  # the mean real graph size


def test_condensed_graphs_round_trip_and_train_a_classifier(toy, tmp_path):
    s = da.distill("doscond-gc", toy, 2, steps=10, config={"batch_real": 16}, device="cpu", progress=False)
    assert len(s) == 4 and s.y.tolist() == [0, 0, 1, 1] and set(s.adj.unique().tolist()) <= {0.0, 1.0}
    path = s.save(tmp_path / "graphs.safetensors")
    back = gc.GraphSet.load(path)
    assert torch.equal(back.x, s.x) and torch.equal(back.adj, s.adj) and back.meta["method"] == "doscond-gc"
    from distill_apps import safe_io

    safe_io.write(tmp_path / "other.safetensors", {"x": torch.zeros(1)}, {}, "condensed_graph", 1)
    with pytest.raises(SummaryFormatError):
        gc.GraphSet.load(tmp_path / "other.safetensors")
    res = gc.evaluate_graph_classification(s, toy, runs=2, epochs=100)
    assert res.accuracy_mean >= 0.9  # rings vs stars from 2 condensed graphs per class
    rnd = gc.random_graphs(toy, 2)
    assert len(rnd) == 4 and rnd.meta["method"] == "random"
