"""Flamingo's gated cross-attention: identity at gate 0, media masking, cached decode, gradients and round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny_vlm import IMAGE_TOKEN, tiny_config, tiny_vlm
from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors import ConnectorContext, build_connector
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer
from vlbridge.model import io
from vlbridge.model.vlm import VisionLanguageModel

IMG = IMAGE_TOKEN
SMALL = {"num_latents": 3, "depth": 1, "num_heads": 2, "head_dim": 8, "ff_mult": 2, "max_frames": 2}


def _model(gate: float = 0.0, seed: int = 0, **options: object) -> VisionLanguageModel:
    model = tiny_vlm(tiny_config("gated_xattn", {**SMALL, **options}), seed)
    with torch.no_grad():
        for name, param in model.connector.named_parameters():
            if name.endswith("_gate"):
                param.fill_(gate)
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded rows: two images, one image, no image; (ids, attention_mask)."""
    ids = torch.tensor(
        [
            [1, 5, 6, IMG, 7, 8, IMG, 9, 10, 11],
            [0, 0, 0, 1, 12, IMG, 13, 14, 15, 16],
            [0, 0, 1, 17, 18, 19, 20, 21, 22, 23],
        ]
    )
    return ids, (ids != 0).long()


def _pixels(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _bare_lm_logits(model: VisionLanguageModel, ids: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor):
    """The LM alone, no hooks, on the same input embeddings (the media markers spliced in)."""
    embeds, hooks = model.embed(ids, pixels)
    assert hooks, "gated_xattn must hand hooks to the LM"
    return model.language_model(inputs_embeds=embeds, attention_mask=mask)


def test_one_marker_token_per_image() -> None:
    model = _model()
    assert model.tokens_per_image(16, 16) == 1
    features = model.vision_encoder(_pixels(3))
    out = model.connector(features)
    assert out.shape == (3, 1, 32)
    assert torch.equal(out[2, 0], model.connector.media_marker)


@pytest.mark.parametrize(("every", "layers"), [(1, [0, 1, 2, 3]), (2, [1, 3]), (4, [3])])
def test_blocks_go_before_every_nth_layer(every: int, layers: list[int]) -> None:
    lm = LMConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=4, num_attention_heads=2, vocab_size=10)
    context = ConnectorContext(vision_hidden_size=6, lm_config=lm, block_cls=DecoderLayer)
    connector = build_connector(ConnectorConfig(name="gated_xattn", options={**SMALL, "every": every}), context)
    assert sorted(map(int, connector.layers)) == layers
    hooks = connector.lm_hooks(torch.randn(1, 4, 6), torch.tensor([[False, True, False]]))
    assert sorted(hooks) == layers


@pytest.mark.parametrize("resampler", ["perceiver", "none"])
def test_gates_at_zero_give_the_bare_lm_exactly(resampler: str) -> None:
    model = _model(resampler=resampler)
    ids, mask = _batch()
    with torch.no_grad():
        got = model(ids, attention_mask=mask, pixel_values=_pixels(3)).logits
        want = _bare_lm_logits(model, ids, mask, _pixels(3))
        assert torch.equal(got, want)
        opened = _model(gate=0.5, resampler=resampler)(ids, attention_mask=mask, pixel_values=_pixels(3)).logits
        assert (opened - want).abs().max() > 1e-3, "open gates must change the logits"


def test_positions_without_media_before_them_are_untouched() -> None:
    """With open gates, text before the first marker and a row without images still equal the bare LM exactly."""
    model = _model(gate=0.7)
    ids, mask = _batch()
    with torch.no_grad():
        got = model(ids, attention_mask=mask, pixel_values=_pixels(3)).logits
        want = _bare_lm_logits(model, ids, mask, _pixels(3))
    assert torch.equal(got[0, :3], want[0, :3]) and torch.equal(got[1, 3:5], want[1, 3:5])
    assert torch.equal(got[2, 2:], want[2, 2:])
    assert not torch.allclose(got[0, 3:], want[0, 3:]) and not torch.allclose(got[1, 5:], want[1, 5:])


def test_a_later_image_does_not_reach_earlier_positions() -> None:
    model = _model(gate=0.7)
    ids = torch.tensor([[1, 5, IMG, 6, 7, IMG, 8, 9]])
    first, second = _pixels(2), _pixels(2)
    second[1] = _pixels(1, seed=5)[0]
    with torch.no_grad():
        a = model(ids, pixel_values=first).logits
        b = model(ids, pixel_values=second).logits
    assert torch.equal(a[:, :5], b[:, :5])
    assert (a[:, 5:] - b[:, 5:]).abs().min() > 0


