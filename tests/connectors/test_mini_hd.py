"""LLaVA-Mini HD (`mini` with hd_grid): the processor's crops and whole view, the crops tiled into one grid, pre-fusion
over [tiled crops; whole image; compressed; text] against a hand-built oracle, cached decode, training, the token
count and the checkpoint round trip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlbridge
from tiny_vlm import IMAGE_TOKEN, greedy_by_full_forwards, tiny_config, tiny_vlm
from vlbridge.config import ImageProcessorConfig
from vlbridge.connectors.splice import image_token_mask
from vlbridge.errors import ConfigError, ModalityError
from vlbridge.highres.crops import CropsImageProcessor
from vlbridge.lm.decoder import padding_mask
from vlbridge.lm.loss import IGNORE_INDEX
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.vision.processor import ImageProcessor

SIDE = 32  # 32 px views, 8 px patches: a 4 x 4 patch grid per view, 8 x 8 for the 2 x 2 crops tiled
VIEWS = 5


def hd_model(seed: int = 0, grid: int = 2, layers: int = 2, **kw) -> VisionLanguageModel:
    options = {"grid": grid, "prefusion_layers": layers, "prefusion_init": "random", "hd_grid": 2}
    lm = {"max_position_embeddings": 512}
    return tiny_vlm(tiny_config("mini", options, image_size=SIDE, processor=True, lm=lm, **kw), seed)


def prompt(model: VisionLanguageModel, texts: list[list[int]]) -> torch.Tensor:
    """Ids: texts[0], then for each later text an image followed by that text."""
    ids = list(texts[0])
    for text in texts[1:]:
        ids += [IMAGE_TOKEN] * model.tokens_per_image(SIDE, SIDE) + text
    return torch.tensor(ids)


def test_processor_gives_the_crops_row_major_then_the_whole_image() -> None:
    config = ImageProcessorConfig(size=SIDE, crop_size=SIDE)
    image = Image.new("RGB", (80, 64), (255, 255, 255))
    image.paste((255, 0, 0), (40, 0, 80, 32))  # the top-right quarter red
    views = CropsImageProcessor(config, 2)([image, image])
    assert views.shape == (2, VIEWS, 3, SIDE, SIDE)
    large = ImageProcessor(ImageProcessorConfig(size=2 * SIDE, crop_size=2 * SIDE)).preprocess_one(image)
    assert torch.equal(views[0, 1], large[:, :SIDE, SIDE:]) and torch.equal(views[0, 2], large[:, SIDE:, :SIDE])
    assert torch.equal(views[0, 4], ImageProcessor(config).preprocess_one(image))  # the whole image last
    red = [bool((v[0] > v[1] + 1).float().mean() > 0.5) for v in views[0, :4]]
    assert red == [False, True, False, False]


def test_crops_tile_into_one_grid_row_major() -> None:
    model = hd_model()
    k, s = 2, 4
    # token (crop a, b; patch r, c) sits at row a*s + r, column b*s + c of the tiled grid; encode that as its value
    rows = torch.arange(k)[:, None, None, None] * s + torch.arange(s)[None, None, :, None]  # (a, 1, r, 1)
    cols = torch.arange(k)[None, :, None, None] * s + torch.arange(s)[None, None, None, :]  # (1, b, 1, c)
    value = (rows * 100 + cols).expand(k, k, s, s).reshape(1, k * k * s * s, 1).float()
    whole = torch.full((1, s * s, 1), -1.0)
    tiled, got_whole = model.connector.high_res_views(torch.cat([value, whole], dim=1))
    grid = torch.arange(k * s)
    assert torch.equal(tiled[0, :, 0], (grid[:, None] * 100 + grid[None, :]).reshape(-1).float())
    assert torch.equal(got_whole, whole)


def test_prefusion_runs_over_tiled_crops_whole_image_compressed_and_text_as_an_oracle_builds_it() -> None:
    model = hd_model(seed=2)
    conn = model.connector
    ids = prompt(model, [[1, 5], [6, 7, 8]])[None]
    pixels = torch.randn(1, VIEWS, 3, SIDE, SIDE)
    with torch.no_grad():
        mask = image_token_mask(ids, IMAGE_TOKEN)
        text = model.language_model.embed(ids.masked_fill(mask, 0))[0][~mask[0]]  # (T_text, D)
        projected = conn.projector(model.vision_encoder(pixels[0]).reshape(1, -1, 16))  # (1, 5 * 16, D)
        tiled, whole = conn.high_res_views(projected)
        compressed = conn.compress(tiled)  # (1, 4, D)
        x = torch.cat([tiled[0], whole[0], compressed[0], text])[None]  # the order LLaVA-Mini's code uses
        length = x.shape[1]
        fused = conn._prefuse(x, torch.arange(length)[None], padding_mask(torch.ones(1, length).bool(), length), None)
        want = torch.cat([fused[0, 64 + 16 : 64 + 16 + 4], fused[0, -text.shape[0] :]])  # compressed, then text
        got, _ = model.embed(ids, pixels)
        order = torch.cat([torch.nonzero(mask[0])[:, 0], torch.nonzero(~mask[0])[:, 0]])
        assert torch.allclose(got[0, order], want, atol=1e-5)
        changed = pixels.clone()
        changed[:, 4] = torch.randn(3, SIDE, SIDE)  # the whole image alone: the fused text must read it
        assert not torch.allclose(model.embed(ids, changed)[0][0, -3:], got[0, -3:])


def test_tokens_per_image_is_c_squared_and_the_processor_expands_to_it(tmp_path: Path) -> None:
    from vlbridge.lm.tokenizer_train import train_tokenizer
    from vlbridge.model.processor import processor_for

    tokenizer = train_tokenizer(["what word is written here? cat dog"] * 4, 300)
    torch.manual_seed(0)
    config = tiny_config(
        "mini",
        {"grid": 3, "prefusion_layers": 1, "prefusion_init": "random", "hd_grid": 2},
        image_size=SIDE,
        processor=True,
        image_token_id=tokenizer.token_to_id("<image>"),
        lm={"vocab_size": len(tokenizer), "max_position_embeddings": 512},
    )
    model = VisionLanguageModel(config).eval()
    model.processor = processor_for(model, tokenizer)
    assert model.tokens_per_image(SIDE, SIDE) == 9
    model.save_pretrained(tmp_path / "hd")
    again, processor = vlbridge.load(tmp_path / "hd")
    inputs = processor(text="<image> what word is written here?", images=[Image.new("RGB", (90, 70), (9, 200, 30))])
    assert inputs["pixel_values"].shape == (1, VIEWS, 3, SIDE, SIDE)
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == 9
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
    assert again.config.connector.options["hd_grid"] == 2

    from vlbridge.cli.main import main

    assert main(["tokens", "--model", str(tmp_path / "hd"), "--json"]) == 0


def test_cached_decode_equals_recomputation_in_a_left_padded_batch_with_two_images() -> None:
    model = hd_model(seed=3)
    rows = [prompt(model, [[1, 5], [6], [7, 8]]), prompt(model, [[1], [4, 5]])]
    width = max(len(r) for r in rows)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    pixels = torch.randn(3, VIEWS, 3, SIDE, SIDE)
    got = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=4, eos_token_id=())
    assert torch.equal(got, greedy_by_full_forwards(model, ids, mask, pixels, 4))
    alone = model.generate(input_ids=rows[1][None], pixel_values=pixels[2:], max_new_tokens=4, eos_token_id=())
    assert torch.equal(got[1, -4:], alone[0, -4:])


def test_a_train_step_reaches_every_connector_parameter_and_lowers_the_loss() -> None:
    model = hd_model(seed=4).train()
    ids = prompt(model, [[1, 5], [6, 7, 8, 9]])[None]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, -3:] = ids[0, -3:]
    pixels = torch.randn(1, VIEWS, 3, SIDE, SIDE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(4):
        loss = model.loss(ids, labels, pixel_values=pixels)
        loss.backward()
        if step == 0:
            dead = [n for n, p in model.connector.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not dead, f"no gradient reaches {dead}"
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_bad_options_and_inputs_are_typed_errors() -> None:
    with pytest.raises(ConfigError, match="hd_grid"):
        VisionLanguageModel(tiny_config("mini", {"hd_grid": 0}))
    config = tiny_config("mini", {"hd_grid": 2, "prefusion_layers": 0}, image_size=SIDE, processor=True)
    anyres = replace(config.image_processor, image_grid_pinpoints=[[64, 64]])
    with pytest.raises(ConfigError, match="AnyRes"):
        VisionLanguageModel(replace(config, image_processor=anyres))
    model = hd_model()
    ids = prompt(model, [[1], [5]])[None]
    with pytest.raises(ModalityError, match="crops"):
        model(input_ids=ids, pixel_values=torch.randn(1, 3, SIDE, SIDE))
