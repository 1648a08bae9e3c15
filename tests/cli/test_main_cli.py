"""The `vlbridge` entry point: every flag of every subcommand says what it does and what it defaults to."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from vlbridge.cli import retention
from vlbridge.cli.evaluate import retention_parser
from vlbridge.cli.main import build_parser, main


def _parsers(parser: argparse.ArgumentParser, name: str = "vlbridge") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """`parser` and every subcommand's parser below it, by command line."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {word}")


def _worth_showing(default: object) -> bool:
    """Whether a help line should name this default (not for None, a switch's False or an empty list)."""
    return default is not None and default is not False and default != [] and default is not argparse.SUPPRESS


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    return [*_parsers(build_parser()), ("vlbridge eval text-retention", retention_parser(retention))]


@pytest.mark.parametrize("name, parser", _all_parsers(), ids=[name for name, _ in _all_parsers()])
def test_every_flag_has_help_text_that_shows_its_default(name: str, parser: argparse.ArgumentParser) -> None:
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        flag = "/".join(action.option_strings) or action.dest
        assert action.help, f"`{name}` {flag} has no help text"
        if _worth_showing(action.default):
            assert "default" in formatter._expand_help(action), f"`{name}` {flag}: its help hides the default"


def test_train_help_shows_how_to_override_a_recipe_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--set stages.1.steps=50" in text and "--set data.synth.n=200" in text
