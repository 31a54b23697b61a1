import pytest
import torch

import distill_apps as da
from distill_apps.errors import DataError
from distill_apps.train import fit


def test_lr_decays_tenfold_at_half():
    net = torch.nn.Linear(4, 2)
    lrs = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    opt = Spy(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    fit(net, torch.randn(8, 4), torch.randint(0, 2, (8,)), epochs=10, batch_size=8, optimizer=opt)
    assert lrs[:5] == [0.01] * 5 and all(abs(v - 0.001) < 1e-12 for v in lrs[5:]) and len(lrs) == 10


def test_protocol_defaults_and_learned_lr(digits):
    s = da.distill("random", digits, 2, progress=False)
    r = da.evaluate(s, digits, runs=2, epochs=3, model="convnet-d2-w16")
    assert r.runs == 2 and len(r.accuracies) == 2 and r.protocol == "train" and r.epochs == 3 and r.lr == 0.01
    s.meta["eval_augment"] = "dsa"
    s.lr = 0.05
    r2 = da.evaluate(s, digits, runs=1, epochs=2, model="convnet-d2-w16")
    assert r2.augment == "dsa" and r2.lr == 0.05
    from distill_apps.eval_augment import resolve_augment

    net = da.build_model("convnet-d2-w16", 1, 10, 8)
    assert resolve_augment("auto", s, digits, net).default_epochs() == 1000  # DSA: 1000 epochs when augmenting
    s.meta.update(eval_augment=None, method="random")
    assert resolve_augment("auto", s, digits, net).default_epochs() == 300


def test_training_on_summary_beats_chance(digits):
    s = da.distill("random", digits, 10, progress=False)
    r = da.evaluate(s, digits, runs=1, epochs=60, model="convnet-d2-w32")
    assert r.accuracy_mean > 0.5


def test_mismatched_dataset_refused(digits, data_root):
    s = da.distill("random", digits, 1, progress=False)
    with pytest.raises(DataError, match="distilled from"):
        da.evaluate(s, "mnist", data_root=str(data_root), runs=1, epochs=1)
