"""MedMNIST workflows: budgets under imbalance, MedMNIST metrics vs scikit-learn, anonymisation, data errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("medmnist")

from distill_apps.errors import DataError  # noqa: E402
from distill_apps.integrations import medical  # noqa: E402

NET = "convnet-d1-w8"


@pytest.fixture(scope="module")
def breast(data_root):
    if not (data_root / "medmnist" / "breastmnist.npz").exists():
        pytest.skip("breastmnist.npz is not in the data root")
    return medical.load_medmnist("breastmnist", str(data_root))


def test_loader_carries_splits_and_task(breast):
    assert breast.task == "binary" and breast.num_classes == 2
    assert breast.x_train.shape == (546, 1, 28, 28) and breast.x_val.shape[0] == 78 and breast.x_test.shape[0] == 156
    assert "pneumoniamnist" in medical.flags_2d() and not any("3d" in f for f in medical.flags_2d())


def test_missing_npz_names_the_expected_path(tmp_path):
    with pytest.raises(DataError) as err:
        medical.load_medmnist("pneumoniamnist", str(tmp_path))
    assert str(tmp_path / "medmnist" / "pneumoniamnist.npz") in str(err.value)
    assert "--data-root" in str(err.value)
    with pytest.raises(DataError, match="Known 2D flags"):
        medical.load_medmnist("nosuchmnist", str(tmp_path))


def test_budgets_keep_every_class():
    counts = [5000, 300, 12, 3]
    prop = medical.allocate_budget(counts, 40, "proportional")
    assert sum(prop) == 40 and all(b >= 1 for b in prop) and prop[0] > prop[1] > prop[3] - 1
    # capped by the class size; the rest of the budget goes to the other classes
    assert medical.allocate_budget(counts, 40, "balanced") == [13, 12, 12, 3]


def test_imbalanced_distillation_keeps_every_class(breast):
    # make the imbalance severe: keep only 4 malignant (class 0) images
    y = breast.y_train
    idx = torch.cat([(y == 0).nonzero().flatten()[:4], (y == 1).nonzero().flatten()])
    real = breast.subset(idx)
    s = medical.distill_medical("dm", real, 5, budget="proportional", steps=2, model=NET, device="cpu",
                                config={"batch_real": 16})
    counts = torch.bincount(s.y, minlength=2).tolist()
    assert counts[0] >= 1 and sum(counts) == 10 and counts == s.meta["class_budget"]
    assert torch.isfinite(s.x).all() and s.x.shape == (10, 1, 28, 28)
    sub = medical.select_subset(real, 5, budget="balanced")
    assert torch.bincount(sub.y, minlength=2).tolist() == [4, 6]  # the rare class gives all it has, the budget holds
    res = medical.evaluate_medical(s, real, model=NET, runs=1, epochs=2, device="cpu", class_weighted=True)
    assert set(res["class_counts"]) and 0 <= res["auc_mean"] <= 1 and len(res["per_class"]) == 2


def test_auc_matches_sklearn():
    from sklearn.metrics import accuracy_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    score = rng.normal(size=300) + y
    score[:50] = np.round(score[:50])  # ties, which the rank statistic must average
    assert medical.auc_binary(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    logits = torch.tensor(rng.normal(size=(300, 2)))
    m = medical.clinical_metrics(logits, torch.tensor(y), "binary")
    p = torch.softmax(logits, 1)[:, 1].numpy()
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["acc"] == pytest.approx(accuracy_score(y, p > 0.5))
    tp = ((p > 0.5) & (y == 1)).sum()
    assert m["per_class"][1]["sensitivity"] == pytest.approx(tp / (y == 1).sum())
    assert m["per_class"][0]["sensitivity"] == pytest.approx(m["per_class"][1]["specificity"])
    y3 = rng.integers(0, 4, 300)
    l3 = torch.tensor(rng.normal(size=(300, 4)) + np.eye(4)[y3])
    p3 = torch.softmax(l3, 1).numpy()
    want = np.mean([roc_auc_score(y3 == i, p3[:, i]) for i in range(4)])  # MedMNIST's getAUC definition
    assert medical.clinical_metrics(l3, torch.tensor(y3), "multiclass")["auc"] == pytest.approx(want, abs=1e-12)
    ym = rng.integers(0, 2, (300, 3))
    lm = torch.tensor(rng.normal(size=(300, 3)) + ym)
    pm = torch.sigmoid(lm).numpy()
    want = np.mean([roc_auc_score(ym[:, i], pm[:, i]) for i in range(3)])
    assert medical.clinical_metrics(lm, torch.tensor(ym), "multilabel")["auc"] == pytest.approx(want, abs=1e-12)


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = rng.random((28, 28))
    b = np.clip(a + rng.normal(scale=0.2, size=a.shape), 0, 1)
    ours = medical.ssim(torch.tensor(a)[None, None], torch.tensor(b)[None, None])
    assert float(ours) == pytest.approx(structural_similarity(a, b, data_range=1.0), abs=1e-6)


def test_anonymisation_flags_a_copy_and_passes_synthetic(breast, tmp_path):
    import distill_apps as da

    s = da.distill("dp-dm", breast, ipc=3, steps=20, config={"epsilon": 5.0, "noise_multiplier": 3.0, "releases": 10}, model=NET,
                   device="cpu", progress=False)
    ok = medical.anonymisation_check(s, breast, png=tmp_path / "ok.png", reference=200)
    assert ok["passed"] and ok["n_flagged"] == 0
    leaky = s.detach()
    leaky.x[4] = breast.x_train[123]
    bad = medical.anonymisation_check(leaky, breast, png=tmp_path / "bad.png", reference=200)
    assert not bad["passed"] and bad["flagged"] == [4]
    assert bad["nearest_real_l2"][4] == 123 and bad["nearest_real_ssim"][4] == 123
    assert (tmp_path / "bad.png").stat().st_size > 0


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    """A ChestMNIST-format file (14 labels, multi-hot) whose label i is a bright patch in cell i of a 4x4 grid."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("chest")
    (root / "medmnist").mkdir()
    arrays = {}
    for split, n in (("train", 420), ("val", 60), ("test", 300)):
        labels = (rng.random((n, 14)) < 0.2).astype(np.uint8)
        imgs = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i in range(14):
            r, c = divmod(i, 4)
            imgs[labels[:, i] == 1, r * 7:r * 7 + 7, c * 7:c * 7 + 7] = 230
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = imgs, labels
    np.savez(root / "medmnist" / "chestmnist.npz", **arrays)
    return medical.load_medmnist("chestmnist", str(root))


