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


def test_merge_joins_parallel_cell_files_once_each_in_row_order(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "cross_arch_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "cross_arch.py")
    xa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(xa)

    def cell(method, model, acc):
        return {"table": "cross_arch", "dataset": "mnist", "method": method, "ipc": 10, "model": model,
                "requested_augment": "auto", "augment": "dsa", "augment_label": "dsa", "epochs": 1000, "runs": 3,
                "steps": 1, "accuracy_mean": acc, "accuracy_std": 0.1}

    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "all.json"
    a.write_text(json.dumps([cell("dm", "convnet", 96.0), cell("random", "convnet", 95.0)]))
    b.write_text(json.dumps([cell("dm", "convnet", 11.0), cell("dm", "mlp", 88.0)]))  # first copy of a cell wins
    merged = xa.main(["--out", str(out), "--merge", str(a), str(b)])
    cells = json.loads(out.read_text())
    assert merged == 0
    assert [(c["method"], c["model"], c["accuracy_mean"]) for c in cells] == [
        ("random", "convnet", 95.0), ("dm", "convnet", 96.0), ("dm", "mlp", 88.0)]
    assert "| dm | 1 |" in out.with_suffix(".md").read_text()
