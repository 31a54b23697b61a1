"""Teachers, SRe2L, RDED and the soft-label protocol: each test checks the defining mechanism on digits."""
import json
import os
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import distill_apps as da
from distill_apps.errors import ConfigError, DataError, SummaryFormatError
from distill_apps.methods.rded import pad_to
from distill_apps.methods.sre2l import bn_matching_loss, bn_statistics
from distill_apps.teachers import load_teacher, save_teacher, train_teacher

TINY = "convnet-d2-w16-bn"


@pytest.fixture(scope="module")
def teacher(digits, tmp_path_factory):
    return train_teacher(digits, TINY, epochs=30, cache_dir=tmp_path_factory.mktemp("teachers"), progress=False)


def test_teacher_is_cached_and_reloaded(digits, teacher):
    assert teacher.path.is_file() and not teacher.cached and teacher.test_accuracy > 0.8
    again = train_teacher(digits, TINY, epochs=30, cache_dir=teacher.path.parent, progress=False)
    assert again.cached and again.sha256 == teacher.sha256 and again.test_accuracy == teacher.test_accuracy
    other_seed = train_teacher(digits, TINY, epochs=1, seed=1, cache_dir=teacher.path.parent, progress=False)
    assert other_seed.path != teacher.path  # the key holds seed and training settings
    loaded = load_teacher(teacher.path, digits)
    x = digits.x_test[:50]
    assert torch.equal(loaded.logits(x), teacher.logits(x))
    m = loaded.meta
    assert m["dataset"] == "digits" and m["model"] == TINY and m["seed"] == 0 and m["train"]["epochs"] == 30
    assert loaded.sha256 == teacher.sha256 and len(loaded.sha256) == 64


def test_teacher_for_another_dataset_or_shape_refused(digits, teacher):
    big = lambda x: F.interpolate(x, size=(16, 16))  # noqa: E731  (another image shape)
    larger = digits._replace(name="digits16", x_train=big(digits.x_train), x_test=big(digits.x_test))
    with pytest.raises(DataError, match="trained on 'digits'"):
        load_teacher(teacher.path, larger)
    renamed = digits.subset(torch.arange(len(digits.y_train)), name="other_digits")
    with pytest.raises(DataError, match="another dataset"):
        load_teacher(teacher.path, renamed)


def test_methods_refuse_a_teacher_of_another_shape(digits, tmp_path, capsys):
    from distill_apps.cli import main

    big = lambda x: F.interpolate(x, size=(16, 16))  # noqa: E731
    larger = digits._replace(name="digits16", x_train=big(digits.x_train), x_test=big(digits.x_test))
    other = train_teacher(larger, TINY, epochs=1, cache_dir=tmp_path, progress=False)
    for method in ("sre2l", "rded"):
        assert main(["distill", "--method", method, "--ipc", "1", "--steps", "1", "--no-eval",
                     "--set", f"teacher={other.path}", "--out", str(tmp_path / f"{method}.safetensors")]) == 2
        err = capsys.readouterr().err
        assert "trained on 'digits16'" in err and "distill-apps teacher --dataset digits" in err
        assert not (tmp_path / f"{method}.safetensors").exists()


def test_foreign_or_corrupt_teacher_file_refused(digits, teacher, tmp_path):
    summary = da.distill("random", digits, 1, progress=False)
    p = summary.save(tmp_path / "summary.safetensors")
    with pytest.raises(SummaryFormatError, match="not a teacher"):
        load_teacher(p, digits)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(SummaryFormatError, match="corrupt or truncated"):
        load_teacher(junk)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(SummaryFormatError, match="not a distill-apps teacher"):
        load_teacher(plain)
    flipped = tmp_path / "flipped.safetensors"
    data = bytearray(teacher.path.read_bytes())
    data[-5] ^= 0xFF  # a tensor byte
    flipped.write_bytes(bytes(data))
    with pytest.raises(SummaryFormatError, match="checksum"):
        load_teacher(flipped)
    with pytest.raises(SummaryFormatError, match="not the teacher the summary was made with"):
        load_teacher(teacher.path, digits, expect_sha256="0" * 64)


def test_sre2l_refuses_a_teacher_without_batchnorm(digits, tmp_path):
    with pytest.raises(ConfigError, match="BatchNorm"):
        da.distill("sre2l", digits, 1, steps=1, progress=False, config={"teacher_model": "convnet-d2-w16"})
    plain = train_teacher(digits, "convnet-d2-w16", epochs=1, cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="BatchNorm"):
        da.distill("sre2l", digits, 1, steps=1, progress=False, config={"teacher": str(plain.path)})


