"""Options are range- and type-checked with no silent coercion; a summary is evaluated on its own dataset (issue 22)."""
import dataclasses

import pytest

import distill_apps as da
from distill_apps.cli import main
from distill_apps.config import MethodConfig, make_config
from distill_apps.engine import METHODS
from distill_apps.errors import ConfigError, DataError, DistillWarning
from distill_apps.summary import SyntheticSet
from distill_apps.validation import check_same_dataset

MODEL = "convnet-d2-w16"
DISTILL = ["distill", "--method", "dm", "--ipc", "1", "--model", MODEL, "--no-eval", "--no-progress"]


@pytest.mark.parametrize("extra,needle", [
    (["--steps", "0"], "0 steps"),
    (["--steps", "-1"], "--steps"),
    (["--checkpoint-every", "-2", "--steps", "1"], "--checkpoint-every"),
    (["--set", "batch_real=2.7", "--steps", "1"], "whole number"),  # never rounded to 2
    (["--set", "amp=maybe", "--steps", "1"], "true or false"),  # never read as False
    (["--set", "batch_real=0", "--steps", "1"], "batch_real=0 .*>= 1"),
    (["--set", "batch_real=-5", "--steps", "1"], "batch_real=-5"),
    (["--set", "lr_img=nan", "--steps", "1"], "lr_img.*finite"),
    (["--set", "lr_img=.inf", "--steps", "1"], "lr_img.*finite"),
    (["--set", "momentum_img=1.5", "--steps", "1"], "momentum_img"),
    (["--set", "quick_steps=0"], "0 steps"),
    (["--set", "=3", "--steps", "1"], "KEY=VALUE"),
    (["--max-memory", "0", "--steps", "1"], "--max-memory"),
    (["--max-memory", "nan", "--steps", "1"], "--max-memory"),
    (["--eval-runs", "0", "--steps", "1"], "--eval-runs"),
    (["--eval-epochs", "0", "--steps", "1"], "--eval-epochs"),
])
def test_distill_options_refused_before_any_work(extra, needle, tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    assert main([*DISTILL, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    import re

    assert re.search(needle, err), err
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_config_files_refused(tmp_path, capsys):
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(bytes(range(256)) * 4)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr_img: [1, 2\n")
    for cfg, needle in ((junk, "not text"), (tmp_path, "folder"), (listy, "mapping"), (bad_yaml, "not valid YAML"),
                        (tmp_path / "absent.yaml", "does not exist")):
        assert main([*DISTILL, "--steps", "1", "--config", str(cfg), "--out", str(tmp_path / "o.safetensors")]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err


def test_evaluate_options_refused(tmp_path, capsys, digits):
    p = da.distill("random", digits, 1, progress=False).save(tmp_path / "r.safetensors")
    for extra, needle in ((["--runs", "0"], "--runs"), (["--epochs", "0"], "--epochs")):
        assert main(["evaluate", str(p), *extra]) == 2
        assert needle in capsys.readouterr().err
    with pytest.raises(ConfigError, match="runs"):
        da.evaluate(SyntheticSet.load(p), digits, runs=0)


def test_every_method_config_has_valid_defaults_and_checked_ranges():
    """Defaults pass their own rules; each method's counts, sizes and rates refuse 0/negative/NaN/wrong types."""
    from distill_apps.config import _base_type, field_rule
    from typing import get_type_hints

    checked = 0
    for name in METHODS.names():
        cls = METHODS.get(name).Config
        cls()  # defaults are valid
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t, optional = _base_type(hints[f.name])
            rule = field_rule(cls, f, t)
            if t is int:
                with pytest.raises(ConfigError, match=f.name):
                    make_config(cls, {f.name: rule["min"] - 1}, name)
                with pytest.raises(ConfigError, match=f.name):
                    make_config(cls, {f.name: 2.5}, name)
                checked += 1
            elif t is float:
                with pytest.raises(ConfigError, match=f.name):
                    make_config(cls, {f.name: float("nan")}, name)
                if "min" in rule:
                    with pytest.raises(ConfigError, match=f.name):
                        make_config(cls, {f.name: rule["min"] - 1.0}, name)
                checked += 1
            elif t is bool:
                with pytest.raises(ConfigError, match=f.name):
                    make_config(cls, {f.name: "maybe"}, name)
    assert checked > 100
    cfg = make_config(METHODS.get("dm").Config, {"batch_real": "12", "amp": "no", "lr_img": "1e-3"}, "dm")
    assert (cfg.batch_real, cfg.amp, cfg.lr_img) == (12, False, 1e-3)  # lossless parses are fine
    with pytest.raises(ConfigError, match="batch_real"):  # the dataclass itself checks too
        METHODS.get("dm").Config(batch_real=0)
    assert MethodConfig().steps == 1000


def test_api_run_arguments_checked(digits, tmp_path):
    for kw, needle in (({"checkpoint_every": -2, "checkpoint": tmp_path / "c.ckpt"}, "checkpoint_every"),
                       ({"steps": 2.5}, "steps"), ({"max_memory_gb": float("nan")}, "max_memory_gb"),
                       ({"resume": "maybe", "checkpoint": tmp_path / "c.ckpt"}, "resume")):
        with pytest.raises(ConfigError, match=needle):
            da.distill("dm", digits, 1, **{"steps": 1, **kw}, model=MODEL, progress=False)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------- the dataset a summary is evaluated on
def test_summary_evaluated_on_another_dataset_is_refused_unless_forced(digits, tmp_path, capsys):
    s = da.distill("random", digits, 1, progress=False)
    other = digits._replace(name="digits-other")  # same shapes and class count: only the name differs
    with pytest.raises(DataError, match="distilled from 'digits'.*--force-dataset"):
        da.evaluate(s, other, runs=1, epochs=1, model=MODEL)
    with pytest.warns(DistillWarning, match="as forced"):
        r = da.evaluate(s, other, runs=1, epochs=1, model=MODEL, force_dataset=True)
    assert r.dataset == "digits-other"
    # the CLI: a summary that says it was distilled from another dataset of the same shapes (as MNIST and
    # Fashion-MNIST are), evaluated with --dataset
    fake = dataclasses.replace(s, meta={**s.meta, "dataset": "fashion_digits"})
    p = fake.save(tmp_path / "f.safetensors")
    base = ["evaluate", str(p), "--dataset", "digits", "--runs", "1", "--epochs", "1", "--model", MODEL]
    assert main(base) == 2
    assert "'fashion_digits'" in capsys.readouterr().err
    assert main([*base, "--force-dataset", "--json"]) == 0
    assert "warning: evaluating a summary distilled from 'fashion_digits' on 'digits'" in capsys.readouterr().err


def test_dataset_identity_uses_source_fingerprints_when_both_have_them():
    class Real:
        name = "cifar10-jpg"
        data_source = {"name": "folder", "fingerprint": "aaa"}

    check_same_dataset({"dataset": "cifar10-jpg", "data_source": {"name": "folder", "fingerprint": "aaa"}}, Real())
    check_same_dataset({"dataset": "cifar10-jpg"}, Real())  # older summaries without a data source: names only
    check_same_dataset({}, Real())  # no dataset recorded at all: nothing to compare
    with pytest.raises(DataError, match="fingerprint"):
        check_same_dataset({"dataset": "cifar10-jpg", "data_source": {"fingerprint": "bbb"}}, Real())
