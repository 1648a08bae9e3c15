"""Where vlbridge keeps its per-user disk cache: file hashes (`model/file_hash.py`) and built CPU kernels
(`lm/native.py`). Nothing in it is needed for correctness; deleting it costs only the time to rebuild it."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "VLBRIDGE_CACHE_DIR"


def cache_dir() -> Path:
    """Where the disk cache lives: `$VLBRIDGE_CACHE_DIR`, else `$XDG_CACHE_HOME/vlbridge`, else ~/.cache/vlbridge."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vlbridge"
