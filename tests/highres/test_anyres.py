"""AnyRes tiling: grid choice, unpadding and token counts, and every connector through the tiles.

The exact arithmetic against transformers is in tests/model/test_llava_next_hf.py; these tests hold the invariants
that do not need the oracle: the count the processor expands `<image>` to is what the model splices, for every
connector, and cached decoding equals full forwards.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import vlbridge
from tiny_vlm import tiny_config, tiny_vlm
from vlbridge.config import ImageProcessorConfig
from vlbridge.errors import ConfigError, ModalityError, PlaceholderError
from vlbridge.highres import anyres
from vlbridge.model.io import load_weights, read_config
from vlbridge.model.vlm import VisionLanguageModel

PINPOINTS = [[16, 32], [32, 16], [32, 32], [48, 16], [16, 48]]
TILE = 16
IMAGE_TOKEN = 99
# connector -> options that fit the tiny 16 px / 8 px-patch ViT (a 2 x 2 patch grid per view)
SMALL_RESAMPLER = {"num_latents": 4, "depth": 1, "num_heads": 2, "head_dim": 8}
OPTIONS = {
    "tome": {"target": 2},
    "perceiver": SMALL_RESAMPLER,
    "gated_xattn": SMALL_RESAMPLER,
    "qformer": {"num_queries": 4},
    "mini": {"prefusion_layers": 1},
}


def _image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def test_best_resolution_ties_go_to_least_waste_then_first_listed() -> None:
    points = anyres.check_pinpoints(PINPOINTS, TILE)
    assert anyres.select_best_resolution((20, 60), points) == (16, 48)  # a wide strip keeps most on the 1 x 3 grid
    assert anyres.select_best_resolution((10, 30), points) == (16, 32)  # every grid keeps all 300 px: least waste
    assert anyres.select_best_resolution((16, 16), points) == (16, 32)  # all keep 256 px; 16x32 wastes least, first
    assert anyres.select_best_resolution((100, 100), points) == (32, 32)
    assert anyres.select_best_resolution((4, 4), [(32, 32), (16, 16)]) == (16, 16)  # same effective, less waste


def test_fit_size_keeps_aspect_within_the_target() -> None:
    assert anyres.fit_size((10, 30), (16, 48)) == (16, 48)
    assert anyres.fit_size((31, 45), (32, 32)) == (23, 32)  # the width limits; ceil(31 * 32 / 45) = ceil(22.04)
    assert anyres.fit_size((100, 20), (48, 16)) == (48, 10)


@pytest.mark.parametrize("size", [(16, 16), (15, 17), (17, 15), (31, 45), (9, 100), (100, 9), (1, 1), (47, 16)])
def test_packed_length_is_the_counted_tokens(size: tuple[int, int]) -> None:
    points = anyres.check_pinpoints(PINPOINTS, TILE)
    for side in (1, 2, 3):
        views = anyres.num_tiles(size, points, TILE)
        tokens = torch.randn(views, side * side, 5)
        newline = torch.full((5,), 7.0)
        packed = anyres.pack(tokens, size, points, TILE, newline)
        assert packed.shape == (anyres.num_tokens(size, points, TILE, side), 5)
        assert torch.equal(packed[: side * side], tokens[0])  # the base view first
        if packed.shape[0] > side * side:  # a thin strip can keep no grid row at all, in transformers too
            assert torch.equal(packed[-1], newline)  # every grid row ends with the newline


def test_pinpoints_must_be_tile_multiples() -> None:
    with pytest.raises(ConfigError, match="multiple of the tile side 16"):
        anyres.check_pinpoints([[16, 24]], TILE)
    with pytest.raises(ConfigError, match="empty"):
        anyres.check_pinpoints([], TILE)


def test_processor_pads_views_and_reports_sizes() -> None:
    config = ImageProcessorConfig(size=TILE, crop_size=TILE, image_grid_pinpoints=PINPOINTS)
    pixels, sizes = anyres.AnyResImageProcessor(config)([_image(0, 10, 10), _image(1, 40, 39)])
    assert pixels.shape == (2, 5, 3, TILE, TILE)  # 1 + 1x2 views, then 1 + 2x2 views
    assert sizes.tolist() == [[10, 10], [39, 40]]
    assert torch.count_nonzero(pixels[0, 3:]) == 0  # padding views are zeros


def _model(connector: str) -> VisionLanguageModel:
    config = tiny_config(connector, OPTIONS.get(connector), image_size=TILE, processor=True)
    return tiny_vlm(replace(config, image_processor=replace(config.image_processor, image_grid_pinpoints=PINPOINTS)))


def _inputs(model: VisionLanguageModel, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """A left-padded batch, one image per row, each <image> expanded to the model's count for that image."""
    pixels, sizes = anyres.AnyResImageProcessor(model.config.image_processor)(images)
    rows = [[1] + [IMAGE_TOKEN] * model.tokens_per_image(h, w) + [5, 6] for h, w in sizes.tolist()]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "image_sizes": sizes}


