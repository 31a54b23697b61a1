"""``distill-apps distill`` prints ``saved PATH`` as soon as the summary exists, before its evaluation starts, and
its evaluation shows progress; with ``--json`` stdout stays one JSON object (the early line goes to stderr)."""
import importlib
import json

import pytest

from distill_apps.cli import main

evaluate_module = importlib.import_module("distill_apps.evaluate")  # the module (the package exports the function)

ARGS = ["distill", "--method", "dm", "--ipc", "1", "--steps", "1", "--model", "convnet-d2-w16",
        "--eval-runs", "1", "--eval-epochs", "1"]


@pytest.fixture
def spy_evaluate(monkeypatch, capsys):
    """Wrap the real evaluation to record, at the moment it starts, what was printed and whether the file exists."""
    real, seen = evaluate_module.evaluate, []

    def spy(summary, data=None, **kw):
        out, err = capsys.readouterr()
        seen.append({"out": out, "err": err, "progress": kw.get("progress")})
        print(out, end="")  # give the text back to the test's capture
        return real(summary, data, **kw)

    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    return seen


def test_saved_is_printed_before_the_evaluation(tmp_path, capsys, spy_evaluate):
    out = tmp_path / "s.safetensors"
    assert main(ARGS + ["--out", str(out)]) == 0
    first = spy_evaluate[0]
    assert f"saved {out} (1 steps)" in first["out"]  # already on stdout when the evaluation began
    assert [s["progress"] for s in spy_evaluate] == [True, True]  # summary and random baseline show progress
    text = capsys.readouterr().out
    assert text.count("saved ") == 1 and text.index("saved ") < text.index("random ipc 1")  # once, then scores


def test_json_stdout_stays_one_object(tmp_path, capsys, spy_evaluate):
    out = tmp_path / "s.safetensors"
    assert main(ARGS + ["--out", str(out), "--json"]) == 0
    assert f"saved {out}" in spy_evaluate[0]["err"] and spy_evaluate[0]["out"] == ""
    assert spy_evaluate[0]["progress"] is False
    res = json.loads(capsys.readouterr().out)  # the whole stdout is one JSON object
    assert res["path"] == str(out)
