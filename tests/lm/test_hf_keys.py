"""HF config/weight conversion: both config layouts, family defaults, refusals, tied lm_head."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vlbridge.errors import ConfigError
from vlbridge.lm import lm_config_from_hf, lm_config_to_hf, lm_state_from_hf

SIZES = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def test_transformers4_llama_layout() -> None:
    cfg = lm_config_from_hf(
        {"model_type": "llama", **SIZES, "rope_theta": 500000.0, "rope_scaling": None, "num_key_value_heads": 2}
    )
    assert cfg.rope_theta == 500000.0
    assert cfg.num_key_value_heads == 2
    assert cfg.head_dim is None and cfg.resolved_head_dim == 16
    assert not cfg.attention_bias and not cfg.tie_word_embeddings
    assert cfg.max_position_embeddings == 2048  # LlamaConfig's default when the file omits it
    assert cfg.initializer_range == 0.02  # LlamaConfig's default
    assert lm_config_from_hf(lm_config_to_hf(replace(cfg, initializer_range=0.0625))).initializer_range == 0.0625


def test_transformers5_layout_and_qwen2_biases() -> None:
    hf = {"model_type": "qwen2", **SIZES, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    cfg = lm_config_from_hf({**hf, "tie_word_embeddings": True, "use_sliding_window": True, "head_dim": 32})
    assert cfg.rope_theta == 1e6
    assert cfg.attention_bias and cfg.tie_word_embeddings
    assert cfg.resolved_head_dim == 32
    assert cfg.num_key_value_heads == 4  # absent: one kv head per query head
    assert cfg.eos_token_id is None and cfg.max_position_embeddings == 32768


def test_mistral_is_read_as_llama_structure() -> None:
    cfg = lm_config_from_hf({"model_type": "mistral", **SIZES, "sliding_window": 4096})
    assert not cfg.attention_bias
    assert lm_config_to_hf(cfg)["model_type"] == "llama"


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "llama3"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"model_type": "gpt2"}, "gpt2"),
    ],
)
def test_unsupported_configs_raise(extra: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        lm_config_from_hf({"model_type": "llama", **SIZES, **extra})


def test_missing_size_key_is_named() -> None:
    sizes = dict(SIZES)
    del sizes["intermediate_size"]
    with pytest.raises(ConfigError, match="intermediate_size"):
        lm_config_from_hf({"model_type": "llama", **sizes})


def test_state_adds_tied_head_and_drops_inv_freq() -> None:
    cfg = lm_config_from_hf({"model_type": "llama", **SIZES, "tie_word_embeddings": True})
    embed = torch.randn(100, 64)
    state = {"model.embed_tokens.weight": embed, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}
    out = lm_state_from_hf(state, cfg)
    assert set(out) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert out["lm_head.weight"] is embed
    untied = lm_config_from_hf({"model_type": "llama", **SIZES})
    assert "lm_head.weight" not in lm_state_from_hf({"model.embed_tokens.weight": embed}, untied)
