"""`vlbridge bench profile`: the table, the paper comparison, JSON and files, and its errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from tiny_vlm import PROFILE_TINY
from vlbridge.cli import bench
from vlbridge.errors import ConfigError


def run(argv: list[str]) -> int:
    """Parse `argv` with only the bench subcommand registered (as cli/main.py will) and run it."""
    parser = argparse.ArgumentParser(prog="vlbridge")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(PROFILE_TINY))
    return path


def test_prints_the_flops_table(tiny_yaml: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(["bench", "profile", str(tiny_yaml), "--text-tokens", "8", "--set", "connector.name=pool"]) == 0
    out = capsys.readouterr().out
    header = "| model | connector | visual tokens | vision_encoder | connector | prefusion | language_model | total |"
    assert out.count(header) == 2  # paper and executed conventions
    assert "| tiny [connector.name=pool] | pool | 4 |" in out  # 16 patches pooled 2x2
    assert "8 text tokens" in out and "Decode state per image" in out
    assert "Against LLaVA-Mini" not in out  # only the presets have paper figures


def test_presets_are_set_beside_the_paper(capsys: pytest.CaptureFixture) -> None:
    assert run(["bench", "profile", "llava-v1.5-7b"]) == 0
    out = capsys.readouterr().out
    assert "Against LLaVA-Mini Table 14" in out and "43 text tokens" in out
    assert "| llava-v1.5-7b | vision_encoder | 0.349 | 0.349 |" in out
    assert "| llava-v1.5-7b | language_model | 8.180 | 8.177 | +0.0% (agrees) |" in out


def test_measure_writes_files_and_json(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_dir = tmp_path / "profile"
    argv = ["bench", "profile", str(tiny_yaml), "--text-tokens", "4", "--measure", "--in-process"]
    assert run([*argv, "--repeats", "1", "--warmup", "0", "--out", str(out_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["measurements"]["tiny"]["latency_ms"] > 0
    assert report["profiles"][0]["visual_tokens"] == 16
    assert {p.name for p in out_dir.iterdir()} == {"profile.md", "profile.json", "profile.png"}
    assert "Measured prefill" in (out_dir / "profile.md").read_text()


def test_bad_model_and_text_length_raise(tiny_yaml: Path) -> None:
    with pytest.raises(ConfigError, match="preset"):
        run(["bench", "profile", "no-such-model"])
    with pytest.raises(ConfigError, match="--text-tokens"):
        run(["bench", "profile", str(tiny_yaml), "--text-tokens", "0"])
