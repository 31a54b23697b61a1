"""Cross-architecture evaluation: one call, every model beside a random subset of the same size."""
import json

import pytest

import distill_apps as da
from distill_apps.cli import main
from distill_apps.errors import ConfigError

MODELS = "convnet-d2-w16,mlp"


@pytest.fixture(scope="module")
def saved(digits, tmp_path_factory):
    s = da.distill("dm", digits, 2, steps=1, progress=False, model="convnet-d2-w16")
    path = tmp_path_factory.mktemp("xa") / "dm.safetensors"
    s.save(path)
    return s, path


def test_cli_models_gives_the_table_with_a_random_baseline(saved, capsys):
    s, path = saved
    assert main(["evaluate", str(path), "--models", MODELS, "--runs", "2", "--epochs", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["dataset"], out["method"], out["ipc"], out["models"]) == ("digits", "dm", 2, MODELS.split(","))
    assert out["baseline"] == "random" and out["baseline_seed"] == 0 and len(out["rows"]) == 2
    for row, name in zip(out["rows"], MODELS.split(",")):
        assert row["model"] == name
        for side in ("summary", "random"):
            r = row[side]
            assert r["model"] == name and r["runs"] == 2 and len(r["accuracies"]) == 2 and r["epochs"] == 2
            assert r["augment"] == "dsa" and 0 <= r["accuracy_mean"] <= 1  # DM's protocol, for both rows
    assert main(["evaluate", str(path), "--models", MODELS, "--runs", "1", "--epochs", "1", "--augment", "none"]) == 0
    text = capsys.readouterr().out
    assert "random" in text and "augment none" in text and all(m in text for m in MODELS.split(","))


def test_python_api_and_bad_input(saved, digits):
    s, path = saved
    t = da.evaluate_cross_arch(s, digits, models=["mlp"], runs=1, epochs=1, augment="none", baseline=False)
    assert t.models == ["mlp"] and t.baseline == {} and t.summary["mlp"].augment == "none"
    with pytest.raises(ConfigError, match="Known models"):
        da.evaluate_cross_arch(s, digits, models="mlp,nosuchnet", runs=1, epochs=1)
    assert main(["evaluate", str(path), "--model", "mlp", "--models", "mlp"]) == 2
