"""Evaluation augmentations: the registry, DC's augmentation (per batch, per image, images only) and ``auto``."""
import importlib
import json

import pytest
import torch

import distill_apps as da
from distill_apps.cli import main
from distill_apps.errors import ConfigError
from distill_apps.eval_augment import DCAugment, EVAL_AUGMENTS, auto_augment, resolve_augment
from distill_apps.nets import build_model


def test_registry_and_unknown_names_rejected(digits, tmp_path, capsys):
    assert {"dc", "dsa", "none"} <= set(EVAL_AUGMENTS.names())
    s = da.distill("random", digits, 1, progress=False)
    with pytest.raises(ConfigError, match="auto, dc, dsa, none"):
        da.evaluate(s, digits, runs=1, epochs=1, augment="foo", model="mlp")
    path = tmp_path / "s.safetensors"
    s.save(path)
    assert main(["evaluate", str(path), "--augment", "foo", "--runs", "1", "--epochs", "1"]) == 2
    assert "auto, dc, dsa, none" in capsys.readouterr().err


def test_dc_crop_is_a_whole_pixel_shift_filled_with_the_mean():
    x = torch.arange(2 * 6 * 6, dtype=torch.float).view(2, 1, 6, 6)
    aug = DCAugment("crop", crop=2)
    p = aug.sample(x.shape, torch.Generator().manual_seed(0))
    y = aug.apply(x, p)
    for i in range(2):
        dx, dy = (int(v) for v in p.shift[i])
        shifted = torch.full((6, 6), float(x.mean()))
        src = x[i, 0, max(0, -dy):6 - max(0, dy), max(0, -dx):6 - max(0, dx)]
        shifted[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
        assert torch.allclose(y[i, 0], shifted, atol=1e-4)


def test_dc_parameters_are_drawn_per_batch_and_per_image():
    aug = DCAugment("crop_scale_rotate")
    x = torch.randn(1, 1, 28, 28).repeat(32, 1, 1, 1)  # one image, 32 times
    g = torch.Generator().manual_seed(0)
    a, b = aug(x, g), aug(x, g)
    assert a.shape == x.shape
    distinct = {tuple(a[i].flatten()[:200].round(decimals=4).tolist()) for i in range(32)}
    assert len(distinct) > 16  # each image its own op and magnitude
    assert not torch.allclose(a, b)  # the next batch gets a fresh draw
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(0)))  # reproducible from the generator
    p = aug.sample(x.shape, torch.Generator().manual_seed(1))
    assert set(p.op.tolist()) == {0, 1, 2} and p.noise is None  # crop, scale, rotate; no noise op
    n = DCAugment("noise", noise=0.001)(x, g)
    assert 0 < float((n - x).abs().max()) < 0.01


def test_dc_strategy_follows_the_reference_code(digits):
    s = da.distill("random", digits, 1, progress=False)
    conv = build_model("convnet-d2-w16", 1, 10, 8)
    a = resolve_augment("dc", s, digits, conv)
    assert (a.name, a.detail, a.transform.crop, a.default_epochs()) == ("dc", "crop_scale_rotate", 1, 1000)
    bn = resolve_augment("dc", s, digits, build_model("convnet-bn", 1, 10, 8))
    assert bn.detail == "crop_noise"
    fashion = da.RealData("fashion_mnist", digits.x_train[:20], digits.y_train[:20], digits.x_test[:20],
                          digits.y_test[:20], 10, digits.mean, digits.std)
    plain = resolve_augment("dc", s, fashion, conv)  # DC's code augments MNIST only (and BN nets)
    assert (plain.detail, plain.active, plain.default_epochs()) == ("none", False, 300)
    dsa = resolve_augment("dsa", s, digits, conv)
    assert dsa.active and "flip" not in dsa.detail and dsa.default_epochs() == 1000


def test_auto_follows_the_method(digits):
    s = da.distill("random", digits, 1, progress=False)
    assert auto_augment(s) == "none"
    for method, expected in (("dc", "dc"), ("dp-dc", "dc"), ("dsa", "dsa"), ("dcc", "dsa"), ("idc", "dsa"),
                             ("dm", "dsa"), ("mtt", "dsa"), ("herding", "none")):
        s.meta.update(method=method, eval_augment=da.METHODS.get(method).eval_augment)
        assert auto_augment(s) == expected, method
    s.meta.update(method="dc", eval_augment=None)  # written before DC declared its augmentation
    assert auto_augment(s) == "dc"


def test_evaluate_trains_on_dc_augmented_images_with_labels_untouched(digits, monkeypatch):
    ev = importlib.import_module("distill_apps.fit_summary")  # where evaluate's training calls train.fit

    s = da.distill("random", digits, 3, progress=False)
    s.meta["eval_augment"] = "dc"
    seen = {}
    real_fit = ev.fit

    def spy_fit(net, x, y, **kw):
        seen["y"], aug, calls = y.clone(), kw["augment"], []

        def counted(xb, g):
            calls.append(xb.shape)
            return aug(xb, g)

        kw["augment"] = counted
        out = real_fit(net, x, y, **kw)
        seen["calls"] = calls
        return out

    monkeypatch.setattr(ev, "fit", spy_fit)
    r = da.evaluate(s, digits, runs=1, epochs=4, model="convnet-d2-w16", batch_size=16)
    assert (r.augment, r.extra["augment_detail"], r.epochs) == ("dc", "crop_scale_rotate", 4)
    assert "augment dc (crop_scale_rotate)" in str(r)
    assert torch.equal(seen["y"].cpu(), s.y)  # the labels reach training as they are
    assert len(seen["calls"]) == 4 * 2 and all(c == (16, 1, 8, 8) for c in seen["calls"])  # every minibatch


def test_cli_states_the_augmentation(digits, tmp_path, capsys):
    s = da.distill("random", digits, 1, progress=False)
    path = tmp_path / "s.safetensors"
    s.save(path)
    assert main(["evaluate", str(path), "--model", "mlp", "--runs", "1", "--epochs", "2", "--augment", "dc",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["augment"] == "dc" and out["extra"]["augment_detail"] == "crop_scale_rotate" and out["epochs"] == 2
    assert main(["evaluate", str(path), "--model", "mlp", "--runs", "1", "--epochs", "2"]) == 0
    assert "augment none" in capsys.readouterr().out
