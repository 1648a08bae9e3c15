"""CPU seconds per training step of each stage of a recipe, for machines too busy for wall-clock timing.

On a 2-core machine shared by a dozen jobs (load average 15-25) a training step's wall time says more about the
neighbours than the recipe: the default recipe's align steps took 42-45 s of wall time there, ~140x the 0.3 s they
take alone. With one thread (OMP_NUM_THREADS=1: no OpenMP spin-waits, which count as CPU time when a thread's peer is
descheduled), the process's own CPU time per step is close to what the step costs on one core alone. This runs
`vlbridge train` with the given arguments, polls the process's CPU time (/proc/PID/stat: utime + stime) and each
stage's metrics.jsonl, and prints the CPU seconds between consecutive logged steps (the first step of each stage,
with its warm-up, left out). Linux only. Not maintained; the figures it gave are in docs/default-model.md.

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/cpu_seconds_per_step.py --run-dir /tmp/run -- \
        --config configs/default.yaml --set stages.0.steps=6 ... (log_every 1 in every stage)
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the `vlbridge train` arguments")
    args = parser.parse_args()
    command = [sys.executable, "-m", "vlbridge", "train", "--run-dir", str(args.run_dir), *args.train_args[1:]]
    process = subprocess.Popen(command)
    seen: dict[Path, int] = {}
    marks: dict[str, list[float]] = {}
    while process.poll() is None:
        try:
            now = cpu_seconds(process.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        for metrics in args.run_dir.glob("*/metrics.jsonl"):
            lines = metrics.read_text().count("\n")
            if lines > seen.get(metrics, 0):
                marks.setdefault(metrics.parent.name, []).extend([now] * (lines - seen.get(metrics, 0)))
                seen[metrics] = lines
        time.sleep(0.5)
    for stage, times in marks.items():
        steps = [b - a for a, b in itertools.pairwise(times)]
        if steps:
            mean, low, high = sum(steps) / len(steps), min(steps), max(steps)
            print(f"{stage}: {mean:.2f} CPU s/step over {len(steps)} steps (min {low:.2f}, max {high:.2f})")
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()
