"""`vlbridge eval text-retention`: the report written atomically, the table, and the exit status of the verdict."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "eval"))

from test_retention import write_checkpoints

from vlbridge.cli import retention
from vlbridge.eval import retention as measure
from vlbridge.eval.retention import LoadMemory


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    return write_checkpoints(tmp_path_factory.mktemp("retention_cli"))


@pytest.fixture(autouse=True)
def _fake_memory(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """The subprocess probe is tested in tests/eval/test_retention.py; here fixed figures keep the CLI test fast."""
    calls = []

    def fake(path, dtype="float32", quantize=None):
        calls.append((Path(path), dtype, quantize))
        return {"full": LoadMemory(100.0, 400.0, 90.0), "text_only": LoadMemory(60.0, 350.0, 50.0)}

    monkeypatch.setattr(measure, "deployment_memory", fake)
    return calls


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vlbridge eval text-retention")
    retention.add_arguments(parser)
    return retention.run(parser.parse_args(argv))


def test_identical_lm_passes_and_writes_the_report(
    ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, _fake_memory: list[tuple]
) -> None:
    out = tmp_path / "reports" / "retention.json"
    argv = ["--base", str(ckpts["base"]), "--model", str(ckpts["vlm"]), "--data", str(ckpts["text"])]
    argv += ["--qa", str(ckpts["qa"]), "--max-new-tokens", "4", "--window", "32", "--out", str(out)]
    assert _run(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["retained"] and report["window"] == 32 and report["perplexity"]["relative_difference"] == 0.0
    assert report["qa"]["accuracy"] == {"base": 0.5, "model": 0.5}
    assert _fake_memory == [(ckpts["vlm"], "float32", None)]  # the VLM's deployments, full against text-only
    assert report["memory"]["text_only_saving"]["load_rss_mb"] == pytest.approx(0.4)
    assert not list(out.parent.glob(".*.tmp")), "temporary files left behind"
    lines = printed.splitlines()
    assert lines[0].split() == ["metric", "base", "vlm", "difference", "verdict", "(+-3%)"]
    assert lines[1].startswith("perplexity") and lines[1].split()[3:] == ["+0.00%", "within"]
    assert lines[2].split() == ["qa", "accuracy", "0.5000", "0.5000", "+0.00%", "within"]
    assert "RSS of load" in printed and "40.0%" in printed and "text ability retained" in printed


def test_perturbed_lm_fails_with_status_1(
    ckpts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "r.json"
    argv = ["--base", str(ckpts["base"]), "--model", str(ckpts["perturbed"]), "--data", str(ckpts["text"])]
    assert _run([*argv, "--no-memory", "--out", str(out), "--json"]) == 1
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert not report["retained"] and "memory" not in report
    assert not report["perplexity"]["within_tolerance"]


def test_quantize_loads_the_model_side_int8(ckpts: dict[str, Path], tmp_path: Path, _fake_memory: list[tuple]) -> None:
    out = tmp_path / "r.json"
    argv = ["--base", str(ckpts["base"]), "--model", str(ckpts["base"]), "--data", str(ckpts["text"])]
    _run([*argv, "--window", "24", "--quantize", "int8", "--out", str(out)])
    report = json.loads(out.read_text())
    ppl = report["perplexity"]
    assert report["quantize"] == "int8" and ppl["base"]["nll_sum"] != ppl["model"]["nll_sum"]  # the same checkpoint
    assert _fake_memory == [(ckpts["base"], "float32", "int8")]  # memory of the quantised deployment
