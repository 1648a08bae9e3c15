"""Augmentation: deterministic per (seed, sample, epoch, slot); each transform changes pixels within its bounds; a
stage's `augment` reaches the training datasets only, while evaluation reads the plain pixels; recipes type-check it
and refuse it where it does not apply."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "train"))

import tiny_run

from vlbridge.config import ModelConfig, from_dict
from vlbridge.data.hygiene.augment import Augmenter, AugmentOptions
from vlbridge.data.llava_json import load_llava
from vlbridge.errors import ConfigError
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.processor import processor_for
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.pipeline import fit_config
from vlbridge.train.recipe import recipe_from_dict
from vlbridge.train.stage_data import CONVERSATIONS, PAIRS


def _image(seed: int = 0, side: int = 48) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def _pixels(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_sample_and_epoch_give_the_same_image_and_others_differ() -> None:
    options = AugmentOptions(crop=0.3, rotation=10, color_jitter=0.3, seed=1)
    image = _image()
    first, again = Augmenter(options)(image, 5), Augmenter(options)(image, 5)
    assert np.array_equal(_pixels(first), _pixels(again))
    other_epoch = Augmenter(options)
    other_epoch.set_epoch(1)
    variants = [other_epoch(image, 5), Augmenter(options)(image, 6), Augmenter(options)(image, 5, slot=1)]
    variants.append(Augmenter(AugmentOptions(crop=0.3, rotation=10, color_jitter=0.3, seed=2))(image, 5))
    for variant in variants:
        assert variant.size == image.size and not np.array_equal(_pixels(variant), _pixels(first))
    assert np.array_equal(_pixels(Augmenter(AugmentOptions())(image, 5)), _pixels(image))  # all off: untouched


def test_colour_jitter_scales_a_grey_image_within_its_bounds() -> None:
    """On a uniform grey image contrast and saturation change nothing; brightness scales by a factor in [0.8, 1.2]."""
    grey = PIL.Image.new("RGB", (32, 32), (100, 100, 100))
    values = set()
    for index in range(20):
        out = _pixels(Augmenter(AugmentOptions(color_jitter=0.2))(grey, index))
        assert (out == out[0, 0, 0]).all()  # still uniform grey
        values.add(int(out[0, 0, 0]))
    assert min(values) >= 80 and max(values) <= 120 and len(values) > 5


def test_crop_and_rotation_change_pixels_but_keep_size_and_content() -> None:
    """A crop keeps at least 1 - crop of the area, each side at least sqrt((1 - crop) * 3/4) of the image's: on a
    ramp (2x + 2y) the output spans most of the ramp each way. A small rotation moves the corners but leaves the
    centre of a radially symmetric image as it was."""
    y, x = np.mgrid[:64, :64]
    ramp = PIL.Image.fromarray(np.repeat((2 * x + 2 * y).astype(np.uint8)[:, :, None], 3, 2))
    least = 2 * (np.sqrt(0.8 * 3 / 4) * 64 - 2)  # the ramp's rise over the narrowest box, a pixel of resampling off
    for index in range(10):
        out = _pixels(Augmenter(AugmentOptions(crop=0.2))(ramp, index))
        assert out.shape == (64, 64, 3) and not np.array_equal(out, _pixels(ramp))
        assert out[32, -1, 0] - out[32, 0, 0] >= least and out[-1, 32, 0] - out[0, 32, 0] >= least
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 20**2).astype(np.uint8) * 255
    image = PIL.Image.fromarray(np.repeat(disc[:, :, None], 3, 2))
    out = _pixels(Augmenter(AugmentOptions(rotation=15))(image, 3))
    assert not np.array_equal(out, _pixels(image))
    assert np.array_equal(out[24:40, 24:40], _pixels(image)[24:40, 24:40])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    data = tiny_run.make_data(tmp_path_factory.mktemp("data"), n=8)
    tokenizer = Tokenizer.from_dir(tiny_run.make_tokenizer(data, tmp_path_factory.mktemp("tok")))
    model = VisionLanguageModel(fit_config(from_dict(ModelConfig, tiny_run.TINY_MODEL), tokenizer, "chatml"))
    return data, tmp_path_factory.mktemp("run"), processor_for(model, tokenizer)


def _recipe(data: Path, run: Path, augment: dict | None, objective: str = "causal_lm") -> object:
    stage = (
        tiny_run.align_stage()
        if objective == "causal_lm"
        else tiny_run.stage(
            "pairs", "contrastive", "captions.json", {"vision_encoder": "full"}, {"vision_encoder": 1e-3}
        )
    )
    if augment is not None:
        stage["augment"] = augment
    return recipe_from_dict(tiny_run.recipe(run, data, None, [stage]))


@pytest.mark.parametrize("kind", [CONVERSATIONS, PAIRS])
def test_a_stage_augments_its_training_images_and_evaluation_reads_them_plain(tiny, kind) -> None:
    data, run, processor = tiny
    objective = "causal_lm" if kind is CONVERSATIONS else "contrastive"
    augmented = _recipe(data, run, {"crop": 0.3, "rotation": 10, "color_jitter": 0.3}, objective).stages[0]
    plain = _recipe(data, run, None, objective).stages[0]
    train_set = kind.build(augmented, data, processor, _recipe(data, run, None).data)[0]
    plain_set = kind.build(plain, data, processor, _recipe(data, run, None).data)[0]
    record = load_llava(data / "captions.json").items[0]
    evaluated = processor(text=["<image>"], images=[data / record.images[0]], return_tensors="pt")["pixel_values"]

    def pixels(dataset, epoch: int) -> torch.Tensor:
        dataset.set_epoch(epoch)
        return dataset[0]["pixel_values"].reshape(evaluated.shape)

    assert torch.equal(pixels(plain_set, 0), evaluated)  # without augment: what evaluation reads
    first = pixels(train_set, 0)
    assert not torch.equal(first, evaluated) and first.shape == evaluated.shape
    assert torch.equal(pixels(train_set, 0), first) and not torch.equal(pixels(train_set, 1), first)


def test_recipes_check_augment_options(tiny) -> None:
    data, run, _ = tiny
    assert _recipe(data, run, {"rotation": 5}).stages[0].augment == AugmentOptions(rotation=5)
    with pytest.raises(ConfigError, match="crop"):
        _recipe(data, run, {"crop": 1.5})
    with pytest.raises(ConfigError, match=r"unknown|hue"):
        _recipe(data, run, {"hue": 0.1})
    regions = tiny_run.stage("vision", "regions", "regions.jsonl", {"vision_encoder": "full"}, {"vision_encoder": 1e-3})
    regions.update(data_format="regions", augment={"crop": 0.2})
    with pytest.raises(ConfigError, match="augment"):
        recipe_from_dict(tiny_run.recipe(run, data, None, [regions]))
