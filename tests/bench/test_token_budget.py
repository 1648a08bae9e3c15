"""The token budget: the issue's figures (576 -> 3520, 32 -> 4064; AnyRes 2x2 as the processor counts it, 2928 -> 1168),
the KV formula against a real KV cache, frames at the boundary, and counts taken from the connectors' own num_tokens
and, for AnyRes, equal to what an AnyRes model's processor expands `<image>` to."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlbridge.bench import token_budget
from vlbridge.bench.token_budget import (
    CLIP_L_336,
    LM_PRESETS,
    Design,
    Window,
    budget,
    count_tokens,
    default_designs,
    frames_fit,
    kv_bytes,
    model_row,
    vision_patches,
)
from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors import ConnectorContext, available
from vlbridge.connectors.mlp import MLPConnector
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer, DecoderLM
from vlbridge.model.io import read_config

VICUNA = LM_PRESETS["vicuna-7b"]


def _rows(context: int = 4096, **kw) -> dict:
    return {row.design: row for row in budget(Window(context, VICUNA, **kw), CLIP_L_336, default_designs())}


def test_the_issue_figures_for_a_4096_context() -> None:
    rows = _rows()
    assert vision_patches(CLIP_L_336) == 576
    assert (rows["mlp"].tokens_per_image, rows["mlp"].text_left) == (576, 3520)
    assert (rows["qformer"].tokens_per_image, rows["qformer"].text_left) == (32, 4064)
    # the issue's 2880 -> 1216 counts 5 x 576 before unpadding and row-end tokens; the processor's count adds 48 of them
    assert (rows["anyres 2x2 (mlp)"].tokens_per_image, rows["anyres 2x2 (mlp)"].text_left) == (2928, 1168)
    assert rows["anyres 2x2 (pool)"].tokens_per_image == 144 + 24 * 25
    assert rows["perceiver"].tokens_per_image == 64 and rows["pool"].tokens_per_image == 144
    assert rows["mini C=1"].tokens_per_image == 1 and rows["mini C=12"].tokens_per_image == 144
    assert rows["mini HD 2x2 C=8"].tokens_per_image == 64
    assert rows["mlp"].kv_bytes_per_image == 576 * 2**19  # 0.5 MiB per token: 288 MiB per image
    assert (
        rows["mlp"].frames_fit == 7 and rows["qformer"].frames_fit == 128 and rows["anyres 2x2 (mlp)"].frames_fit == 1
    )


def test_kv_formula_and_a_real_cache_agree() -> None:
    assert kv_bytes(1, VICUNA, 2) == 32 * 2 * 32 * 128 * 2 == 2**19  # Vicuna-7B fp16: 0.5 MiB per token
    assert kv_bytes(1, LM_PRESETS["llama3-8b"], 2) == 32 * 2 * 8 * 128 * 2  # grouped-query attention: 8 kv heads
    tiny = LMConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, vocab_size=10)
    cache = DecoderLM(tiny).new_cache(batch_size=1, max_length=37)
    allocated = sum(t.numel() * t.element_size() for t in cache.keys + cache.values)
    assert kv_bytes(37, tiny, dtype_bytes=4) == allocated


def test_frames_fit_at_the_boundary() -> None:
    assert frames_fit(4096, 576) == 7  # 7 x 576 = 4032 fits, 8 x 576 = 4608 does not
    assert frames_fit(4608, 576) == 8 and frames_fit(4607, 576) == 7
    assert frames_fit(4096, 1) == 4096 and frames_fit(4096, 1, text_reserve=96) == 4000
    assert frames_fit(4096, 0) is None
    with pytest.raises(ConfigError, match="text reserve"):
        frames_fit(4096, 1, text_reserve=4096)
    fits = {c: _rows(c, frames=8)["mlp"].frames for c in (4607, 4608)}
    assert (fits[4608]["fits"], fits[4607]["fits"]) == (True, False)
    assert fits[4608]["tokens"] == 4608 and fits[4608]["kv_bytes"] == 4608 * 2**19
    reserved = _rows(4608, frames=8, text_reserve=1)["mlp"]
    assert reserved.frames_fit == 7 and not reserved.frames["fits"]


def test_counts_come_from_the_connectors_own_num_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    for design in default_designs():
        if design.connector.name in available():
            assert _rows()[design.label].source == "num_tokens", design.label
    monkeypatch.setattr(MLPConnector, "num_tokens", lambda self, n_patches: 7)
    row = _rows()["mlp"]
    assert (row.tokens_per_image, row.source, row.note) == (7, "num_tokens", "documented rule gives 576")
    monkeypatch.setattr(token_budget, "available", lambda: ["mlp"])
    row = _rows()["qformer"]
    assert (row.tokens_per_image, row.source, row.note) == (32, "rule", "connector not registered")


def test_a_connector_that_cannot_be_built_is_marked() -> None:
    context = ConnectorContext(vision_hidden_size=8, lm_config=LMConfig(hidden_size=8), block_cls=DecoderLayer)
    tokens, source, note = count_tokens(ConnectorConfig(name="mlp", depth=0), 16, context)
    assert (tokens, source) == (16, "rule") and note.startswith("could not build mlp: connector.depth must be >= 1")
    with pytest.raises(ConfigError, match="no documented token rule for connector 'nope'"):
        budget(Window(4096, VICUNA), CLIP_L_336, [Design("x", ConnectorConfig(name="nope"))])


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="context must be a positive"):
        _rows(0)
    with pytest.raises(ConfigError, match="--frames must be >= 1"):
        _rows(frames=0)
    with pytest.raises(ConfigError, match="text reserve must be in"):
        _rows(text_reserve=-1)
    with pytest.raises(ConfigError, match="mini grid C must be >= 1"):
        default_designs(mini_grids=(0,))


def test_a_real_model_row_uses_its_connector_and_crop(clip_llava_dir: Path) -> None:
    config, _ = read_config(clip_llava_dir)
    row = model_row(config, Window(256, config.language_model, kv_dtype_bytes=4))
    assert (row.tokens_per_image, row.text_left) == (16, 240)  # (32 / 8)^2 patches, CLS dropped
    lm = config.language_model
    assert row.kv_bytes_per_image == 16 * lm.num_hidden_layers * 2 * lm.num_key_value_heads * lm.resolved_head_dim * 4


@pytest.mark.parametrize("connector", ["mlp", "pool", "perceiver"])
def test_anyres_rows_count_what_an_anyres_model_splices(connector: str) -> None:
    from dataclasses import replace

    from tiny_vlm import tiny_config, tiny_vlm

    config = tiny_config(
        connector, {"num_latents": 4, "depth": 1} if connector == "perceiver" else None, processor=True
    )
    model = tiny_vlm(replace(config, image_processor=replace(config.image_processor, image_grid_pinpoints=[[32, 32]])))
    per_view = model.connector.num_tokens(4)  # 16 px views of 8 px patches
    assert token_budget.anyres_tokens(connector, per_view, (2, 2), 16) == model.tokens_per_image(32, 32)
