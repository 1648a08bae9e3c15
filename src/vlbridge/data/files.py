"""Reading data files (text, JSON, JSON Lines) and the image paths they name, with errors that say where and what to do.

Every reader of a dataset, question, reference or label file goes through here, so each reports a bad file the
same way, as a DataError naming the file and the line: text that is not UTF-8 (a Latin-1 or UTF-16 export),
invalid JSON, JSON nested deeper than Python's parser follows (a RecursionError otherwise), a file with nothing in
it. `ImageFolder` is the one check that an image path written in a data file stays inside the image folder the
user named: after following '..' and symlinks, so a record cannot make training or evaluation read
`../../../../etc/passwd`; absolute paths only when the user opts in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from vlbridge.errors import DataError
from vlbridge.files import NotUtf8, decode_utf8

S = TypeVar("S", bound=Sized)

_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # strings (skipped whole) and brackets


def _save_as_utf8(encoding: str) -> str:
    """The fix for a file in `encoding` (iconv's name for it)."""
    return f"save it as UTF-8 (e.g. `iconv -f {encoding} -t UTF-8 FILE > NEW`, or your editor's 'Save with encoding')"


def _decode(data: bytes, path: Path, line: int) -> str:
    """`data`, the file's bytes from line `line` on, as text; DataError at the line of the first byte that is not
    UTF-8 (`vlbridge.files.decode_utf8`)."""
    try:
        return decode_utf8(data, start_of_file=line == 1)
    except NotUtf8 as err:
        where = line + data.count(b"\n", 0, err.offset)
        raise DataError(f"{err.problem}; {_save_as_utf8(err.encoding)}", path, where) from None


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as err:
        problem = "does not exist" if isinstance(err, FileNotFoundError) else f"cannot be read ({err.strerror or err})"
        raise DataError(f"{problem}; check the path", path) from None


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text (a leading byte-order mark dropped); DataError naming the file and line when it
    is not UTF-8 or cannot be read."""
    with _open(path) as handle:
        return _decode(handle.read(), path, 1)


def read_lines(path: Path) -> Iterator[str]:
    """The file's lines as UTF-8 text, line endings kept, decoded one at a time (memory: one line); DataError at the
    first line that is not UTF-8. Lines split at "\\n" only, as JSON Lines and CSV do (a JSON string may hold
    U+2028, which `str.splitlines` would split at)."""
    with _open(path) as handle:
        for number, raw in enumerate(handle, start=1):
            yield _decode(raw, path, number)


def _deepest_line(text: str) -> int:
    """The line where the JSON `text` first reaches its deepest nesting."""
    depth, deepest, at = 0, 0, 0
    for match in _JSON_NESTING.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > deepest:
                deepest, at = depth, match.start()
        elif token in ("]", "}"):
            depth -= 1
    return text.count("\n", 0, at) + 1


def json_error(err: ValueError | RecursionError, text: str, path: Path | None, line: int = 1) -> DataError:
    """The DataError for `err`, raised by decoding JSON `text`, which starts on line `line` of the file `path` (None:
    no location): at the syntax error's line, or at the deepest nesting's for JSON too deep to decode."""
    if isinstance(err, json.JSONDecodeError):
        return DataError(f"not valid JSON ({err.msg} at column {err.colno})", path, line + err.lineno - 1)
    if isinstance(err, RecursionError):
        return DataError(
            "JSON nested deeper than Python's JSON parser can follow; no dataset needs that: flatten the value, or "
            "fix the file if it was written by mistake",
            path,
            line + _deepest_line(text) - 1,
        )
    return DataError(f"not valid JSON ({err})", path, line)


def parse_json(text: str, path: Path | None = None, line: int = 1) -> Any:
    """The JSON value `text` holds (a whole file, or line `line` of a JSON Lines file); DataError at the line on
    invalid or too deeply nested JSON, with no location when `path` is None (the caller adds it)."""
    if not text.strip():
        raise DataError("the file is empty; it must hold JSON", path, line)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise json_error(err, text, path, line) from None


def read_json(path: Path) -> Any:
    """The parsed JSON file; not UTF-8, invalid or too deeply nested JSON raise DataError with the line."""
    return parse_json(read_text(path), path)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object raises DataError there, and
    so does a file without any line."""
    found = False
    for number, raw in enumerate(read_lines(path), start=1):
        if not raw.strip():
            continue
        value = parse_json(raw.rstrip("\r\n"), path, number)
        if not isinstance(value, dict):
            raise DataError(f"expected a JSON object, got {type(value).__name__}; fix the line", path, number)
        found = True
        yield number, value
    if not found:
        raise DataError("the file is empty; a .jsonl file holds one JSON object per line", path)


def nonempty(items: S, path: Path, what: str) -> S:
    """`items`, or DataError naming `path` when it gave none: a run on no data fails later, naming nothing."""
    if not items:
        raise DataError(f"holds no {what}; check that this is the right file and that it was written completely", path)
    return items


ABSOLUTE_OPT_IN = "data.allow_absolute_images: true in a training recipe, --allow-absolute-images for vlbridge eval"


@dataclass(frozen=True)
class ImageFolder:
    """The folder a data file's image paths are relative to; `path(name, ...)` checks a name before anything reads it.

    A name must resolve, with '..' and symlinks followed, inside `root`; an absolute name is refused unless the user
    opted in (`allow_absolute`), and is then taken as written. `must_exist` also checks the file is there.
    """

    root: Path
    allow_absolute: bool = False
    must_exist: bool = True

    @cached_property
    def _resolved_root(self) -> Path:
        return self.root.resolve()

    def path(
        self, name: str, record: str, source: Path | None = None, line: int | None = None, what: str = "image"
    ) -> Path:
        """The image (or video: `what`) file `name` names (`root / name`, unresolved), or DataError naming `record`
        ("record 'r7'", "question 12") and, when given, the data file `source` and `line`: when `name` leads outside
        `root`, is absolute without the opt-in, or (`must_exist`) is missing."""

        def refused(problem: str) -> DataError:
            return DataError(f"{record}: {problem}", source, line)

        if "\x00" in name:  # no file name holds one; the OS would refuse it with a ValueError
            raise refused(f"{what} path {name!r} holds a NUL character; fix the path")
        relative = Path(name)
        if relative.is_absolute():
            if not self.allow_absolute:
                raise refused(
                    f"{what} path {name!r} is absolute, but {what} paths are read relative to the image folder "
                    f"{self.root}; make it relative, or allow absolute paths ({ABSOLUTE_OPT_IN})"
                )
            path = relative
        else:
            path = self.root / relative
            target = path.resolve()
            if not target.is_relative_to(self._resolved_root):
                raise refused(
                    f"{what} path {name!r} leads outside the image folder {self.root} (to {target}); {what} paths "
                    f"must stay inside it: move the {what} into the folder and fix the path"
                )
        if self.must_exist and not path.is_file():
            raise refused(f"{what} file {path} does not exist; fix the path or add the file")
        return path
