"""Every maintained benchmark runs: `python -m benchmarks.NAME --quick` exits 0 and writes its results with their
provenance. Each module in benchmarks/ not named with a leading underscore is a benchmark, so a new one is run too."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vlbridge.bench.provenance import FIELDS

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("[!_]*.py"))


def test_the_suite_is_found() -> None:
    assert {"generate_vs_transformers", "text_only_memory", "connector_comparison"} <= set(BENCHMARKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_quick_run_writes_results_with_provenance(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(out)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = sorted(p for p in out.iterdir() if p.suffix in (".txt", ".md"))
    assert results, f"{name} wrote no results file to {out}"
    for path in results:
        text = path.read_text()
        for field in FIELDS:
            assert re.search(rf"^(# |- ){field}: \S", text, re.MULTILINE), f"{path.name} has no {field!r} line"
        assert f"benchmarks.{name} --quick" in text
