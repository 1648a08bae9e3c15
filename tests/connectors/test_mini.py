"""LLaVA-Mini's mini connector: token counts, compression positions, modality pre-fusion (no leakage, cached decode,
batches of several images and left padding), initialisation from the LM, gradients and the checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlbridge
from tiny_vlm import IMAGE_TOKEN, greedy_by_full_forwards, tiny_config, tiny_vlm
from vlbridge.config import ConnectorConfig, ModelConfig
from vlbridge.connectors.base import FusionCache
from vlbridge.connectors.mini import grid_positions, sincos_2d
from vlbridge.connectors.splice import image_token_mask, splice
from vlbridge.errors import ConfigError, PlaceholderError
from vlbridge.lm.loss import IGNORE_INDEX
from vlbridge.model.vlm import VisionLanguageModel

IMAGE = IMAGE_TOKEN
SIDE = 32  # 32 px images, 8 px patches: a 4 x 4 patch grid


def mini_config(
    grid: int = 1, layers: int = 2, init: str = "random", vocab: int = 100, image: int = IMAGE
) -> ModelConfig:
    """A tiny VLM with the mini connector: 2-layer LM of width 32, a 4 x 4 patch grid per image."""
    options = {"grid": grid, "prefusion_layers": layers, "prefusion_init": init}
    lm = {"vocab_size": vocab, "max_position_embeddings": 256}
    return tiny_config("mini", options, image_size=SIDE, processor=True, image_token_id=image, lm=lm)


def mini_model(seed: int = 0, **kw) -> VisionLanguageModel:
    return tiny_vlm(mini_config(**kw), seed)


def prompt(model: VisionLanguageModel, texts: list[list[int]]) -> torch.Tensor:
    """Ids: texts[0], then for each later text an image followed by that text."""
    k = model.tokens_per_image(SIDE, SIDE)
    ids = list(texts[0])
    for text in texts[1:]:
        ids += [IMAGE] * k + text
    return torch.tensor(ids)


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) of the rows left-padded with 0 to one width."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_num_tokens_equals_output_size(grid: int) -> None:
    model = mini_model(grid=grid)
    features = model.vision_encoder(torch.randn(2, 3, SIDE, SIDE))  # (2, 16, 16)
    assert model.connector(features).shape == (2, model.tokens_per_image(SIDE, SIDE), 32)
    assert model.tokens_per_image(SIDE, SIDE) == grid * grid


def test_positions_are_fixed_sincos_not_parameters() -> None:
    model = mini_model(grid=2)
    parts = {name.split(".")[0] for name in model.connector.state_dict()}
    assert parts == {"projector", "queries", "query_norm", "key_norm", "cross_attn", "prefusion"}
    assert not list(model.connector.buffers()), "positions are computed from the grids, never learned or saved"
    queries, keys = grid_positions(2, 4, 32)
    assert keys.shape == (16, 32) and queries.shape == (4, 32) and not keys.requires_grad
    # patch (1, 2) sits at (1.5, 2.5); query cell (1, 0) of a 2 x 2 grid over 4 x 4 patches at the centre (3, 1)
    assert torch.allclose(keys[1 * 4 + 2], sincos_2d(torch.tensor([1.5]), torch.tensor([2.5]), 32)[0])
    assert torch.allclose(queries[2], sincos_2d(torch.tensor([3.0]), torch.tensor([1.0]), 32)[0])
    q, k = grid_positions(4, 4, 32)
    assert torch.equal(q, k)  # one query per patch: the same positions
    angles = torch.tensor([1.5 / 10000 ** (i / 8) for i in range(8)], dtype=torch.float64)
    assert torch.allclose(keys[6, :16], torch.cat([angles.sin(), angles.cos()]).float())  # row 1 -> first half


def test_positions_cached_under_inference_mode_still_train() -> None:
    grid_positions.cache_clear()
    model = mini_model(grid=2)
    features = torch.randn(1, 16, 16)
    with torch.inference_mode():
        model.connector(features)
    model.connector(features).sum().backward()
    assert model.connector.queries.grad is not None


def test_gradients_reach_every_connector_parameter_through_the_lm_loss() -> None:
    model = mini_model(grid=2, layers=2).train()
    ids = prompt(model, [[1, 5], [6, 7], [8, 9, 10]])[None]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, -3:] = ids[0, -3:]
    out = model(input_ids=ids, pixel_values=torch.randn(2, 3, SIDE, SIDE), labels=labels)
    out.loss.backward()
    params = dict(model.connector.named_parameters())
    assert any(n.startswith("prefusion.1.") for n in params) and "queries" in params
    assert any(n.startswith("cross_attn.") for n in params) and any(n.startswith("projector.") for n in params)
    dead = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


def test_without_prefusion_the_lm_sees_raw_text_and_compressed_tokens() -> None:
    model = mini_model(grid=2, layers=0)
    assert not any(n.startswith("prefusion") for n in model.connector.state_dict())
    ids = prompt(model, [[1, 5], [6, 7]])[None]
    pixels = torch.randn(1, 3, SIDE, SIDE)
    with torch.no_grad():
        mask = image_token_mask(ids, IMAGE)
        text = model.language_model.embed(ids.masked_fill(mask, 0))
        visual = model.connector(model.vision_encoder(pixels))  # (1, 4, D)
        want = model.language_model(inputs_embeds=splice(text, mask, visual))
        assert torch.equal(model(input_ids=ids, pixel_values=pixels).logits, want)


def test_prefusion_init_lm_copies_the_first_layers_exactly() -> None:
    model = mini_model(layers=2, init="lm")
    for block, layer in zip(model.connector.prefusion, model.language_model.model.layers, strict=True):
        got, want = block.state_dict(), layer.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(block.parameters(), layer.parameters(), strict=True))
    random = mini_model(layers=1, init="random")
    layer0 = random.language_model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(random.connector.prefusion[0].self_attn.q_proj.weight, layer0)
    with pytest.raises(ConfigError, match="prefusion_layers 3 exceeds the language model's 2 layers"):
        mini_model(layers=3, init="lm")


def test_config_errors_name_the_option() -> None:
    with pytest.raises(ConfigError, match=r"connector 'mini' has no option\(s\) grids; its options are: grid"):
        VisionLanguageModel(
            ModelConfig(
                language_model=mini_config().language_model,
                vision=mini_config().vision,
                connector=ConnectorConfig(name="mini", options={"grids": 2}),
            )
        )
    with pytest.raises(ConfigError, match=r"connector\.options\.grid must be >= 1, got 0"):
        mini_model(grid=0)
    with pytest.raises(ConfigError, match=r"prefusion_init: expected one of 'lm', 'random', got 'copy'"):
        mini_model(init="copy")
    with pytest.raises(ConfigError, match="square patch grid but got 17 features"):
        mini_model().connector(torch.randn(1, 17, 16))


def test_image_slots_split_across_rows_are_a_placeholder_error() -> None:
    model = mini_model(grid=2)  # 4 slots per image
    ids = torch.tensor([[1] + [IMAGE] * 6 + [5], [1, 5, 6, 7, 8] + [IMAGE] * 2 + [9]])  # 8 slots = 2 images in all
    with pytest.raises(PlaceholderError, match=r"image-token positions \[6, 2\] that are not whole images of 4"):
        model(input_ids=ids, pixel_values=torch.randn(2, 3, SIDE, SIDE))


def test_later_tokens_never_change_earlier_fused_embeddings_or_losses() -> None:
    model = mini_model(grid=1, layers=2)
    ids = prompt(model, [[1, 5, 6], [7, 8, 9, 10, 11]])[None]
    changed = ids.clone()
    changed[0, -2] = 42  # a later (answer) token
    pixels = torch.randn(1, 3, SIDE, SIDE)
    with torch.no_grad():
        fused, _ = model.embed(ids, pixels)
        fused2, _ = model.embed(changed, pixels)
        raw = model.language_model.embed(ids.masked_fill(image_token_mask(ids, IMAGE), 0))
    cut = ids.shape[1] - 2
    assert torch.equal(fused[:, :cut], fused2[:, :cut])
    assert not torch.allclose(fused[:, cut:], fused2[:, cut:])
    assert not torch.allclose(fused[0, -3], raw[0, -3])  # the text really is fused with the image
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, cut - 2 : cut] = ids[0, cut - 2 : cut]  # supervise tokens before the change only
    with torch.no_grad():
        loss = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
        loss2 = model(input_ids=changed, pixel_values=pixels, labels=labels).loss
    assert torch.equal(loss, loss2)


def test_cached_decode_equals_full_recomputation_with_two_images() -> None:
    model = mini_model(seed=3, grid=2, layers=2)
    ids = prompt(model, [[1, 5], [6, 7], [8, 9]])[None]
    pixels = torch.randn(2, 3, SIDE, SIDE)
    got = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=8, eos_token_id=())
    assert torch.equal(got, greedy_by_full_forwards(model, ids, torch.ones_like(ids), pixels, 8))


def test_fuse_step_equals_fusing_the_whole_sequence() -> None:
    model = mini_model(seed=4, grid=2, layers=2)
    rows = [prompt(model, [[1, 5], [6], [7, 8]]), prompt(model, [[1], [4]])]
    ids, mask = left_pad(rows)
    new = torch.tensor([[11, 12], [13, 14]])  # two generated tokens per row
    full_ids, full_mask = torch.cat([ids, new], dim=1), torch.cat([mask, torch.ones_like(new)], dim=1)
    pixels = torch.randn(3, 3, SIDE, SIDE)
    cache = FusionCache(max_length=full_ids.shape[1])
    with torch.no_grad():
        want, _ = model.embed(full_ids, pixels, full_mask)
        model.embed(ids, pixels, mask, cache)
        for i in range(2):
            step_mask = full_mask[:, : ids.shape[1] + i + 1]
            got = model.connector.fuse_step(model.language_model.embed(new[:, i : i + 1]), step_mask, cache)
            assert torch.allclose(got[:, 0], want[:, ids.shape[1] + i], atol=1e-5)


def test_left_padded_batch_with_several_images_and_a_text_row_equals_each_alone() -> None:
    model = mini_model(seed=1, grid=2, layers=2)
    rows = [prompt(model, [[1, 5], [6], [7, 8, 9]]), prompt(model, [[1], [4, 5]]), torch.tensor([1, 6, 7])]
    pixels = torch.randn(3, 3, SIDE, SIDE)  # two for row 0, one for row 1
    ids, mask = left_pad(rows)
    batch = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=6, eos_token_id=())
    assert torch.equal(batch, greedy_by_full_forwards(model, ids, mask, pixels, 6))
    singles = [pixels[:2], pixels[2:], None]
    for i, (row, px) in enumerate(zip(rows, singles, strict=True)):
        alone = model.generate(input_ids=row[None], pixel_values=px, max_new_tokens=6, eos_token_id=())
        assert torch.equal(batch[i, -6:], alone[0, -6:]), f"row {i} differs from its prompt alone"
    text_only = model.language_model(input_ids=rows[2][None])
    assert torch.equal(model(input_ids=rows[2][None]).logits, text_only)  # no image: the base LLM exactly


def test_fusion_cache_is_filled_only_with_prefusion() -> None:
    for layers, filled in ((0, False), (1, True)):
        model = mini_model(layers=layers)
        ids = prompt(model, [[1], [5]])[None]
        cache = FusionCache(max_length=ids.shape[1] + 4)
        with torch.no_grad():
            model.embed(ids, torch.randn(1, 3, SIDE, SIDE), torch.ones_like(ids), cache)
        assert (cache.state is not None) is filled
        if filled:
            assert cache.state.kv.length == 16 + ids.shape[1]  # 16 projected visual tokens + the prompt


def test_save_and_load_round_trip_gives_equal_logits(tmp_path: Path) -> None:
    from PIL import Image

    from vlbridge.lm.tokenizer_train import train_tokenizer
    from vlbridge.model.processor import processor_for

    tokenizer = train_tokenizer(["a red circle left of a blue square", "what colour is it? red"] * 4, 300)
    torch.manual_seed(0)
    config = mini_config(grid=2, layers=2, vocab=len(tokenizer), image=tokenizer.token_to_id("<image>"))
    model = VisionLanguageModel(config).eval()
    model.processor = processor_for(model, tokenizer)
    model.save_pretrained(tmp_path / "mini")
    again, processor = vlbridge.load(tmp_path / "mini")
    inputs = processor(text="<image> what colour is it?", images=[Image.new("RGB", (40, 30), (200, 30, 30))])
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == 4
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)
    assert again.config.connector.options == {"grid": 2, "prefusion_layers": 2, "prefusion_init": "random"}
