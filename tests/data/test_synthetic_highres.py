"""The high-resolution synthetic world: deterministic by seed, answers re-derivable from the scenes, held-out scenes
apart from training ones, baselines near chance, and details that one low-resolution view shrinks below what the
default world taught the encoder (measured on the rendered pixels)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlbridge.data.synthetic import SynthOptions, render_scene, sample_scene, synthesize
from vlbridge.data.synthetic.highres import ANSWERS, DETAIL_TYPES, TYPES, HighResScene, Mark, ask, render
from vlbridge.data.synthetic.highres import sample_scene as sample_highres
from vlbridge.errors import ConfigError

OPTIONS = SynthOptions(n=48, seed=3, image_size=384, world="highres", test_fraction=0.5, val_fraction=0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("highres")
    synthesize(out, OPTIONS)
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_bytes(world: Path, tmp_path: Path) -> None:
    synthesize(tmp_path, OPTIONS)
    for name in ("captions.json", "instruct.json", "test.jsonl", "val.jsonl", "scenes.jsonl", "stats.json"):
        assert (tmp_path / name).read_bytes() == (world / name).read_bytes(), name
    assert (tmp_path / "images/test_000005.png").read_bytes() == (world / "images/test_000005.png").read_bytes()


def test_held_out_answers_follow_from_the_scenes_which_differ_from_training(world: Path) -> None:
    scenes = {row["id"]: row for row in _lines(world / "scenes.jsonl")}

    def scene(row: dict) -> HighResScene:
        data = row["scene"]
        return HighResScene(**{**data, "marks": tuple(Mark(**m) for m in data["marks"])})

    train = {scene(r).signature() for r in scenes.values() if r["split"] == "train"}
    test = _lines(world / "test.jsonl")
    assert [row["type"] for row in test[:4]] == list(TYPES)
    for row in test:
        held_out = scene(scenes[row["question_id"]])
        assert held_out.signature() not in train
        qa = ask(held_out, row["type"])
        assert (qa.question, qa.answer) == (row["question"], row["answer"])
        with Image.open(world / row["image"]) as image:
            assert image.size == (384, 384)
    stats = json.loads((world / "stats.json").read_text())
    for kind in TYPES:  # stratified answers: the majority baseline stays near 1 / answers
        entry = stats["splits"]["test"]["types"][kind]
        assert entry["majority_baseline"] <= 2 / min(len(ANSWERS[kind]), entry["count"]) + 1e-9
    assert stats["detail_types"] == list(DETAIL_TYPES)
    instruct = json.loads((world / "instruct.json").read_text())
    asked = {turn["value"].removeprefix("<image>\n") for turn in instruct[0]["conversations"][::2]}
    assert len(asked) == len(TYPES)  # every training image is asked every type


def _extent(image: Image.Image, size: int, pick: tuple[int, int, int]) -> int:
    """Height in pixels of the pixels nearer to colour `pick` than to white, in `image` resized to `size` px as the
    image processor resizes (bicubic)."""
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC)).astype(float)
    near = np.linalg.norm(pixels - pick, axis=-1) < np.linalg.norm(pixels - 255, axis=-1)
    rows = np.nonzero(near.any(axis=1))[0]
    return int(rows.max() - rows.min() + 1) if len(rows) else 0


def test_one_low_resolution_view_shrinks_the_details_to_half_what_the_encoder_learnt() -> None:
    """The default world (96 px, what the default encoder learnt) shows words and shapes at some pixel size; the
    highres world at 384 px shows them at that size in 192 px views (2x2 crops or AnyRes tiles of 96 px) and at half
    of it in one 96 px view: a word's glyphs about 6 px high, a third of a 32 px patch's side or less."""
    default_text, highres_text = [], {96: [], 192: []}
    default_mark, highres_mark = [], {96: [], 192: []}
    for seed in range(6):
        scene = sample_scene(seed)
        only_text = render_scene(type(scene)(scene.seed, (), scene.text, scene.text_cell, scene.text_x, scene.text_y))
        default_text.append(_extent(only_text, 96, (20, 20, 20)))
        small = [o for o in scene.objects if o.size == "small"]
        if small:
            lone = type(scene)(scene.seed, (small[0],), scene.text, scene.text_cell, 2.0, 2.0)  # the word off-canvas
            default_mark.append(_extent(render_scene(lone), 96, _colour(small[0].colour)))
        rng = random.Random(seed)
        hr = sample_highres(rng, seed)
        hr_text = render(HighResScene(seed, (), hr.text, hr.text_x, hr.text_y), 384)
        hr_mark = render(HighResScene(seed, hr.marks[:1], hr.text, 2.0, 2.0), 384)
        for view in (96, 192):
            highres_text[view].append(_extent(hr_text, view, (20, 20, 20)))
            highres_mark[view].append(_extent(hr_mark, view, _colour(hr.marks[0].colour)))
    word, mark = np.mean(default_text), np.mean(default_mark)
    assert abs(np.mean(highres_text[192]) - word) <= 0.2 * word  # 192 px views: as large as the encoder learnt
    assert abs(np.mean(highres_mark[192]) - mark) <= 0.25 * mark
    assert np.mean(highres_text[96]) <= 0.6 * word and max(highres_text[96]) <= 32 / 4  # one 96 px view: half
    assert np.mean(highres_mark[96]) <= 0.6 * mark and max(highres_mark[96]) <= 32 / 4


def _colour(name: str) -> tuple[int, int, int]:
    from vlbridge.data.synthetic.scenes import COLOURS

    return COLOURS[name]


def test_bad_world_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="world must be one of"):
        synthesize(tmp_path, SynthOptions(n=4, world="hd"))
    with pytest.raises(ConfigError, match="image_size must be >= 192"):
        synthesize(tmp_path, SynthOptions(n=4, world="highres"))
