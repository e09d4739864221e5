"""Every option of every command-line tool explains itself in --help."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest


def _parser_of(main):
    """The ArgumentParser a CLI's main() builds, caught at parse_args."""
    caught = {}
    real = argparse.ArgumentParser.parse_args

    def grab(self, *a, **kw):
        caught["parser"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = grab
    try:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
            main(["--help"])
    finally:
        argparse.ArgumentParser.parse_args = real
    return caught["parser"]


@pytest.mark.parametrize("name", ["bench", "gradcheck", "export", "curve", "instances", "compare"])
def test_every_option_has_help(name):
    import importlib

    parser = _parser_of(importlib.import_module(f"minunet.{name}").main)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{name}: {action.option_strings} has no help"
