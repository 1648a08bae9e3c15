"""Shipping a run as the embedded default: bf16 weights that load, the sample image, the stored weights' scores."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open

import vlbridge
from vlbridge.cli.main import main
from vlbridge.cli.ship import SAMPLE, SAMPLE_SEED, SCORES
from vlbridge.data.synthetic import SynthOptions, render_scene, sample_scene, synthesize
from vlbridge.eval.runner import evaluate
from vlbridge.eval.tasks.synthetic import SyntheticTask


def test_ship_stores_bf16_weights_the_sample_and_the_scores_of_what_is_stored(
    clip_llava_dir: Path, tmp_path: Path, capsys
) -> None:
    data, dest = tmp_path / "data", tmp_path / "default"
    synthesize(data, SynthOptions(n=40, seed=1, image_size=48))
    assert main(["ship", str(clip_llava_dir), "--data", str(data), "--dest", str(dest)]) == 0
    assert "overall" in capsys.readouterr().out
    with safe_open(str(dest / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}  # noqa: SIM118
    source, _ = vlbridge.load(clip_llava_dir)
    stored, processor = vlbridge.load(dest)
    for (name, a), (_, b) in zip(source.state_dict().items(), stored.state_dict().items(), strict=True):
        assert b.dtype == torch.float32 and torch.equal(a.to(torch.bfloat16).float(), b), name
    with Image.open(dest / SAMPLE) as image:
        assert image.tobytes() == render_scene(sample_scene(SAMPLE_SEED), 48).tobytes()
    scores = json.loads((dest / SCORES).read_text())
    again = evaluate(stored, processor, SyntheticTask.from_folder(data), tmp_path / "eval").scores
    assert scores == again and scores["by_type"]["overall"]["n"] == len((data / "test.jsonl").read_text().splitlines())
