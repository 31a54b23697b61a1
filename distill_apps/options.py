"""The one option syntax of the command line and the recipes: ``--set KEY=VALUE`` (repeatable).

* ``--set KEY=VALUE`` sets a method option for every method the command runs that has that option (the API
  spelling is ``config={"KEY": VALUE}``). A key that none of them knows is an error listing the known ones.
* ``--set METHOD.KEY=VALUE`` sets it for ``METHOD`` only: the way to address one method among several (recipes
  and benchmarks that run several methods). It overrides a plain ``KEY=VALUE`` for that method.
* ``VALUE`` is read as YAML: ``3``, ``0.1``, ``true``, ``null``, ``[1, 2]``, or a string.

The other flags follow one spelling too: lists are space-separated (``--methods dm dsa``, ``--ipc 1 10``,
``--seeds 0 1 2``) and ``--steps`` is the number of distillation steps (omitted: the method's preset).
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, Iterable, Sequence

from .errors import ConfigError

__all__ = ["parse_sets", "method_options", "split_list", "add_set_argument", "HelpFormatter", "make_parser"]

SET_HELP = ("method option, repeatable: KEY=VALUE for every method that has KEY, METHOD.KEY=VALUE for one "
            "method (VALUE read as YAML)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` that shows every option's default (and keeps the description's line breaks); options whose help
    already says their default, flags (default off) and options without a default (None, []) are left as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        unset = action.default is None or action.default is False or action.default == []
        if unset or "default" in help_text.lower():
            return help_text
        return super()._get_help_string(action)


VERBOSE_HELP = "show every warning and log line of the host libraries, not only those that concern you"


class CommandParser(argparse.ArgumentParser):
    """The parser :func:`make_parser` returns: it has ``--verbose``, and parsing applies
    :func:`distill_apps.quiet.quiet_hosts` (host libraries' noise filtered unless ``--verbose``)."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        from .quiet import quiet_hosts

        quiet_hosts(getattr(ns, "verbose", False))
        return ns, rest


def make_parser(prog: str, description: str | None = None, **kw: Any) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` for a command, recipe or benchmark whose ``--help`` shows defaults and choices, with
    ``--verbose``; parsing its arguments quiets the host libraries (:mod:`distill_apps.quiet`) unless given."""
    ap = CommandParser(prog=prog, description=description, formatter_class=HelpFormatter, **kw)
    ap.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return ap


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--set`` option, spelled and explained the same way everywhere."""
    parser.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE", help=SET_HELP)


def parse_sets(items: Iterable[str]) -> dict[str | None, dict[str, Any]]:
    """``--set`` items as ``{None: {plain keys}, METHOD: {keys for that method}}``."""
    import yaml

    out: dict[str | None, dict[str, Any]] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE or METHOD.KEY=VALUE (e.g. --set lr_img=0.1 or --set "
                              f"dsa.outer_loop=10); got {item!r}.")
        method, dot, opt = key.rpartition(".")
        if dot and (not method or not opt):
            raise ConfigError(f"--set {item!r}: write METHOD.KEY=VALUE, e.g. --set dsa.outer_loop=10.")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc}).") from exc
        out.setdefault(method if dot else None, {})[opt if dot else key] = parsed
    return out


def _known_options(method: str) -> set[str] | None:
    """Option names of a registered method (None for names that are not methods, e.g. replay memories)."""
    from .engine import METHODS

    if method not in METHODS:
        return None
    return {f.name for f in fields(METHODS.get(method).Config)}


def method_options(items: Iterable[str], methods: Sequence[str], *,
                   presets: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Options of each of ``methods`` from ``--set`` items, on top of ``presets`` (a recipe's own defaults).

    Plain keys go to every method whose options include them (to every method when only one runs, so an
    unknown key is reported by the method's own check); ``METHOD.KEY`` goes to that method, which must be one
    of ``methods``.
    """
    sets = parse_sets(items)
    methods = list(dict.fromkeys(methods))
    stray = sorted(m for m in sets if m is not None and m not in methods)
    if stray:
        raise ConfigError(f"--set addresses {', '.join(stray)}, which this run does not include (it runs "
                          f"{', '.join(methods) or 'no method'}); write METHOD.KEY=VALUE for one of those.")
    known = {m: _known_options(m) for m in methods}
    plain = sets.get(None, {})
    if len(methods) > 1:
        unknown = sorted(k for k in plain if not any(k in (known[m] or ()) for m in methods))
        if unknown:
            names = sorted(set().union(*(known[m] or set() for m in methods)))
            raise ConfigError(f"--set {', '.join(unknown)}: no method of this run ({', '.join(methods)}) has that "
                              f"option. Known options: {', '.join(names)}.")
    out = {}
    for m in methods:
        opts = dict((presets or {}).get(m, {}))
        opts.update({k: v for k, v in plain.items() if len(methods) == 1 or k in (known[m] or ())})
        opts.update(sets.get(m, {}))
        out[m] = opts
    return out


def split_list(values: Sequence[str], flag: str) -> list[str]:
    """A space-separated list flag's values, refusing the comma spelling with the fix (one spelling only)."""
    bad = [v for v in values if "," in v]
    if bad:
        raise ConfigError(f"{flag} takes space-separated values (e.g. {flag} {' '.join(bad[0].split(','))}); "
                          f"got {bad[0]!r}.")
    return list(values)