def test_multilabel_distillation_keeps_every_label_and_uses_a_per_label_loss(chest, tmp_path):
    import torch.nn.functional as F

    from distill_apps import SyntheticSet, distill
    from distill_apps.errors import ConfigError
    from distill_apps.train import target_loss

    assert chest.task == "multilabel" and chest.y_train.shape == (420, 14) and chest.multilabel
    # label i's images are those positive for i (an image counts for every label it carries)
    assert all(bool(chest.y_train[ix, c].all()) for c, ix in enumerate(chest.by_class))
    logits, target = torch.randn(5, 14), (torch.rand(5, 14) < 0.3).float()
    assert torch.allclose(target_loss(logits, target, "multilabel"),
                          F.binary_cross_entropy_with_logits(logits, target))
    for method in ("dm", "dc", "random"):
        s = medical.distill_medical(method, chest, 2, steps=3, model=NET, device="cpu",
                                    config=None if method == "random" else {"batch_real": 8})
        assert s.label_kind == "multilabel" and s.soft.shape == (28, 14)
        assert torch.bincount(s.y, minlength=14).tolist() == [2] * 14
        # every synthetic image's target row carries its own label (it started from a positive image)
        assert bool(s.soft[torch.arange(28), s.y].eq(1).all())
        assert set(s.soft.unique().tolist()) <= {0.0, 1.0}
    path = tmp_path / "chest.safetensors"
    s.save(path)
    back = SyntheticSet.load(path)
    assert back.label_kind == "multilabel" and torch.equal(back.soft, s.soft)
    res = medical.evaluate_medical(distill("dm", chest, 5, steps=5, model=NET, device="cpu", progress=False,
                                           config={"batch_real": 16}), chest, model=NET, runs=1, epochs=60,
                                   device="cpu")
    assert res["task"] == "multilabel" and res["auc_mean"] > 0.8  # the patches are learnable from 70 images
    with pytest.raises(ConfigError, match="multi-label.*dm"):
        distill("kip", chest, 1, steps=1, device="cpu", progress=False)


