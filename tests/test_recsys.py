"""Distill-CF and the closed-form infinite-width autoencoder on MovieLens-100K."""
from __future__ import annotations

import math

import pytest
import torch

from distill_apps.engine import METHODS
from distill_apps.errors import DataError, SummaryFormatError
from distill_apps.modalities import recsys as R
from distill_apps.runtime import generator


@pytest.fixture(scope="module")
def ml100k(data_root):
    if not (data_root / "movielens" / "ml-100k" / "u.data").is_file():
        pytest.skip("MovieLens-100K is not in the data root")
    return R.load_movielens(data_root)


def test_movielens_split_is_disjoint_and_complete(ml100k):
    assert (ml100k.num_users, ml100k.num_items) == (943, 1682)
    assert float(ml100k.train.sum() + ml100k.test.sum()) == 100000
    assert float((ml100k.train * ml100k.test).sum()) == 0


def test_infinite_ae_closed_form_solves_its_linear_system():
    x = (torch.rand(30, 50, generator=generator("x")) < 0.2).double()
    alpha = R.infinite_ae_fit(x, reg=0.5)
    k = R.relu_ntk(x, x)
    assert torch.allclose(k, k.T) and torch.linalg.eigvalsh(k).min() > -1e-8  # a valid (PSD) kernel
    system = k + 0.5 * k.diagonal().mean() * torch.eye(30, dtype=k.dtype)
    assert torch.allclose(alpha, torch.linalg.solve(system, x), atol=1e-8)
    assert torch.allclose(R.infinite_ae_scores(x, x, alpha), k @ alpha)


def test_ranking_metrics_on_a_known_case():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7, 0.0]])
    train = torch.tensor([[1.0, 0, 0, 0, 0]])
    test = torch.tensor([[0, 0, 0, 1.0, 1.0]])
    m = R.ranking_metrics(scores, train, test, k=2)  # top-2 after masking item 0: items 1, 3 -> one hit at rank 2
    assert m["hr@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_distill_cf_learns_logits_through_the_closed_form_and_round_trips(ml100k, tmp_path):
    cls = METHODS.get("distill_cf")
    d = cls(ml100k, 8, cls.Config(gamma=10, batch_users=128), torch.device("cpu"))
    state = d.init(generator("i", 0))
    before = state.params["logits"].detach().clone()
    m = d.step(state, generator("s", 0))
    assert math.isfinite(m["loss"]) and not torch.equal(before, state.params["logits"])
    s = d.export(state)
    assert s.matrix.shape == (8, 1682) and 0 <= float(s.matrix.min()) and float(s.matrix.max()) <= 1
    back = R.SyntheticInteractions.load(s.save(tmp_path / "cf.safetensors"))
    assert torch.equal(back.matrix, s.matrix) and back.meta["method"] == "distill_cf"
    res = R.evaluate_interactions(back, ml100k)
    assert res.metric == "ndcg@10" and 0 < res.accuracy_mean <= 1 and res.extra["support_users"] == 8
    with pytest.raises(SummaryFormatError):
        from distill_apps.modalities.text import TextSummary
        TextSummary.load(tmp_path / "cf.safetensors")  # another kind of file


def test_empty_interactions_are_refused(tmp_path):
    with pytest.raises(R.EmptyInteractionsError, match="empty"):
        R.interactions_from_pairs(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    empty = tmp_path / "u.data"
    empty.write_text("\n")
    with pytest.raises(R.EmptyInteractionsError):
        R.load_movielens(path=empty)
    with pytest.raises(R.EmptyInteractionsError):
        R.infinite_ae_fit(torch.zeros(3, 5))
    assert issubclass(R.EmptyInteractionsError, DataError)
