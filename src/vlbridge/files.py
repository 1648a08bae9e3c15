"""Reading files with typed errors: UTF-8 text, and checkpoint files (JSON objects, safetensors).

`decode_utf8` is the one check that text is UTF-8, shared by config and data readers, which turn its NotUtf8 into their
own error naming the file and line. A checkpoint file that is empty, cut short, garbage or of the wrong kind raises
CheckpointError naming the file and the fix, never the JSON decoder's or safetensors' own exception, so every loader
(model, tokenizer, LoRA adapter) reports a damaged checkpoint the same way and the CLI can print it as one line.
"""

from __future__ import annotations

import codecs
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from vlbridge.errors import CheckpointError

_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


class NotUtf8(ValueError):
    """Bytes that are not UTF-8 text: the offset of the first bad byte, what is wrong, and iconv's name of the
    encoding the bytes most likely are (for the fix: `iconv -f ENCODING -t UTF-8`)."""

    def __init__(self, offset: int, problem: str, encoding: str) -> None:
        super().__init__(problem)
        self.offset, self.problem, self.encoding = offset, problem, encoding


def decode_utf8(data: bytes, start_of_file: bool = True) -> str:
    """`data` as UTF-8 text, decoded explicitly (never with the locale's encoding); at the start of a file a UTF-8
    byte-order mark is dropped and another Unicode encoding's mark raises NotUtf8, as do a NUL byte (UTF-16 without
    a mark, or a binary file: no byte of UTF-8 text is 0) and a byte that cannot start or continue a character."""
    if start_of_file:
        for bom, name in _BOMS:
            if data.startswith(bom):
                raise NotUtf8(0, f"is {name} text, which vlbridge does not read", name)
        data = data.removeprefix(codecs.BOM_UTF8)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise NotUtf8(
            nul, "holds a NUL byte, as UTF-16 text without a byte-order mark (or a binary file) does", "UTF-16LE"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        problem = (
            f"is not UTF-8 text (byte 0x{data[err.start]:02x} cannot start or continue a character; the file may be "
            "Latin-1 or another legacy encoding)"
        )
        raise NotUtf8(err.start, problem, "LATIN1") from None


RECOPY = "copy it again from where the checkpoint came from"
"""The fix for a damaged file that vlbridge did not write itself."""
MAX_JSON_BYTES = 256 << 20
"""Far above any real config, index or tokenizer_config file (MBs at most): a larger one is not read into memory."""


def read_json_object(path: Path, fix: str = RECOPY) -> dict[str, Any]:
    """The JSON object stored in `path`; an unreadable or oversized file, invalid JSON or another JSON value raises
    CheckpointError naming the file and `fix`."""
    try:
        size = path.stat().st_size
        text = path.read_bytes() if size <= MAX_JSON_BYTES else None
    except OSError as err:
        raise CheckpointError(f"cannot read {path} ({err.strerror}); make it readable or {fix}") from err
    if text is None:
        raise CheckpointError(f"{path} is {size / 2**20:.0f} MiB, not the small JSON file it should be; {fix}")
    try:
        data = json.loads(text)
    except ValueError as err:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise CheckpointError(f"{path} is not valid JSON ({err}), so it is damaged or cut short; {fix}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not a JSON {type(data).__name__}; {fix}")
    return data


@contextlib.contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """`safe_open(path)` for torch tensors; a missing, empty, truncated or foreign file (found when its header or
    one of its tensors is read) raises CheckpointError naming it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({err}): it is truncated or corrupt; {RECOPY}"
        ) from err
