"""The synthetic worlds' JSON and JSONL files: one writer for every world (scenes, high resolution, video), atomic,
UTF-8, one object per line for JSONL and an indent of 1 for JSON, so files of one world read like another's."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlbridge.atomic import write_text


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON at `path`, written atomically."""
    write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line at `path`, written atomically."""
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
