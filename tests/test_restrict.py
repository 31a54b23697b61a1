"""The one way to restrict data to some classes and to map a summary back: ``RealData.restrict`` keeps the real
images of every split, ``SyntheticSet.relabel`` fills absent classes' soft labels with one documented value."""
from __future__ import annotations

import pytest
import torch

import distill_apps as da
from distill_apps.errors import ConfigError, DataError


def test_real_data_restrict_keeps_real_splits_renumbered(digits):
    sub = digits.restrict([7, 2])
    assert sub.num_classes == 2 and sub.name == "digits[7,2]" and sub.class_names == ["7", "2"]
    for x, y, xs, ys in ((digits.x_train, digits.y_train, sub.x_train, sub.y_train),
                         (digits.x_test, digits.y_test, sub.x_test, sub.y_test)):
        # exactly the real images of classes 7 and 2, class 7 now 0 and class 2 now 1, in the original order
        assert torch.equal(xs, x[(y == 7) | (y == 2)])
        assert torch.equal(ys, torch.where(y[(y == 7) | (y == 2)] == 7, 0, 1))
    assert len(sub.x_test) == int(((digits.y_test == 7) | (digits.y_test == 2)).sum()) > 1  # a real test split
    with pytest.raises(ConfigError, match="distinct class ids"):
        digits.restrict([3, 3])
    with pytest.raises(ConfigError, match="distinct class ids"):
        digits.restrict([10])


def test_multilabel_restrict_keeps_the_label_columns():
    x = torch.randn(6, 1, 4, 4)
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 1]])
    real = da.RealData("ml", x, y, x, y, 3, (0.0,), (1.0,), task="multilabel")
    sub = real.restrict([2, 0])
    rows = torch.tensor([0, 2, 3, 5])  # positive for label 2 or label 0
    assert torch.equal(sub.x_train, x[rows]) and torch.equal(sub.y_train, y[rows][:, [2, 0]])
    assert sub.multilabel and sub.num_classes == 2


def test_summary_relabel_and_restrict_share_one_absent_fill(digits):
    sub = digits.restrict([4, 9])
    s = da.distill("random", sub, 2, progress=False)
    soft = torch.randn(len(s.y), 2)
    logits = da.SyntheticSet(x=s.x, y=s.y, num_classes=2, image_shape=s.image_shape, soft=soft, label_kind="logits",
                             meta={"dataset": sub.name})
    back = logits.relabel([4, 9], 10, dataset="digits")
    assert back.num_classes == 10 and back.meta["dataset"] == "digits"
    assert torch.equal(back.y, torch.tensor([4, 9])[s.y])
    assert torch.equal(back.soft[:, [4, 9]], soft)
    others = [c for c in range(10) if c not in (4, 9)]
    fill = da.SyntheticSet.absent_value("logits")
    assert fill == -1e4 and (back.soft[:, others] == fill).all()
    assert torch.softmax(back.soft, 1)[:, others].max() == 0  # no probability on absent classes, yet finite
    again = back.restrict([4, 9])  # restrict is relabel's inverse on the classes kept
    assert torch.equal(again.y, s.y) and torch.equal(again.soft, soft) and torch.equal(again.x, s.x)
    multi = da.SyntheticSet(x=s.x, y=s.y, num_classes=2, image_shape=s.image_shape, soft=soft.sigmoid(),
                            label_kind="multilabel").relabel([4, 9], 10)
    assert (multi.soft[:, others] == da.SyntheticSet.absent_value("multilabel")).all()
    with pytest.raises(DataError, match="one new id for each"):
        logits.relabel([4], 10)
    with pytest.raises(DataError, match="distinct class ids"):
        logits.relabel([4, 4], 10)
