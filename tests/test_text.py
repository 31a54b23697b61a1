"""Text distillation (synthetic embedding sequences + learnable soft labels) on an SST-2 slice."""
from __future__ import annotations

import pytest
import torch

import distill_apps as da
from distill_apps.engine import METHODS
from distill_apps.errors import DataError
from distill_apps.modalities import text as T
from distill_apps.runtime import generator


@pytest.fixture(scope="module")
def sst2(data_root):
    if not (data_root / "text" / "SST-2" / "train.tsv").is_file():
        pytest.skip("SST-2 is not in the data root")
    return T.load_sst2(data_root, train_limit=2000, max_len=16, dim=16, embedding="random")


def _distiller(sst2, **cfg):
    cls = METHODS.get("text")
    return cls(sst2, 2, cls.Config(inner_steps=3, batch_real=64, channels=8, **cfg), torch.device("cpu"))


def test_vocabulary_and_table_come_from_the_training_split(sst2):
    assert sst2.train_ids.shape == (2000, 16) and sst2.dev_ids.shape == (872, 16)
    assert sst2.vocab[:2] == ["<pad>", "<unk>"] and sst2.embedding.shape == (len(sst2.vocab), 16)
    assert (sst2.dev_ids == T.UNK).any()  # dev words unseen in the 2000-sentence slice map to <unk>
    assert torch.equal(sst2.embedding[T.PAD], torch.zeros(16))


def test_soft_labels_receive_gradient_through_the_unroll(sst2):
    d = _distiller(sst2)
    state = d.init(generator("i", 0))
    soft0, x0 = state.params["soft"].detach().clone(), state.params["x"].detach().clone()
    d.step(state, generator("s", 0))
    assert state.params["soft"].grad is not None and state.params["soft"].grad.abs().sum() > 0
    assert not torch.equal(state.params["soft"], soft0) and not torch.equal(state.params["x"], x0)
    frozen = _distiller(sst2, learn_labels=False)
    st2 = frozen.init(generator("i", 0))
    frozen.step(st2, generator("s", 0))
    assert torch.equal(st2.params["soft"], soft0)  # same init, labels fixed when not learned


def test_text_summary_round_trip_and_evaluation(sst2, tmp_path):
    s = da.distill("text", sst2, 2, steps=2, config={"inner_steps": 3, "batch_real": 64, "channels": 8},
                   device="cpu", progress=False)
    assert s.x.shape == (4, 16, 16) and s.soft.shape == (4, 2) and s.y.tolist() == [0, 0, 1, 1]
    back = T.TextSummary.load(s.save(tmp_path / "sst2.safetensors"))
    assert torch.equal(back.x, s.x) and torch.equal(back.soft, s.soft) and back.lr == s.lr
    res = T.evaluate_text(back, sst2, runs=1)
    assert 0.0 <= res.accuracy_mean <= 1.0 and res.extra["sentences"] == 4 and res.epochs == 3  # inner steps


def test_empty_sentence_file_is_refused(tmp_path):
    f = tmp_path / "train.tsv"
    f.write_text("sentence\tlabel\n")
    with pytest.raises(T.EmptyTextError, match="no labelled sentences"):
        T.read_tsv(f)
    f.write_text("")
    with pytest.raises(T.EmptyTextError):
        T.load_sst2(train_path=f, dev_path=f)
    assert issubclass(T.EmptyTextError, DataError)
