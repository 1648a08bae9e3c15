"""The language model: a Llama-family decoder, its rotary embedding, KV cache and HF checkpoint conversion."""

from __future__ import annotations

from vlbridge.lm.decoder import DecoderLayer, DecoderLM, RMSNorm
from vlbridge.lm.hf_keys import lm_config_from_hf, lm_config_to_hf, lm_state_from_hf
from vlbridge.lm.kv_cache import KVCache
from vlbridge.lm.rope import RotaryEmbedding, apply_rotary

__all__ = [
    "DecoderLM",
    "DecoderLayer",
    "KVCache",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rotary",
    "lm_config_from_hf",
    "lm_config_to_hf",
    "lm_state_from_hf",
]
