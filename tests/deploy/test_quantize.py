"""`vlbridge quantize` and the commands that take its output: chat and eval run a quantised checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import vlbridge
from vlbridge.cli.main import main
from vlbridge.data.synthetic import SynthOptions, synthesize


def test_quantize_command_writes_an_int8_checkpoint_that_chat_and_eval_run(
    clip_llava_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "int8"
    assert main(["quantize", str(clip_llava_dir), "--out", str(out)]) == 0
    assert "int8 weights" in capsys.readouterr().out
    model, processor = vlbridge.load(out)
    assert model.config.quantization == "int8" and model.language_model.lm_head.weight.dtype == torch.int8
    direct, _ = vlbridge.load(clip_llava_dir, quantize="int8")
    ids = processor(text="USER: hello ASSISTANT:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, direct(input_ids=ids).logits)

    chat = ["chat", "--text-only", "--json", "--max-new-tokens", "3", "hello"]
    assert main([*chat, "--model", str(out)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main([*chat, "--model", str(clip_llava_dir), "--quantize", "int8"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == from_file["token_ids"]
    assert len(from_file["token_ids"]) == 3

    data = tmp_path / "synth"
    synthesize(data, SynthOptions(n=60, seed=3, image_size=48))
    args = ["eval", "--model", str(out), "--data", str(data), "--out", str(tmp_path / "eval"), "--limit", "4"]
    assert main([*args, "--max-new-tokens", "2"]) == 0
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert scores["by_type"]["overall"]["n"] == 4
