"""`vlbridge export`: llava-hf (either key layout) and hf-lm directories that vlbridge loads back to equal logits,
and a refusal that exits 2 with the connector's name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlbridge
from tiny_vlm import WIDE_VISION, tiny_config
from vlbridge.cli.main import main
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.vlm import VisionLanguageModel


@pytest.mark.parametrize("legacy", [False, True])
def test_export_llava_hf_round_trips_to_equal_logits(legacy: bool, clip_llava_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["export", str(clip_llava_dir), "--out", str(out), *(["--legacy-keys"] if legacy else [])]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    source, processor = vlbridge.load(clip_llava_dir)
    again, _ = vlbridge.load(out)
    inputs = processor(text="USER: <image>\nwhat colour? ASSISTANT:", images=[Image.new("RGB", (40, 30), (9, 99, 9))])
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, source(**inputs).logits)


def test_export_hf_lm_of_the_embedded_default_is_its_text_model(tmp_path: Path) -> None:
    out = tmp_path / "lm"
    assert main(["export", "--format", "hf-lm", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    source, processor = vlbridge.load(vision=False)
    again, _ = vlbridge.load(out)
    assert again.config.vision is None
    inputs = processor(text="How many shapes are there?")
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, source(**inputs).logits)


def test_export_refusal_exits_2_naming_the_connector(
    clip_llava_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tokenizer = Tokenizer.from_dir(clip_llava_dir)
    image_token_id, vocab_size = tokenizer.token_to_id("<image>"), len(tokenizer)
    config = tiny_config("qformer", vision=WIDE_VISION, image_token_id=image_token_id, lm={"vocab_size": vocab_size})
    VisionLanguageModel(config, tokenizer=tokenizer).save_pretrained(tmp_path / "qformer")
    assert main(["export", str(tmp_path / "qformer"), "--out", str(tmp_path / "out")]) == 2
    assert "connector 'qformer' cannot be exported to llava-hf" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
