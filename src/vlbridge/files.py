"""Reading checkpoint files with typed errors: JSON objects and safetensors files.

A checkpoint file that is empty, cut short, garbage or of the wrong kind raises CheckpointError naming the file and
the fix, never the JSON decoder's or safetensors' own exception, so every loader (model, tokenizer, LoRA adapter)
reports a damaged checkpoint the same way and the CLI can print it as one line.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from vlbridge.errors import CheckpointError

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
