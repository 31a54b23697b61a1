import os

import pytest
import torch

import distill_apps as da
from distill_apps.data import dirichlet_partition, iid_partition, class_incremental_order
from distill_apps.data.real import RealData
from distill_apps.errors import ConfigError, DataError


def test_digits_fixed_stratified_split(digits):
    assert digits.x_train.shape == (1347, 1, 8, 8) and digits.x_test.shape == (450, 1, 8, 8)
    test = torch.bincount(digits.y_test, minlength=10)
    total = test + torch.bincount(digits.y_train, minlength=10)
    assert ((test - 0.25 * total).abs() <= 1).all()  # stratified: each class keeps its share
    again = da.load_dataset("digits")
    assert torch.equal(again.x_train, digits.x_train)
    assert abs(float(digits.x_train.mean())) < 1e-4  # normalised with train statistics


def test_mnist_and_fashion_from_data_root(data_root):
    for name in ("mnist", "fashion_mnist"):
        r = da.load_dataset(name, data_root)
        assert r.x_train.shape == (60000, 1, 28, 28) and r.x_test.shape == (10000, 1, 28, 28)
        assert r.class_counts() == torch.bincount(r.y_train).tolist()


def test_missing_dataset_names_path_and_fix(tmp_path):
    with pytest.raises(DataError) as e:
        da.load_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte" in msg and "--data-root" in msg


def test_unknown_dataset_lists_known():
    with pytest.raises(ConfigError, match="digits"):
        da.load_dataset("imagenet-9000")


def test_data_root_from_environment(monkeypatch, tmp_path):
    from distill_apps.data import data_root

    monkeypatch.setenv("DISTILL_APPS_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert data_root("/x") == os.path.abspath("/x") or str(data_root("/x")) == "/x"


def test_ipc_checks(digits):
    with pytest.raises(ConfigError, match="positive"):
        digits.check_ipc(0)
    with pytest.raises(ConfigError, match="only"):
        digits.check_ipc(10_000)
    digits.check_ipc(50)


def test_nan_in_data_refused():
    x = torch.zeros(4, 1, 2, 2)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        RealData("bad", x, torch.zeros(4, dtype=torch.long), x.clone().nan_to_num(), torch.zeros(4, dtype=torch.long),
                 1, (0.0,), (1.0,))


def test_balanced_sampling_per_class(digits):
    g = torch.Generator().manual_seed(0)
    idx = digits.sample_balanced(5, g)
    assert torch.equal(digits.y_train[idx], torch.arange(10).repeat_interleave(5))


def test_partitions_seeded_and_skewed(digits):
    a = dirichlet_partition(digits.y_train, 5, alpha=0.1, seed=1)
    b = dirichlet_partition(digits.y_train, 5, alpha=0.1, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sorted(torch.cat(a).tolist()) == list(range(len(digits.y_train)))
    # strong skew: some client's dominant class holds most of its data
    top = max(torch.bincount(digits.y_train[p]).max().item() / len(p) for p in a)
    assert top > 0.5
    iid = iid_partition(100, 3, seed=0)
    assert sum(len(p) for p in iid) == 100
    order = class_incremental_order(10, 5, seed=0)
    assert sorted(sum(order, [])) == list(range(10)) and order == class_incremental_order(10, 5, seed=0)