@pytest.mark.parametrize("attend_previous_only", [True, False])
def test_each_position_attends_to_the_media_before_it(attend_previous_only: bool) -> None:
    """At the block itself: after image 2 only image 2 is seen (or images 1 and 2); before image 1 nothing is."""
    model = _model(gate=0.7, attend_previous_only=attend_previous_only)
    image_mask = torch.tensor([[False, True, False, False, True, False, False]])
    features = model.vision_encoder(_pixels(2))
    changed = features.clone()
    changed[0] = torch.randn_like(changed[0])
    x = torch.randn(1, 7, 32)
    with torch.no_grad():
        a = model.connector.lm_hooks(features, image_mask)[0](x)
        b = model.connector.lm_hooks(changed, image_mask)[0](x)
    assert torch.equal(a[:, :1], x[:, :1])
    assert (a[:, 1:4] - b[:, 1:4]).abs().min() > 0
    if attend_previous_only:
        assert torch.equal(a[:, 4:], b[:, 4:])
    else:
        assert (a[:, 4:] - b[:, 4:]).abs().min() > 0


def test_a_padded_batch_equals_each_prompt_alone() -> None:
    """Each row's markers find that row's own images in the batch (images are numbered row-major)."""
    model = _model(gate=0.7)
    ids, mask = _batch()
    pixels = _pixels(3)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, pixel_values=pixels).logits
        first = model(ids[:1], pixel_values=pixels[:2]).logits
        second = model(ids[1:2, 3:], pixel_values=pixels[2:]).logits
    assert torch.allclose(batched[:1], first, atol=1e-5)
    assert torch.allclose(batched[1:2, 3:], second, atol=1e-5)


def test_cached_generation_equals_full_recomputation() -> None:
    model = _model(gate=0.6)
    ids, mask = _batch()
    pixels = _pixels(3)
    new = 5
    out = model.generate(ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=new, eos_token_id=())
    full_mask = torch.cat([mask, torch.ones(3, new, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        full = model(out, attention_mask=full_mask, pixel_values=pixels).logits  # (B, T + new, V)
    t = ids.shape[1]
    assert torch.equal(full[:, t - 1 : -1].argmax(-1), out[:, t:])
    lm = model.language_model
    with torch.no_grad():
        embeds, hooks = model.embed(ids, pixels)
        cache = lm.new_cache(3, t + new)
        steps = [lm.prefill(cache, mask, inputs_embeds=embeds, hooks=hooks)]
        for i in range(new - 1):
            steps.append(lm.decode_step(cache, out[:, t + i : t + i + 1], full_mask[:, : t + i + 1], hooks=hooks))
    assert torch.allclose(torch.stack(steps, dim=1), full[:, t - 1 : -1], atol=1e-4)


def test_gradients_reach_every_parameter() -> None:
    model = _model(gate=0.5).train()
    ids, mask = _batch()
    model(ids, attention_mask=mask, pixel_values=_pixels(3)).logits.square().mean().backward()
    for name, param in model.connector.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_closed_gates_still_get_gradients() -> None:
    model = _model(gate=0.0).train()
    ids, mask = _batch()
    model(ids, attention_mask=mask, pixel_values=_pixels(3)).logits.square().mean().backward()
    gates = {n: p for n, p in model.connector.named_parameters() if n.endswith("_gate")}
    assert len(gates) == 4  # attn and ff gates of the blocks before both layers
    for name, param in gates.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _model(gate=0.4, attend_previous_only=False, resampler="none")
    model.save_pretrained(tmp_path / "ckpt")
    config, rules = io.read_config(tmp_path / "ckpt")
    assert config.connector.options == {**SMALL, "attend_previous_only": False, "resampler": "none"}
    torch.manual_seed(123)
    again = VisionLanguageModel(config).eval()
    io.load_weights(again, tmp_path / "ckpt", rules)
    ids, mask = _batch()
    with torch.no_grad():
        got = again(ids, attention_mask=mask, pixel_values=_pixels(3)).logits
        want = model(ids, attention_mask=mask, pixel_values=_pixels(3)).logits
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"resampler": "qformer"}, r"options\.resampler: expected one of 'perceiver', 'none', got 'qformer'"),
        ({"every": 3}, r"options\.every is 3 but the LM has 2 layers.*at most 2"),
        ({"attend_previous_only": 1}, r"options\.attend_previous_only: expected bool, got int 1"),
        ({"every": 0}, r"connector\.options\.every must be >= 1, got 0"),
        ({"gate_init": 0.1}, r"'gated_xattn' has no option\(s\) gate_init; its options are: num_latents: int = 64"),
    ],
)
def test_bad_options_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _model(**options)
