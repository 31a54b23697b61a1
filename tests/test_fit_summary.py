"""One fit: :func:`distill_apps.train_on_summary` trains every fresh model on a summary and :func:`distill_apps.score`
scores it; the protocols and adapters call them (read with ``ast``) instead of their own copies of the loop."""
from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import distill_apps as da
from distill_apps.errors import ConfigError
from distill_apps.fit_summary import auto_progress, fresh_model, learned_lr
from distill_apps.runtime import generator

REPO = Path(__file__).resolve().parents[1]
TINY = "convnet-d2-w16"

#: every place that trains a fresh model on a summary and scores it: (file, function)
CALL_SITES = [
    ("distill_apps/evaluate.py", "train_from_scratch"),  # protocol "train"
    ("distill_apps/softlabel.py", "softlabel_protocol"),  # protocol "softlabel"
    ("distill_apps/methods/meta.py", "learned_schedule_protocol"),  # protocol "schedule" (DD)
    ("distill_apps/privacy/audit.py", "audit_summary"),
    ("integrations/medical.py", "evaluate_medical"),
    ("integrations/nni/proxy.py", "train_and_score"),
    ("integrations/flower/strategies.py", "_server_train"),
]
#: the loop and the one fit; the other modalities' summaries (graphs, text) have their own protocols
ALLOWED = {"distill_apps/train.py", "distill_apps/fit_summary.py"}
OTHER_MODALITIES = "distill_apps/modalities/"
#: what marks an argument as a summary's training data (names and attributes of a SyntheticSet)
SUMMARY_NAMES = {"summary", "union"}
SUMMARY_ATTRS = {"materialize", "training_data", "soft", "label_kind"}


def _called(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            out.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return out


def _function(path: Path, name: str) -> ast.AST:
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name:
            return n
    raise AssertionError(f"{path}: no function {name}")


def _mentions_summary(expr: ast.AST) -> bool:
    for n in ast.walk(expr):
        if isinstance(n, ast.Name) and n.id in SUMMARY_NAMES:
            return True
        if isinstance(n, ast.Attribute) and n.attr in SUMMARY_ATTRS:
            return True
    return False


def _sources() -> list[Path]:
    files = []
    for top in ("distill_apps", "integrations", "recipes", "benchmarks"):
        for p in sorted((REPO / top).rglob("*.py")):
            rel = p.relative_to(REPO).as_posix()
            if top == "distill_apps" and rel.split("/")[1] in ("integrations", "recipes"):
                continue  # symlinks to the top-level folders, read there
            files.append(p)
    return files


@pytest.mark.parametrize("path,func", CALL_SITES)
def test_call_sites_train_and_score_through_the_shared_pair(path, func):
    calls = _called(_function(REPO / path, func))
    assert "train_on_summary" in calls, f"{path}:{func} does not train through train_on_summary"
    own = calls & {"fit", "accuracy", "predict", "build_model", "target_loss"}
    assert not own, f"{path}:{func} still calls {sorted(own)} itself instead of train_on_summary/score"


def test_no_module_fits_a_summary_outside_the_shared_function():
    offenders = []
    for p in _sources():
        rel = p.relative_to(REPO).as_posix()
        if rel in ALLOWED or rel.startswith(OTHER_MODALITIES):
            continue
        for n in ast.walk(ast.parse(p.read_text())):
            if not isinstance(n, ast.Call):
                continue
            name = n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
            if name == "fit" and any(_mentions_summary(a) for a in [*n.args, *(k.value for k in n.keywords)]):
                offenders.append(f"{rel}:{n.lineno}")
    assert not offenders, f"fit() on a summary outside train_on_summary: {offenders}"


@pytest.fixture(scope="module")
def learned(digits):
    """A 2-per-class summary carrying a learned learning rate of 0.05."""
    return replace(da.distill("random", digits, 2, progress=False), lr=0.05)


def _weights(net):
    return [p.detach().clone() for p in net.parameters()]


def test_lr_zero_is_honoured_and_none_means_the_learned_lr(digits, learned):
    assert learned_lr(learned, 0) == 0 and learned_lr(learned) == 0.05 and learned_lr(replace(learned, lr=None)) == 0.01
    net = fresh_model(TINY, digits, generator("t", 0))
    w0 = _weights(net)
    da.train_on_summary(learned, net, epochs=3, lr=0, generator=generator("t", 1))
    assert all(torch.equal(a, b) for a, b in zip(w0, _weights(net)))  # lr 0: SGD moves nothing
    with pytest.raises(ConfigError, match="learning rate"):
        da.train_on_summary(learned, net, epochs=1, lr=-0.1)
    runs = {}
    for lr in (None, 0.05, 0.01):
        net = fresh_model(TINY, digits, generator("t", 0))
        runs[lr] = _weights(da.train_on_summary(learned, net, epochs=3, lr=lr, generator=generator("t", 1)))
    assert all(torch.equal(a, b) for a, b in zip(runs[None], runs[0.05]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[None], runs[0.01]))


def test_evaluate_and_medical_adapter_honour_lr_zero(digits, learned):
    untrained = da.score(fresh_model(TINY, digits, generator("evaluate", 0, 0)), digits)
    res = da.evaluate(learned, digits, model=TINY, runs=1, epochs=2, lr=0, augment=None, progress=False)
    assert res.lr == 0 and res.accuracies == [untrained]
    from distill_apps.integrations.medical import clinical_metrics, evaluate_medical

    ev = evaluate_medical(learned, digits, model=TINY, runs=1, epochs=2, lr=0)
    net = fresh_model(TINY, digits, generator("evaluate-medical", 0, 0))
    want = da.score(net, digits, metric=lambda logits, y: clinical_metrics(logits, y, digits.task))
    assert ev["acc_mean"] == want["acc"] and ev["auc_mean"] == want["auc"]


def test_per_step_schedule_is_plain_full_batch_sgd(digits, learned):
    lrs = [0.3, 0.0, 0.1]
    net = fresh_model(TINY, digits, generator("t", 0))
    ref = fresh_model(TINY, digits, generator("t", 0))
    da.train_on_summary(learned, net, schedule=lrs, momentum=0.0, weight_decay=0.0, amp=False)
    x, y = learned.x, learned.y
    ref.train()
    for lr in lrs:
        ref.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= lr * p.grad
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(_weights(net), _weights(ref)))
    with pytest.raises(ConfigError, match="per-step"):
        da.train_on_summary(learned, net, schedule=lrs, epochs=2)


