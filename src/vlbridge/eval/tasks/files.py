"""Benchmark files and fields named on the command line, with errors that name the flag or entry to fix.

The files themselves are read by `vlbridge.data.files` (UTF-8, JSON depth, empty files), as every data file is.
JSON Lines files report the line; whole-JSON files (VQAv2, GQA: usually one minified line) report the entry, by
list index or key, since a line number there would point at the whole file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlbridge.errors import DataError


def _require(path: str | Path | None, flag: str, exists: Callable[[Path], bool], what: str, wrong: str) -> Path:
    """`path` as a Path, or a DataError naming the flag: "pass `what`" when it is missing, `wrong` when `exists`
    is false for it."""
    if path is None:
        raise DataError(f"this task needs {flag}; pass {what}")
    path = Path(path)
    if not exists(path):
        raise DataError(f"{flag} {path} {wrong}; check the path")
    return path


def require_file(path: str | Path | None, flag: str) -> Path:
    """`path` as a Path, or a DataError naming the flag when it is missing or not a file."""
    return _require(path, flag, Path.is_file, "the file", "does not exist (or is not a file)")


def require_folder(path: str | Path | None, flag: str) -> Path:
    """`path` as a Path, or a DataError naming the flag when it is missing or not a folder."""
    return _require(path, flag, Path.is_dir, "the folder that holds the images", "is not a folder")


def is_id(value: Any) -> bool:
    """Whether `value` can be a question id: a string or an integer (not a bool)."""
    return isinstance(value, str | int) and not isinstance(value, bool)


def image_name(pattern: str, **fields: Any) -> str:
    """The image file name `pattern` gives for `fields` (str.format), or a DataError naming the bad pattern."""
    try:
        return pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        known = ", ".join(f"{{{name}}}" for name in fields)
        raise DataError(f"image pattern {pattern!r} cannot be filled ({err!r}); it may use {known}") from None
