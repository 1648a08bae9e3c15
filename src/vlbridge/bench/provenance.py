"""Where a measurement came from: the command, date, code version and machine behind a benchmark's figures.

A timing is comparable only with one taken on the same CPU, thread count and torch build from the same code: torch's
CPU kernels pick their paths by the vector extensions present (bf16 matmuls run natively only with avx512_bf16 or
AMX), so the CPU model alone does not say which code ran. `provenance()` collects these facts, and `header()` renders
them as the `key: value` lines a results file starts with.
"""

from __future__ import annotations

import datetime
import platform
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

# The x86 extensions that decide torch's fp32, bf16 and int8 CPU paths; the others in /proc/cpuinfo are left out.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
FIELDS = ("command", "date", "commit", "cpu", "cpu flags", "threads", "torch")


def cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """(the CPU's model name, those of CPU_FLAGS it has), from `cpuinfo`; the platform's processor name and no flags
    where there is no such file (not Linux)."""
    if not cpuinfo.is_file():
        return platform.processor() or platform.machine(), []
    model, flags = "", set()
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model or platform.machine(), [flag for flag in CPU_FLAGS if flag in flags]


def git_commit(directory: Path) -> str:
    """HEAD of the git checkout holding `directory`, marked when tracked files differ from it; "unknown" outside one."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} (with uncommitted changes)" if changed else head


def provenance(command: Sequence[str], directory: Path) -> dict[str, str]:
    """The FIELDS of a measurement run now by `command`, from the code checked out in `directory`."""
    model, flags = cpu()
    return {
        "command": shlex.join(command),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(directory),
        "cpu": model,
        "cpu flags": " ".join(flags) or f"none of {' '.join(CPU_FLAGS)}",
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
    }


def header(fields: dict[str, str], prefix: str = "# ") -> str:
    """One `{prefix}key: value` line per field: "# " comments a text file, "- " makes a markdown list."""
    return "".join(f"{prefix}{key}: {value}\n" for key, value in fields.items())
