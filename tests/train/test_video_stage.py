"""A training stage on the synthetic video world's own files (`vlbridge data synth-video` output, unchanged): the
frames are sampled as the stage says, the loss is finite and falls, and a bad video is named before any step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_run import TINY_MODEL, recipe, stage

from vlbridge.config import ModelConfig, from_dict
from vlbridge.data.synthetic.video_writer import VideoSynthOptions, synthesize_videos
from vlbridge.errors import DataError
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.pipeline import build_dataset, fit_config, train
from vlbridge.train.recipe import DataRecipe, StageRecipe, recipe_from_dict

pytest.importorskip("av")


@pytest.fixture(scope="module")
def video_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 6-second 48 px clips (four for training)."""
    out = tmp_path_factory.mktemp("video_data")
    synthesize_videos(out, VideoSynthOptions(n=5, seed=0, image_size=48, steps=6, fps=1))
    return out


def _video_stage(**kw: object) -> dict:
    """Batches of all four training clips, so every step sees the same data and its loss can only fall by learning."""
    parts, lr = {"connector": "full", "language_model": "full"}, {"connector": 1e-2, "language_model": 1e-2}
    return stage("video", "causal_lm", kw.pop("data", "instruct.json"), parts, lr, batch_size=4, max_length=256, **kw)


@pytest.mark.slow
def test_a_stage_trains_on_synthetic_videos(video_data: Path, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    spec = recipe(tmp_path / "run", video_data, tiny_tokenizer_dir, [_video_stage(steps=4, video_max_frames=3)])
    run = train(recipe_from_dict(spec))
    rows = [json.loads(line) for line in (run / "video" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]


def test_a_missing_video_is_named_before_any_step(video_data: Path, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    records = json.loads((video_data / "instruct.json").read_text())
    records[1]["video"] = "videos/gone.mp4"
    path = video_data / "gone.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")  # record k on line k + 2
    spec = recipe(tmp_path / "run", video_data, tiny_tokenizer_dir, [_video_stage(steps=1, data="gone.json")])
    with pytest.raises(DataError, match=r"record 'train_1': video file .*gone\.mp4 does not exist") as err:
        train(recipe_from_dict(spec))
    assert (err.value.path, err.value.line) == (path, 3)
    assert not (tmp_path / "run" / "video").exists()


@pytest.mark.parametrize(
    ("connector", "options"),
    [("mini", {"grid": 1, "prefusion_layers": 1}), ("perceiver", {"num_latents": 4, "depth": 1, "max_frames": 8})],
)
def test_a_right_padded_video_batch_gives_the_loss_of_its_samples_one_at_a_time(
    video_data: Path, tiny_tokenizer, connector: str, options: dict
) -> None:
    """Training pads on the right (the processor on the left): per-frame pre-fusion (mini) and time-embedded latents
    (perceiver) must see each row's own frames and text alone."""
    mapping = {**TINY_MODEL, "connector": {"name": connector, "options": options}}
    torch.manual_seed(0)
    model = VisionLanguageModel(fit_config(from_dict(ModelConfig, mapping), tiny_tokenizer, "chatml"))
    spec = {"name": "s", "steps": 1, "data": "instruct.json", "parts": {"connector": "full"}, "video_max_frames": 3}
    dataset, collate, _ = build_dataset(from_dict(StageRecipe, spec), video_data, model, tiny_tokenizer, DataRecipe())
    samples = [dataset[i] for i in range(3)]
    with torch.no_grad():
        batched = model.loss(**collate(samples))
        alone = [(model.loss(**collate([s])), int((s["labels"][1:] != -100).sum())) for s in samples]
    expected = sum(loss * n for loss, n in alone) / sum(n for _, n in alone)
    assert torch.allclose(batched, expected, atol=1e-5)