def test_score_takes_real_data_pairs_and_metrics(digits):
    net = fresh_model(TINY, digits, generator("t", 0))
    acc = da.score(net, digits)
    assert acc == da.score(net, (digits.x_test, digits.y_test))
    assert da.score(net, digits, metric=lambda logits, y: logits.shape) == (len(digits.y_test), 10)
    assert da.score(net, digits, split="train") == da.score(net, (digits.x_train, digits.y_train))
    with pytest.raises(ConfigError, match="score metric"):
        da.score(net, digits, metric="f1")


def test_evaluate_shows_run_and_epoch_bars_only_when_asked(digits, learned, capsys):
    da.evaluate(learned, digits, model=TINY, runs=2, epochs=2, augment=None, progress=True)
    err = capsys.readouterr().err
    assert f"evaluate {TINY}" in err and "run" in err and "train" in err  # outer bar over runs, inner over steps
    da.evaluate(learned, digits, model=TINY, runs=1, epochs=2, augment=None)  # default: quiet when not watched
    assert capsys.readouterr().err == ""


def test_auto_progress_follows_the_terminal(monkeypatch):
    import io
    import sys

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert auto_progress(False) is False and auto_progress(True) is True
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert auto_progress(None) is False
    monkeypatch.setattr(sys, "stderr", Tty())
    assert auto_progress(None) is True


def test_nni_proxy_honours_lr_zero(digits, learned):
    pytest.importorskip("nni")
    from distill_apps.integrations.nni.proxy import ProxyTask, train_and_score

    net = fresh_model(TINY, digits, generator("t", 0))
    w0 = _weights(net)
    task = ProxyTask(learned, digits.x_test[:50], digits.y_test[:50], epochs=2, lr=0.0, augment=None)
    res = train_and_score(net, task)
    assert all(torch.equal(a, b) for a, b in zip(w0, _weights(net)))  # was: task.lr 0 -> the learned 0.05
    assert res["accuracy"] == da.score(net, (digits.x_test[:50], digits.y_test[:50]))