@pytest.mark.parametrize("connector", vlbridge.connectors.available())
def test_every_connector_takes_anyres_tiles(connector: str) -> None:
    """Each view goes through the connector: a grid connector's tokens are packed (unpadded, newline-ended rows), any
    other's follow one another; the model splices exactly what `tokens_per_image` counted, and cached decoding
    equals full forwards."""
    model = _model(connector)
    inputs = _inputs(model, [_image(2, 40, 18), _image(3, 13, 30)])
    per_view = model.connector.num_tokens(4)  # a 16 px view is 2 x 2 patches
    for h, w in inputs["image_sizes"].tolist():
        views = anyres.num_tiles((h, w), model.pinpoints, TILE)
        side = math.isqrt(per_view)
        packed = anyres.num_tokens((h, w), model.pinpoints, TILE, side)
        assert model.tokens_per_image(h, w) == (packed if model.connector.spatial else views * per_view)
    got = model.generate(**inputs, max_new_tokens=3, eos_token_id=())
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        for _ in range(3):
            logits = model(ids, mask, inputs["pixel_values"], image_sizes=inputs["image_sizes"]).logits
            assert torch.isfinite(logits).all()
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert torch.equal(got, ids)


def test_anyres_model_refuses_single_view_pixels() -> None:
    model = _model("mlp")
    ids = torch.tensor([[1, IMAGE_TOKEN, 5]])
    with pytest.raises(ModalityError, match="image_sizes"):
        model(ids, pixel_values=torch.zeros(1, 3, TILE, TILE))


def test_save_and_load_round_trip_keeps_anyres(tmp_path) -> None:
    model = _model("pool")
    inputs = _inputs(model, [_image(4, 50, 20)])
    model.save_pretrained(tmp_path)
    saved, rules = read_config(tmp_path)
    assert saved.image_processor.image_grid_pinpoints == PINPOINTS
    again = VisionLanguageModel(saved).eval()
    load_weights(again, tmp_path, rules)
    with torch.no_grad():
        assert torch.equal(again(**inputs).logits, model(**inputs).logits)


def test_pad_to_square_and_pinpoints_exclude_each_other() -> None:
    config = ImageProcessorConfig(size=TILE, crop_size=TILE, image_grid_pinpoints=PINPOINTS, pad_to_square=True)
    with pytest.raises(ConfigError, match="exclude each other"):
        anyres.AnyResImageProcessor(config)


def test_views_that_do_not_fit_the_sizes_are_refused() -> None:
    model = _model("mlp")
    inputs = _inputs(model, [_image(5, 40, 40)])
    with pytest.raises(PlaceholderError, match="do not fit image_sizes"):
        model(**{**inputs, "pixel_values": inputs["pixel_values"][:, :2]})  # a 2 x 2 grid needs 5 views
