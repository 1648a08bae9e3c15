"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A crash mid-write leaves the previous file (or none), never a truncated one, so checkpoints and outputs are never lost.
What a kill does leave is the temporary file, `.<target>.vlbridge-<random>.tmp`; `remove_stale` deletes those (and
only those) when a run resumes, so a killed model save does not keep its partial copy on disk for good.
`write_safetensors` writes weight files this way, their data starting on a 64-byte boundary so a loader can use the
mapped tensors in place, aligned as freshly allocated ones (`vlbridge.model.weights.assign`).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

ALIGNMENT = 64
"""Bytes torch's CPU allocator aligns tensors to; weight files put their data section on such a boundary."""
PADDING_KEY = "alignment_padding"
"""The metadata entry whose spaces put a safetensors file's data section on an ALIGNMENT boundary."""
_MARK = "vlbridge-"
_TEMP_NAME = re.compile(rf"^\..+\.{_MARK}[^./]+\.tmp$")  # mkstemp's random part has no dot


def _current_umask() -> int:
    """The process's umask, read without changing it where the OS reports it (Linux: /proc/self/status). Elsewhere it
    is read by setting and restoring it, during which a file another thread creates would get a wrong mode."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed to `target`, on error removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_MARK}", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file a plain open()'s mode
        with tmp_path.open("rb+") as handle:
            os.fsync(handle.fileno())  # on disk before the rename, so a machine crash cannot leave a torn file
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: str | Path, text: str) -> None:
    """Atomically write a text file."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _header_lengths(path: Path) -> tuple[int, int]:
    """A safetensors file's header length as stored (the 8-byte prefix) and without its trailing padding spaces."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return length, len(handle.read(length).rstrip(b" "))


def write_safetensors(target: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Atomically write `tensors` (contiguous) as a safetensors file whose data section starts on an ALIGNMENT
    boundary, so tensors whose byte sizes are multiples of it are mapped aligned and load without a copy.

    The safetensors library pads its JSON header to 8 bytes only; when that leaves the data off the boundary the file
    is written again with a metadata entry of spaces (PADDING_KEY) sized to reach it. Writing twice costs time on save
    (7 files in 8), which is rarer than loading."""
    metadata = {"format": "pt"}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        stored, raw = _header_lengths(tmp)
        if (8 + stored) % ALIGNMENT:
            entry = len(f',"{PADDING_KEY}":""')  # the entry's bytes besides its spaces
            wanted = raw + entry + (-(8 + raw + entry)) % ALIGNMENT
            save_file(tensors, str(tmp), metadata={**metadata, PADDING_KEY: " " * (wanted - raw - entry)})


def remove_stale(folder: str | Path) -> list[Path]:
    """Delete the temporary files `atomic_path` left in `folder` when its process was killed; returns them.

    Only files of its own naming pattern are touched, never a user's file. A live write's file has that name too, so
    call it only on folders no other process is writing to (a resumed run's own folders)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if _TEMP_NAME.match(p.name) and p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
