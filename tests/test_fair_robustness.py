"""DD-Ranking's fair scores on fixed numbers, adversarial attacks on a trained model, and their CLI bad input."""
import json

import pytest
import torch

import distill_apps as da
from distill_apps import fair
from distill_apps.cli import main
from distill_apps.errors import ConfigError
from distill_apps.robustness import check_eps, robust_accuracy
from distill_apps.train import accuracy, fit


def test_fair_score_formulas_on_fixed_numbers():
    assert fair.hlr(0.99, 0.90) == pytest.approx(0.09)
    assert fair.ior(0.95, 0.93) == pytest.approx(0.02)
    # LRS = (e^a - e^-1) / (e - e^-1), a = w IOR - (1 - w) HLR, w = 0.5 by default
    assert fair.lrs(0.09, 0.02) == pytest.approx(0.25430793396015405)
    assert fair.lrs(0.30, 0.10, weight=0.25) == pytest.approx(0.19181877722087756)
    assert fair.lrs(0.0, 1.0, weight=1.0) == pytest.approx(1.0) and fair.lrs(1.0, 0.0) == pytest.approx(0.10153632409155)
    assert fair.lrs(1.0, -1.0) == pytest.approx(0.0)
    # ARS: b = g (syn_aug - rnd_aug) + (1 - g) (syn_noaug - rnd_noaug), g = 0.5, same normalisation
    assert fair.ars(0.97, 0.95, 0.90, 0.93) == pytest.approx(0.26681943543503645)
    assert fair.ars(0.5, 0.5, 0.5, 0.5) == pytest.approx(0.26894142136999516)  # no gain over random
    with pytest.raises(ConfigError, match="fraction"):
        fair.hlr(99.0, 90.0)  # percentages are refused, not silently misread
    with pytest.raises(ConfigError, match="weights"):
        fair.lrs(0.1, 0.1, weight=1.5)


@pytest.fixture(scope="module")
def trained(digits):
    net = da.build_model("convnet-d2-w16", 1, 10, (8, 8), generator=torch.Generator().manual_seed(0))
    fit(net, digits.x_train, digits.y_train, epochs=40, generator=torch.Generator().manual_seed(0))
    return net


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_attacks_lower_accuracy_monotonically_in_eps(digits, trained, attack):
    x, y = digits.x_test, digits.y_test
    clean = accuracy(trained, x, y)
    eps = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4]
    accs = [robust_accuracy(trained, x, y, attack=attack, eps=e, mean=digits.mean, std=digits.std) for e in eps]
    assert accs[0] == pytest.approx(clean) and clean > 0.8
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < 0.5 * clean, accs


def test_pgd_stays_in_the_pixel_ball(digits, trained):
    from distill_apps.robustness import pgd

    x, y = digits.x_test[:64], digits.y_test[:64]
    adv = pgd(trained, x, y, 0.1, mean=digits.mean, std=digits.std, generator=torch.Generator().manual_seed(0))
    s, m = digits.std[0], digits.mean[0]
    px, pa = x * s + m, adv * s + m
    assert (pa - px).abs().max() <= 0.1 + 1e-5 and pa.min() >= -1e-6 and pa.max() <= 1 + 1e-6


def test_eps_out_of_range_refused(tmp_path, capsys, digits):
    for bad in (-0.1, 1.5, 8.0):
        with pytest.raises(ConfigError, match="pixel units"):
            check_eps(bad)
    s = da.distill("random", digits, 1, progress=False).save(tmp_path / "r.safetensors")
    assert main(["evaluate", str(s), "--attack", "pgd", "--eps", "8", "--epochs", "1", "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "pixel units" in err and "Traceback" not in err


def test_evaluate_cli_fair_and_attack_json(tmp_path, capsys, digits):
    s = da.distill("random", digits, 2, progress=False).save(tmp_path / "r.safetensors")
    assert main(["evaluate", str(s), "--json", "--runs", "1", "--epochs", "2", "--model", "convnet-d2-w16",
                 "--metrics", "fair", "--full-data-acc", "0.97", "--attack", "fgsm", "--eps", "0.05", "0.2"]) == 0
    res = json.loads(capsys.readouterr().out)
    f, r = res["extra"]["fair"], res["extra"]["robust"]
    assert res["protocol"] == "train" and f["protocol"] == "train" and f["accuracy"]["full_data_hard"] == 0.97
    assert f["hlr"] == pytest.approx(0.97 - f["accuracy"]["syn_hard"])
    assert f["ior"] == pytest.approx(f["accuracy"]["syn"] - f["accuracy"]["random"])
    assert 0 <= f["lrs"] <= 1 and 0 <= f["ars"] <= 1
    assert r["attack"] == "fgsm" and set(r["accuracy"]) == {"0.05", "0.2"} and r["n_test"] == len(digits.y_test)


def test_robustness_recipe_writes_report_and_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISTILL_APPS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rob"
    assert main(["recipe", "robustness", "--methods", "dm", "rded", "--ipc", "1", "--eps", "0.1", "0.3",
                 "--attack-n", "60", "--eval-epochs", "3", "--steps", "2", "--set", "rded.mipc=10", "--model", "convnet-d2-w16", "--teacher-model",
                 "convnet-d2-w16-bn", "--teacher-epochs", "1", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    got = {(r["method"], r["protocol"]) for r in res["rows"]}
    assert got == {("dm", "train"), ("rded", "softlabel"), ("random", "train"), ("random", "softlabel")}
    for r in res["rows"]:
        assert set(r["robust"]) == {"fgsm", "pgd"} and set(r["robust"]["pgd"]) == {"0.1", "0.3"}
    assert (out / "report.md").exists() and (out / "robustness.png").stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "PGD 10 steps of eps/4" in md
    # a result in words first, a caption under the figure, no ± for one run; files 0644
    assert md.split("\n\n")[1].startswith("Under PGD at eps 0.3, the most robust student on digits (IPC 1)")
    assert "](robustness.png)\n\n*Figure: test accuracy (y) of each student under attack" in md and "±" not in md
    assert {oct((out / f).stat().st_mode & 0o777) for f in ("report.md", "robustness.png")} == {"0o644"}


def test_budget_table_goes_between_the_readme_markers(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "budget_table", Path(__file__).resolve().parents[1] / "benchmarks" / "budget_table.py")
    bt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bt)
    base = {"dataset": "mnist", "ipc": 10, "model": "convnet", "epochs": 300, "machine": "test"}
    rows = [{**base, "method": "random", "protocol": "train", "distill_seconds": 0.0, "prep_seconds": None,
             "prep_kind": None, "accuracy": 0.95},
            {**base, "method": "rded", "protocol": "softlabel", "distill_seconds": 30.0, "prep_seconds": 230.0,
             "prep_kind": "teacher", "accuracy": 0.975},
            {**base, "method": "dm", "protocol": "train", "distill_seconds": 200.0, "prep_seconds": None,
             "prep_kind": None, "accuracy": 0.96}]
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nintro\n")
    body = bt.table(rows, [60, 300])
    bt.update_readme(readme, body, "x.json")
    bt.update_readme(readme, body, "x.json")  # idempotent: replaces the block, never duplicates it
    text = readme.read_text()
    assert text.count(bt.BEGIN) == 1 and text.startswith("# title\n\nintro\n")
    lines = [ln for ln in text.splitlines() if ln.startswith("| 60 s") or ln.startswith("| 5.0 min")]
    assert "random (train)" in lines[0] and "rded (softlabel)" in lines[0].split("|")[5]  # teacher already there
    assert "rded (softlabel)" in lines[1].split("|")[2]  # 30 s + 230 s teacher fits in 300 s
