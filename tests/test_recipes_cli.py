"""One option syntax and self-explaining help across the CLI and the recipes: ``recipe --help`` lists the
recipes, ``recipe NAME --help`` shows that recipe's options with defaults, ``--set [METHOD.]KEY=VALUE`` is
parsed one way everywhere, lists are space-separated."""
from __future__ import annotations

import pytest

from distill_apps.cli import RECIPES, main
from distill_apps.errors import ConfigError
from distill_apps.options import method_options, parse_sets, split_list


def test_recipe_help_lists_every_recipe_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["recipe", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("recipes:")[1].strip().splitlines()]
    assert listed == sorted(RECIPES)
    for line in out.split("recipes:")[1].strip().splitlines():
        assert len(line.split(None, 1)[1]) > 20 and "unavailable" not in line  # a sentence, not just a name
    assert main(["recipe"]) == 2 and "recipes:" in capsys.readouterr().err  # no name: the list, exit 2


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_name_help_shows_its_options_and_defaults(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["recipe", name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"distill-apps recipe {name}" in out
    assert "--json" in out and out.count("(default:") >= 5
    assert "--set [METHOD.]KEY=VALUE" in out


def test_recipe_choices_and_list_spelling(capsys):
    with pytest.raises(SystemExit):
        main(["recipe", "federated", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    assert "{oneshot,distilled_fedavg,fedavg}" in out and "(default: ['oneshot', 'distilled_fedavg', 'fedavg'])" in out
    # the comma spelling of a list is refused with the fix, through the CLI's error path (exit 2)
    assert main(["recipe", "continual", "--methods", "reservoir,dm", "--experiences", "2"]) == 2
    assert "space-separated" in capsys.readouterr().err


def test_set_syntax_is_one_function():
    assert parse_sets(["lr_img=0.5", "dsa.outer_loop=10", "init=noise", "dp-dm.releases=3"]) == {
        None: {"lr_img": 0.5, "init": "noise"}, "dsa": {"outer_loop": 10}, "dp-dm": {"releases": 3}}
    # plain keys go to every method that has them; METHOD.KEY to that method, over presets
    opts = method_options(["batch_real=32", "dm.lr_img=2", "epsilon=3"], ["dm", "dp-dm"],
                          presets={"dp-dm": {"releases": 5}})
    assert opts == {"dm": {"batch_real": 32, "lr_img": 2}, "dp-dm": {"batch_real": 32, "epsilon": 3, "releases": 5}}
    with pytest.raises(ConfigError, match="no method of this run"):
        method_options(["bogus=1"], ["dm", "dsa"])
    with pytest.raises(ConfigError, match="addresses dsa"):
        method_options(["dsa.outer_loop=1"], ["dm"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sets(["lr_img"])
    assert method_options(["bogus=1"], ["dm"]) == {"dm": {"bogus": 1}}  # one method: its own check reports it
    assert split_list(["dm", "dsa"], "--methods") == ["dm", "dsa"]
    with pytest.raises(ConfigError, match="--methods dm dsa"):
        split_list(["dm,dsa"], "--methods")


def test_distill_set_addresses_its_method(tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    assert main(["distill", "--method", "random", "--ipc", "1", "--no-eval", "--out", str(out), "--set",
                 "dm.lr_img=1"]) == 2
    assert "addresses dm" in capsys.readouterr().err