def _bn_distance(teacher, x) -> float:
    with torch.no_grad(), bn_statistics(teacher.model, 1) as stats:
        teacher.model(x)
    return float(bn_matching_loss(stats, 1.0))


def test_sre2l_moves_batch_statistics_toward_the_teachers(digits, teacher):
    cfg = {"teacher": str(teacher.path), "r_bn": 1.0, "crop": False, "jitter": 0, "lr_img": 0.1}
    before = da.distill("sre2l", digits, 2, steps=0, progress=False, config=cfg)
    after = da.distill("sre2l", digits, 2, steps=40, progress=False, config=cfg)
    d0, d1 = _bn_distance(teacher, before.x), _bn_distance(teacher, after.x)
    assert d1 < 0.5 * d0, (d0, d1)
    # and the teacher now recognises the target classes it was asked for
    assert (teacher.logits(after.x).argmax(1) == after.y).float().mean() >= 0.9
    assert after.label_kind == "logits" and after.meta["teacher"]["sha256"] == teacher.sha256


def test_rded_stitches_crops_of_the_real_images_it_scored(digits, teacher):
    cfg = {"teacher": str(teacher.path), "factor": 2, "crop_min_scale": 0.25, "crop_max_scale": 0.25, "mipc": 30}
    s = da.distill("rded", digits, 2, progress=False, config=cfg)
    assert s.meta["factor"] == 2 and len(s.meta["cells"]) == len(s.y) == 20
    for img, label, cells in zip(s.x, s.y, s.meta["cells"]):
        assert len(cells) == 4
        for k, (idx, top, left, h, w, score) in enumerate(cells):
            assert (h, w) == (4, 4) and int(digits.y_train[idx]) == int(label)
            crop = digits.x_train[idx][:, top:top + h, left:left + w]
            r, c = divmod(k, 2)
            assert torch.equal(img[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4], crop), "pixel-exact crop of the real image"
            ce = F.cross_entropy(teacher.logits(pad_to(crop[None], (8, 8))), torch.tensor([int(label)]))
            assert abs(float(ce) - score) < 1e-4, "the stored score is the teacher's cross-entropy of that crop"
    # the most confident crops come first: cell 0 of image 0 has the lowest score of its class
    per_class = [[c[5] for cells in s.meta["cells"][2 * k:2 * k + 2] for c in cells] for k in range(10)]
    assert all(min(v) == s.meta["cells"][2 * k][0][5] for k, v in enumerate(per_class))
    assert torch.allclose(s.soft, teacher.logits(s.x))


def test_softlabel_protocol_learns_the_teachers_outputs(digits, tmp_path):
    """A teacher that always answers class 3 gives a student that predicts 3, whatever the images' labels."""
    net = da.build_model(TINY, 1, 10, (8, 8))
    with torch.no_grad():
        net.classifier.weight.zero_()
        net.classifier.bias.fill_(-5.0)
        net.classifier.bias[3] = 5.0
    meta = {"dataset": "digits", "model": TINY, "seed": 0, "train": {"epochs": 0}, "image_shape": [1, 8, 8],
            "num_classes": 10, "mean": list(digits.mean), "std": list(digits.std), "test_accuracy": 0.1}
    path, _ = save_teacher(tmp_path / "constant.safetensors", net, meta)
    summary = da.distill("random", digits, 5, progress=False)
    preds = []
    res = da.evaluate(summary, digits, protocol="softlabel", teacher=str(path), model="convnet-d2-w16", runs=1,
                      epochs=30, on_student=lambda m, r: preds.append(m(digits.x_test).argmax(1)))
    assert (preds[0] == 3).float().mean() > 0.95
    assert res.protocol == "softlabel" and res.extra["teacher"]["path"] == str(path)
    assert res.extra["optimizer"] == "adamw" and res.extra["schedule"].startswith("cosine")


