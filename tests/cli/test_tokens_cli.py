"""`vlbridge tokens`: the table and JSON for the default setting, a preset LM, a real checkpoint and video frames."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vlbridge.cli import tokens
from vlbridge.config import LMConfig, ModelConfig
from vlbridge.errors import ConfigError
from vlbridge.model.vlm import VisionLanguageModel


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Parse and run `vlbridge tokens ARGV` through the module's own parser registration."""
    parser = argparse.ArgumentParser(prog="vlbridge")
    tokens.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tokens", *argv])
    assert args.run(args) == 0
    return capsys.readouterr().out


def test_default_table_shows_the_issue_figures(capsys: pytest.CaptureFixture) -> None:
    out = _run(["--context", "4096"], capsys)
    assert "KV cache           0.5 MiB per token (fp16)" in out
    assert "CLIP ViT-L/14-336: 576 patches per image" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert rows["mlp"][1:5] == ["576", "3520", "7", "288.0"]
    assert rows["qformer"][1:4] == ["32", "4064", "128"]
    anyres = next(line for line in out.splitlines() if line.startswith("anyres 2x2"))
    assert anyres.split()[3:6] == ["2928", "1168", "1"]


def test_json_with_frames_and_a_preset(capsys: pytest.CaptureFixture) -> None:
    facts = json.loads(_run(["--lm", "llama3-8b", "--frames", "64", "--kv-dtype", "bf16", "--json"], capsys))
    assert facts["context"] == 4096 and facts["kv_bytes_per_token"] == 32 * 2 * 8 * 128 * 2
    rows = {row["design"]: row for row in facts["rows"]}
    assert rows["perceiver"]["frames"] == {"n": 64, "tokens": 4096, "fits": True, "kv_bytes": 4096 * 131072}
    assert rows["mlp"]["frames"]["fits"] is False
    assert rows["mini C=1"]["frames_fit"] == 4096


def test_a_checkpoint_brings_its_lm_vision_and_connector(clip_llava_dir: Path, capsys: pytest.CaptureFixture) -> None:
    facts = json.loads(_run(["--model", str(clip_llava_dir), "--json"], capsys))
    assert facts["context"] == 256  # the model's own context window
    assert facts["vision"]["patches_per_image"] == 16  # 32 px / 8 px patches, CLS dropped
    assert facts["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 2  # 2 layers, 2 kv heads of 16, fp16
    own, mlp = facts["rows"][0], next(r for r in facts["rows"] if r["design"] == "mlp")
    assert own["design"] == "this model (mlp)" and own["tokens_per_image"] == mlp["tokens_per_image"] == 16
    assert own["text_left"] == 240
    out = _run(["--model", str(clip_llava_dir), "--context", "100", "--frames", "7"], capsys)
    assert "this model (mlp)" in out and "7 frames" in out


def test_bad_flags_are_config_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ConfigError, match="--anyres-grid must look like 2x2"):
        _run(["--anyres-grid", "2by2"], capsys)
    with pytest.raises(ConfigError, match="context must be a positive number of tokens, got 0"):
        _run(["--context", "0"], capsys)


def test_a_text_llm_checkpoint_assumes_clip_l(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lm = LMConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, vocab_size=50)
    VisionLanguageModel(ModelConfig(language_model=lm, vision=None)).save_pretrained(tmp_path)
    facts = json.loads(_run(["--model", str(tmp_path), "--json"], capsys))
    assert facts["vision"] == {
        "name": "CLIP ViT-L/14-336 (assumed: the checkpoint has no vision encoder)",
        "patches_per_image": 576,
    }
    assert facts["rows"][0]["design"] == "mlp" and facts["kv_bytes_per_token"] == 3 * 2 * 1 * 8 * 2


def test_a_video_is_counted_by_the_models_own_processor(
    clip_llava_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("av")
    import vlbridge
    from video_files import write_mp4

    video = write_mp4(tmp_path / "clip.mp4", 20, 4)  # 5 seconds
    fps, max_frames = 2.0, 7  # 10 frames wanted, capped at 7
    argv = ["--video", str(video), "--fps", str(fps), "--max-frames", str(max_frames)]
    facts = json.loads(_run(["--model", str(clip_llava_dir), *argv, "--json"], capsys))["video"]
    _, processor = vlbridge.load(clip_llava_dir)
    inputs = processor(text="<video>", videos=[video], fps=fps, max_frames=max_frames)
    tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert (facts["frames"], facts["tokens"]) == (int(inputs["video_frames"][0]), tokens) == (7, tokens)
    assert facts["connector"] == "mlp" and facts["text_left"] == 256 - tokens
    default = json.loads(_run([*argv, "--json"], capsys))["video"]
    _, processor = vlbridge.load()
    inputs = processor(text="<video>", videos=[video], fps=fps, max_frames=max_frames)
    assert default["tokens"] == int((inputs["input_ids"] == processor.image_token_id).sum())
    assert f"-> {tokens} visual tokens" in _run(["--model", str(clip_llava_dir), *argv], capsys)
