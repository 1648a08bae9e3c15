"""SHA-256 of checkpoint files, remembered per file so that loading a chained folder does not re-read its bases.

A chained folder (`model/chain.py`) is checked against the hash of its bases' files on every load: for a 7B base
that is reading and hashing many gigabytes each time. A file's hash is remembered under its resolved path together
with its size, mtime_ns, ctime_ns and inode: in a dict for the process, and on disk in `file-hashes.json` of the
user's cache folder (`vlbridge.cache_dir`), so a later
process skips the read too. Any write to the file (a new size, mtime or ctime; a replaced file's new inode) makes the
entry stale and the file is hashed again. The disk cache is an optimisation only: an unreadable or malformed cache
file is ignored, one that cannot be written is left as it is, and it is written atomically (`vlbridge.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from vlbridge.atomic import write_text
from vlbridge.cache_dir import cache_dir

log = logging.getLogger(__name__)

CACHE_FILE = "file-hashes.json"
CACHE_VERSION = 1

_MEMO: dict[tuple[str, int, int, int, int], str] = {}
"""(resolved path, size, mtime_ns, ctime_ns, inode) -> SHA-256 hex, for this process."""


def hash_file(path: Path) -> str:
    """SHA-256 hex of the bytes of `path` (read in full)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _read_cache(file: Path) -> dict[str, dict[str, int | str]]:
    """The disk cache's entries by resolved path; empty when the file is missing, unreadable or not ours."""
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("version") != CACHE_VERSION or not isinstance(raw.get("files"), dict):
        return {}
    return {k: v for k, v in raw["files"].items() if isinstance(v, dict)}


def _write_cache(file: Path, path: str, entry: dict[str, int | str]) -> None:
    """Add `entry` for `path` to the disk cache (read again first, so entries other processes wrote are kept; those of
    files that no longer exist are dropped, so the cache does not grow with every folder ever loaded)."""
    entries = {k: v for k, v in _read_cache(file).items() if Path(k).is_file()}
    entries[path] = entry
    try:
        write_text(file, json.dumps({"version": CACHE_VERSION, "files": entries}, indent=1) + "\n")
    except OSError as err:  # a read-only home: the cache only saves time, so loading goes on without it
        log.debug("could not write the file-hash cache %s: %s", file, err)


def file_sha256(path: Path) -> str:
    """SHA-256 hex of the file at `path`, from the cache while the file's size, mtime, ctime and inode are unchanged."""
    resolved = path.resolve()
    stat = resolved.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}
    key = (str(resolved), *stamp.values())
    if key in _MEMO:
        return _MEMO[key]
    file = cache_dir() / CACHE_FILE
    entry = _read_cache(file).get(str(resolved), {})
    digest = entry.get("sha256")
    if not isinstance(digest, str) or any(entry.get(field) != value for field, value in stamp.items()):
        digest = hash_file(resolved)
        _write_cache(file, str(resolved), {**stamp, "sha256": digest})
    _MEMO[key] = digest
    return digest
