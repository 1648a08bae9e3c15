"""How the `vlbridge` command reads its input: a parser whose help shows every default, and text checked to be UTF-8.

Python decodes command-line arguments (and, in its UTF-8 mode, standard input) with `surrogateescape`: a byte that is
not UTF-8 becomes a lone surrogate, which the tokenizer, JSON files and YAML recipes cannot hold. Such text is refused
here, where the argument or line it came from is still known, instead of failing later with a TypeError.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from vlbridge.errors import ConfigError


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, unless the help states it already or there is none to show (None,
    a switch's False, an empty list of repeated values); descriptions and epilogs keep their lines (examples)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == []:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with `DefaultsHelpFormatter`; its subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def first_undecodable(text: str) -> int | None:
    """Index of the first lone surrogate in `text` (a byte Python could not decode as UTF-8), None if there is none."""
    return next((i for i, char in enumerate(text) if "\ud800" <= char <= "\udfff"), None)


def printable(text: str) -> str:
    """`text` as it can be shown on one line: undecodable bytes as `\\xNN` (other lone surrogates as `\\udNNN`)."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def check_arguments(argv: Sequence[str]) -> None:
    """ConfigError naming the first argument that is not valid UTF-8 (by position, and the flag before it)."""
    for index, arg in enumerate(argv):
        bad = first_undecodable(arg)
        if bad is None:
            continue
        after = f", after {argv[index - 1]}" if index and argv[index - 1].startswith("-") else ""
        raise ConfigError(
            f"argument {index + 1} ('{printable(arg)}'{after}) is not valid UTF-8 at character {bad + 1}; "
            "pass text and paths as UTF-8 (a UTF-8 locale such as LANG=C.UTF-8, or rename the file)"
        )