def test_softlabel_protocol_checks_the_summarys_teacher(digits, teacher, tmp_path, monkeypatch):
    s = da.distill("rded", digits, 1, progress=False, config={"teacher": str(teacher.path), "mipc": 10})
    # the teacher lives outside the data and cache roots: a path read from a summary is not opened there ...
    with pytest.raises(SummaryFormatError, match="outside the data root and the cache root"):
        da.evaluate(s, digits, protocol="softlabel", runs=1, epochs=1)
    # ... unless the user trusts its folder (or passes the file: teacher=PATH)
    monkeypatch.setenv("DISTILL_APPS_TRUSTED_PATHS", os.pathsep.join([str(teacher.path.parent), str(tmp_path)]))
    other = train_teacher(digits, TINY, epochs=1, seed=7, cache_dir=tmp_path, progress=False)
    with pytest.raises(SummaryFormatError, match="not the (one|teacher) the summary was made with|is not the one"):
        da.evaluate(s, digits, protocol="softlabel", teacher=str(other.path), runs=1, epochs=1)
    moved = replace(s, meta={**s.meta, "teacher": {**s.meta["teacher"], "path": str(tmp_path / "gone.safetensors")}})
    with pytest.raises(SummaryFormatError, match="--teacher PATH"):
        da.evaluate(moved, digits, protocol="softlabel", runs=1, epochs=1)
    with pytest.raises(DataError, match="needs a teacher"):
        da.evaluate(da.distill("random", digits, 1, progress=False), digits, protocol="softlabel", runs=1, epochs=1)
    res = da.evaluate(s, digits, protocol="softlabel", runs=1, epochs=2, model="convnet-d2-w16")
    assert res.extra["teacher"]["sha256"] == teacher.sha256


def test_teacher_cli_trains_loads_and_refuses_bad_files(tmp_path, capsys, monkeypatch):
    from distill_apps.cli import main

    monkeypatch.setenv("DISTILL_APPS_CACHE", str(tmp_path / "cache"))
    args = ["teacher", "--dataset", "digits", "--model", TINY, "--epochs", "2", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["cached"] is False and first["batchnorm"] and first["dataset"] == "digits"
    assert main(args + ["--out", str(tmp_path / "t.safetensors")]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cached"] is True and second["sha256"] == first["sha256"]
    assert main(["teacher", "--teacher", second["copy"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == first["sha256"]
    assert main(args + ["--out", str(tmp_path / "t.safetensors")]) == 2  # never overwrites
    assert "refusing to overwrite" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a teacher")
    for bad in (["teacher", "--teacher", str(junk)], ["teacher", "--dataset", "digits", "--epochs", "0"],
                ["distill", "--method", "sre2l", "--ipc", "1", "--steps", "1", "--set", "teacher_model=convnet"]):
        assert main(bad) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_distill_cli_evaluates_teacher_methods_with_the_softlabel_protocol(tmp_path, capsys, monkeypatch):
    from distill_apps.cli import main

    monkeypatch.setenv("DISTILL_APPS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rded.safetensors"
    assert main(["distill", "--method", "rded", "--ipc", "1", "--model", "convnet-d2-w16", "--set",
                 f"teacher_model={TINY}", "--set", "teacher_epochs=1", "--set", "mipc=10", "--eval-runs", "1",
                 "--eval-epochs", "2", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["protocol"] == "softlabel" and "random_accuracy_mean" in res
    assert main(["evaluate", str(out), "--protocol", "softlabel", "--epochs", "2", "--runs", "1", "--model",
                 "convnet-d2-w16", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["protocol"] == "softlabel" and ev["extra"]["teacher"]["sha256"] == da.SyntheticSet.load(out).meta[
        "teacher"]["sha256"]


def test_fit_cosine_schedule_and_per_batch_targets(digits):
    """fit's additions: cosine decay to ~0 over the run, and targets computed from each (augmented) batch."""
    import math

    from distill_apps.train import fit

    net = da.build_model("convnet-d2-w16", 1, 10, (8, 8))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    seen = []

    def target_fn(xb):
        seen.append(xb.shape[0])
        return torch.zeros(xb.shape[0], 10).index_fill_(1, torch.tensor([7]), 10.0)

    x, y = digits.x_train[:64], digits.y_train[:64]
    fit(net, x, y, steps=20, batch_size=32, optimizer=opt, schedule="cosine", label_kind="logits",
        target_fn=target_fn)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert seen == [32] * 20
    net.eval()
    assert (net(digits.x_test).argmax(1) == 7).float().mean() > 0.9, "trained on the target_fn's labels, not y"
    with pytest.raises(ValueError, match="schedule"):
        fit(net, x, y, steps=1, schedule="linear")
