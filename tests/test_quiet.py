"""Host libraries' notices that do not concern a user are filtered in one place (:mod:`distill_apps.quiet`);
``--verbose`` shows them. The trigger: Opacus' accountant warns "Optimal order is the largest alpha" when the
noise of a one-release DP-DM run is calibrated (a real host warning, raised during our call)."""
import logging
import sys
import warnings
import pytest

from distill_apps.cli import main
from distill_apps.privacy import accounting
from distill_apps.quiet import LOG_RULES, RULES, quieted

pytest.importorskip("opacus")

NOTICE = "Optimal order is the largest alpha"
ARGS = ["distill", "--method", "dp-dm", "--ipc", "1", "--steps", "1", "--set", "releases=1", "--set", "epsilon=1",
        "--model", "convnet-d2-w16", "--no-eval", "--no-progress", "--overwrite"]


def _stderr_of(args, capsys, monkeypatch):
    """Run the CLI in this process and return its stderr, warnings printed as a plain Python process prints them
    (pytest otherwise records warnings instead of printing them)."""
    accounting._calibrated.cache_clear()  # the accountant's results are cached: compute (and warn) afresh
    accounting._epsilon.cache_clear()
    monkeypatch.setattr(warnings, "filters", [])
    monkeypatch.setattr(warnings, "_showwarnmsg_impl", lambda msg: sys.stderr.write(warnings._formatwarnmsg(msg)))
    assert main(args) == 0
    return capsys.readouterr().err


def test_host_warning_hidden_by_default_and_shown_with_verbose(tmp_path, capsys, monkeypatch):
    out = ["--out", str(tmp_path / "dp.safetensors")]
    assert NOTICE not in _stderr_of(ARGS + out, capsys, monkeypatch)
    loud = _stderr_of(["--verbose"] + ARGS + out, capsys, monkeypatch)
    assert NOTICE in loud and "opacus" in loud  # printed as Python prints warnings, with the host's file


def test_every_rule_says_why_and_log_filter_follows_verbose():
    assert all(r.reason and r.message for r in RULES) and all(r.reason for r in LOG_RULES)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("flwr")
    h = Keep(level=logging.DEBUG)
    log.addHandler(h)
    level = log.level
    log.setLevel(logging.DEBUG)
    try:
        with quieted(False):
            log.info("round 1")
            log.warning("DEPRECATED FEATURE: The `run_simulation` function is deprecated and will be removed")
            log.warning("a real problem")
        with quieted(True):
            log.info("round 2")
    finally:
        log.removeHandler(h)
        log.setLevel(level)
    assert records == ["a real problem", "round 2"]


def test_recipe_help_lists_verbose(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["recipe", "continual", "--help"])
    assert exit_.value.code == 0 and "--verbose" in capsys.readouterr().out


def test_verbose_before_recipe_reaches_the_recipe(monkeypatch):
    import distill_apps.cli as cli

    seen = []

    class Recipe:
        @staticmethod
        def main(argv):
            seen.append(argv)
            return 0

    monkeypatch.setattr(cli, "_recipe_module", lambda name: Recipe)
    assert main(["--verbose", "recipe", "continual", "--epochs", "1"]) == 0
    assert main(["recipe", "continual", "--verbose"]) == 0
    assert seen == [["--epochs", "1", "--verbose"], ["--verbose"]]


def test_a_host_that_re_adds_its_own_filter_is_still_quiet():
    """Avalanche's ``@deprecated`` puts ``simplefilter("once", DeprecationWarning)`` in front of every filter on
    each call; the warning is still dropped (at show time) unless verbose."""
    where = dict(category=DeprecationWarning, lineno=123, module="avalanche.training.plugins.replay",
                 filename="/venv/site-packages/avalanche/training/plugins/replay.py")
    text = "Call to deprecated function update (removal in version 0.7: switch to pre_adapt and post_adapt)"
    with warnings.catch_warnings(record=True) as log:
        with quieted(False):
            warnings.simplefilter("once", DeprecationWarning)  # what the host does before warning
            warnings.warn_explicit(text, **where)
            warnings.warn_explicit("a deprecation that is ours to fix", **where)
        assert [str(w.message) for w in log] == ["a deprecation that is ours to fix"]
        with quieted(True):
            warnings.simplefilter("once", DeprecationWarning)
            warnings.warn_explicit(text, **where)
        assert str(log[-1].message) == text
