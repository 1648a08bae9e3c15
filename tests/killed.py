"""Leaving what a process killed mid-write leaves: for tests of the cleanup a resumed run does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import vlbridge

SRC = str(Path(vlbridge.__file__).parents[1])


def killed_mid_write(target: Path) -> None:
    """Run a process that is SIGKILLed inside `atomic_path(target)`, leaving what a real kill leaves behind."""
    code = (
        "import os, signal, sys\n"
        "from vlbridge.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half a file')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == -signal.SIGKILL
