"""What every maintained benchmark shares: its `--quick` and `--out` options, and a results file that starts with where
its figures came from (the command, date, commit, CPU and flags: `vlbridge.bench.provenance`).

A full run writes to benchmarks/results/ (the committed figures), a quick one to a temporary folder: quick figures
come from tiny models and only show that the benchmark runs, so they never replace the committed ones.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from vlbridge.atomic import write_text
from vlbridge.bench.provenance import header, provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "vlbridge-benchmarks"


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first line of the benchmark's docstring, with --quick and --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, a few seconds: shows it runs, figures mean nothing"
    )
    parser.add_argument(
        "--out", type=Path, help=f"results folder (default: benchmarks/results; --quick: {QUICK_RESULTS})"
    )
    return parser


def out_dir(args: argparse.Namespace, folder: str = "") -> Path:
    """The results folder: --out, else `folder` in benchmarks/results for a full run and in a temporary folder for a
    quick one. A quick run may not write into benchmarks/results."""
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS) / folder
    if args.quick and out.resolve().is_relative_to(RESULTS):
        raise SystemExit(f"--quick figures would overwrite the committed results in {RESULTS}; give another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_header(prefix: str = "# ") -> str:
    """The provenance of this process's run, as lines starting with `prefix` ("# " for text, "- " for markdown)."""
    return header(provenance(sys.orig_argv, ROOT), prefix)


class Report:
    """Lines printed as they are measured, then written after the run's provenance to OUT/NAME.txt by `save()`."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.path = out_dir(args) / f"{name}.txt"
        self.lines: list[str] = []

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def save(self) -> None:
        write_text(self.path, run_header() + "\n".join(self.lines) + "\n")
        print(f"results: {self.path}")
