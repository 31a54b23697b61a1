"""The CLI: JSON outputs, and bad input as one clear paragraph with exit status 2 (never a traceback)."""
import json
import subprocess
import sys

import pytest

from distill_apps.cli import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "distill_apps.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_methods_and_datasets_json(capsys, data_root):
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["methods"]
    assert {"dm", "dc", "dsa", "random", "herding", "kcenter"} <= {r["name"] for r in rows}
    assert main(["datasets", "--json", "--data-root", str(data_root)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert rows["digits"]["present"] and rows["mnist"]["present"] and rows["cifar10"]["present"] is False
    assert {"pneumoniamnist", "breastmnist"} <= set(rows["medmnist"]["flags_present"])


def test_distill_then_evaluate_json(tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    assert main(["distill", "--method", "dm", "--ipc", "1", "--steps", "2", "--model", "convnet-d2-w16",
                 "--out", str(out), "--eval-runs", "1", "--eval-epochs", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["path"] == str(out) and 0 <= res["accuracy_mean"] <= 1 and "random_accuracy_mean" in res
    assert out.with_suffix(".png").exists()
    assert main(["evaluate", str(out), "--json", "--runs", "2", "--epochs", "2", "--model", "convnet-d2-w16"]) == 0
    ev = json.loads(capsys.readouterr().out)
    for key in ("accuracy_mean", "accuracy_std", "runs", "model", "dataset"):
        assert key in ev
    assert ev["runs"] == 2 and ev["dataset"] == "digits"


@pytest.mark.parametrize("args,needle", [
    (["distill", "--ipc", "0"], "positive"),
    (["distill", "--ipc", "1000"], "only"),
    (["distill", "--method", "nosuch"], "Known methods"),
    (["distill", "--dataset", "nosuch"], "Known datasets"),
    (["distill", "--set", "bogus=1", "--steps", "1"], "Known options"),
])
def test_bad_input_clear_error(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_missing_files_corrupt_summary_and_mismatch(tmp_path, capsys, data_root):
    assert main(["distill", "--dataset", "mnist", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "--data-root" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a summary at all")
    assert main(["evaluate", str(bad)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    out = tmp_path / "s.safetensors"
    assert main(["distill", "--method", "random", "--ipc", "1", "--no-eval", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--dataset", "mnist", "--data-root", str(data_root)]) == 2
    assert "distilled from" in capsys.readouterr().err


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    r = run_cli("distill", "--method", "nosuch")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Known methods" in r.stderr


def test_datasets_and_methods_know_every_modality(capsys, data_root, tu_root):
    assert main(["datasets", "--json", "--data-root", str(data_root)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert {n: rows[n]["modality"] for n in ("digits", "cora", "citeseer", "ml-100k", "sst2", "mutag", "tu")} == {
        "digits": "image", "cora": "graph", "citeseer": "graph", "ml-100k": "recsys", "sst2": "text",
        "mutag": "graph-classification", "tu": "graph-classification"}
    assert rows["cora"]["present"] and rows["ml-100k"]["present"] and rows["sst2"]["present"]
    assert main(["datasets", "--json", "--data-root", str(tu_root)]) == 0  # a root holding tudataset/TOYRINGSTAR
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert rows["tu"]["present"] and rows["tu"]["flags_present"] == ["TOYRINGSTAR"] and not rows["mutag"]["present"]
    assert main(["methods", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["methods"]}
    assert (rows["gcond"]["default_dataset"], rows["gcond"]["ipc"]) == ("cora", rows["doscond"]["ipc"])
    assert "nodes per class" in rows["gcond"]["ipc"] and "users" in rows["distill_cf"]["ipc"]
    assert "sentences per class" in rows["text"]["ipc"] and rows["dm"]["ipc"] == "synthetic images per class"
