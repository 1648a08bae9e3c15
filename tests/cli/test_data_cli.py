"""`vlbridge data synth`: the writer's dataset from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vlbridge.cli.main import main


def test_writes_a_dataset_of_the_given_image_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--n", "12", "--seed", "2", "--image-size", "64"]) == 0
    assert "test:" in capsys.readouterr().out
    with Image.open(next((tmp_path / "d/images").iterdir())) as image:
        assert image.size == (64, 64)