def test_medical_recipe_saves_each_summary_with_its_data_card(breast, data_root, tmp_path, capsys):
    """The recipe's point is a shareable summary: each distilled summary is saved (safe format) with a data card
    (JSON + markdown: dataset, method, IPC, privacy, anonymisation check); the private one carries its epsilon."""
    import json

    from distill_apps import load_summary
    from distill_apps.recipes import medical_sharing

    out = tmp_path / "med"
    rc = medical_sharing.main(["--datasets", "breastmnist", "--data-root", str(data_root), "--ipc", "1", "--methods",
                               "dm", "dp-dm", "--steps", "2", "--set", "batch_real=16", "--set", "dp-dm.epsilon=4",
                               "--set", "dp-dm.releases=2", "--epochs", "2", "--full-epochs", "0", "--model", NET,
                               "--device", "cpu", "--out", str(out), "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["datasets"][0]["rows"]
    saved = {r["method"]: r for r in rows if "summary" in r}
    assert set(saved) == {"dm", "dp-dm"}
    for method, row in saved.items():
        s = load_summary(row["summary"])
        card = json.loads((out / f"card_breastmnist_{method}_ipc1.json").read_text())
        assert card["method"] == s.meta["method"] == method and card["dataset"] == "medmnist:breastmnist"
        assert card["ipc"] == 1 and card["images"] == len(s.y) == 2
        assert card["checks"]["anonymisation"] in ("passed", "FLAGGED")
        assert card["checks"]["n_flagged"] == row["anonymisation"]["n_flagged"]
        md = (out / f"card_breastmnist_{method}_ipc1.md").read_text()
        assert f"`{method}` summary of `medmnist:breastmnist`" in md and "Privacy:" in md
    assert saved["dm"]["summary"].endswith("summary_breastmnist_dm_ipc1.safetensors")
    private = json.loads((out / "card_breastmnist_dp-dm_ipc1.json").read_text())["privacy"]
    assert 0 < private["epsilon"] <= 4.0 and private["private"] and saved["dp-dm"]["privacy"]["epsilon"] <= 4.0
    assert json.loads((out / "card_breastmnist_dm_ipc1.json").read_text())["privacy"] is None
    # the report: a result in words first, every figure captioned, the dp-dm grid says why it looks like noise
    md = (out / "report.md").read_text()
    assert md.split("\n\n")[1].startswith("On breastmnist, the best shareable summary,")
    dp_cap = md.split("](grid_breastmnist_dp-dm_ipc1.png)")[1].split("\n\n")[1]
    assert dp_cap.startswith("*Figure: ") and "look like noise" in dp_cap and "differential privacy" in dp_cap
    dm_cap = md.split("](grid_breastmnist_dm_ipc1.png)")[1].split("\n\n")[1]
    assert dm_cap.startswith("*Figure: ") and "noise" not in dm_cap
    assert "](anon_breastmnist_dm_ipc1.png)\n\n*Figure: anonymisation check" in md and "±" not in md
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir() if p.is_file()} == {"0o644"}
