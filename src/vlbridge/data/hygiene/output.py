"""Writing what a hygiene step kept (a LLaVA JSON list) and what it removed (a JSON Lines report), atomically.

The kept records are written as read (id, image or video path(s) as written, conversations), so the new file reads
against the same image folder as the old one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vlbridge.atomic import write_text
from vlbridge.data.llava_json import Record


def record_json(record: Record) -> dict[str, Any]:
    """A record as LLaVA writes it: `image` (or `video`) one path, a list of paths, or absent."""
    data: dict[str, Any] = {"id": record.id}
    for key, paths in (("image", record.images), ("video", record.videos)):
        if paths:
            data[key] = paths[0] if len(paths) == 1 else list(paths)
    data["conversations"] = [dict(turn) for turn in record.conversations]
    return data


def write_records(path: str | Path, records: Sequence[Record]) -> None:
    """The records as one LLaVA JSON list."""
    write_text(path, json.dumps([record_json(r) for r in records], ensure_ascii=False, indent=1) + "\n")


def write_report(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line (JSON Lines)."""
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
