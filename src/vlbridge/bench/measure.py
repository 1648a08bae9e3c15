"""Measuring in a fresh Python process: memory and latency figures that nothing earlier in this process skewed.

A process's resident set only grows (freed tensors stay in the allocator's pools), and one model's warm caches speed
up the next one, so the profiler and the text-only memory probe each run their measurement as
`python -m vlbridge.bench.measure MODULE:FUNCTION '<JSON arguments>'`: the function takes the arguments as one dict
and returns a JSON-able dict, printed as the last line of stdout.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from vlbridge.errors import VlbridgeError


def status_kib(field_name: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in KiB; Linux only."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise VlbridgeError(f"/proc/self/status has no {field_name}; memory is measured on Linux only")


def run_isolated(calls: Mapping[str, tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Run each `name: ("module:function", arguments)` in its own fresh process, all side by side, and return
    `name: result`; a failed run raises with the end of its stderr."""
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "vlbridge.bench.measure", target, json.dumps(arguments)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (target, arguments) in calls.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise VlbridgeError(f"measuring {name} failed in its fresh process:\n{stderr.strip()[-2000:]}")
        results[name] = json.loads(stdout.strip().splitlines()[-1])
    return results


def _call(target: str, arguments: dict[str, Any]) -> dict[str, Any]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(arguments)


if __name__ == "__main__":  # python -m vlbridge.bench.measure MODULE:FUNCTION '<JSON arguments>'
    if len(sys.argv) != 3 or ":" not in sys.argv[1]:
        sys.exit("usage: python -m vlbridge.bench.measure MODULE:FUNCTION '<JSON arguments>'")
    print(json.dumps(_call(sys.argv[1], json.loads(sys.argv[2]))))
