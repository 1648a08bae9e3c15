"""Conversion between HF Llama-family causal-LM checkpoints (config.json + weights) and `DecoderLM`.

Reads LlamaConfig / MistralConfig / Qwen2Config dicts (a config.json, or a llava config's `text_config`), both the
transformers 4 layout (`rope_theta`, `rope_scaling`) and the transformers 5 one (`rope_parameters`). Parameter
names are HF's, so the weight map is the identity except for tied embeddings: HF omits `lm_head.weight` from the
saved file when it is tied to `model.embed_tokens.weight`, and old checkpoints carry rotary `inv_freq` buffers.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vlbridge.config import LMConfig
from vlbridge.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

# Keys every config must name (they size the weights); the others fall back to the family's HF default.
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")

# HF class defaults for the optional keys that differ between families.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2},
    "mistral": {"max_position_embeddings": 4096 * 32, "bos_token_id": 1, "eos_token_id": 2},
    "qwen2": {"max_position_embeddings": 32768, "bos_token_id": None, "eos_token_id": None},
}


STALE_BUFFER_SUFFIXES = ("rotary_emb.inv_freq",)
"""Buffers older HF checkpoints saved that are recomputed here (RoPE frequencies); skipped when loading."""


def _rope(hf: dict[str, Any]) -> float:
    """rope_theta from either config layout; any rope scaling other than "default" raises."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "default":
        raise ConfigError(
            f"rope scaling type {kind!r} is not supported (only plain RoPE); use a checkpoint without "
            "rope_scaling / rope_parameters.rope_type, or set it to 'default' if the model was trained without it"
        )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def lm_config_from_hf(hf: dict[str, Any]) -> LMConfig:
    """An LMConfig from a Llama / Mistral / Qwen2 config dict; Qwen2 implies q/k/v biases.

    Sliding-window attention (Mistral, Qwen2 `use_sliding_window`) is ignored: attention is always full, which is
    exact for sequences no longer than the window.
    """
    model_type = hf.get("model_type", "llama")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"language model type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    missing = [k for k in _REQUIRED if k not in hf]
    if missing:
        raise ConfigError(f"the {model_type} config lacks required key(s) {', '.join(missing)}")
    if hf.get("mlp_bias"):
        raise ConfigError("mlp_bias=True is not supported (no Llama-family checkpoint we load uses MLP biases)")
    if model_type == "llama" and hf.get("attention_bias"):
        raise ConfigError(
            "a llama config with attention_bias=True (biases on q/k/v and o_proj) is not supported; "
            "only Qwen2-style q/k/v biases are"
        )
    defaults = _FAMILY_DEFAULTS[model_type]
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    if head_dim == hf["hidden_size"] // heads:
        head_dim = None  # the derived width: keep configs equal whether or not the file spells it out
    return LMConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        hidden_act=hf.get("hidden_act", "silu"),
        max_position_embeddings=hf.get("max_position_embeddings", defaults["max_position_embeddings"]),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope(hf),
        attention_bias=model_type == "qwen2",
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        bos_token_id=hf.get("bos_token_id", defaults["bos_token_id"]),
        eos_token_id=hf.get("eos_token_id", defaults["eos_token_id"]),
        pad_token_id=hf.get("pad_token_id"),
    )


def lm_config_to_hf(cfg: LMConfig) -> dict[str, Any]:
    """A config.json dict for HF: model_type "qwen2" when the config has q/k/v biases, else "llama"."""
    qwen2 = cfg.attention_bias
    hf: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen2 else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.initializer_range,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    if qwen2:
        hf["use_sliding_window"] = False
    else:
        hf.update(attention_bias=False, mlp_bias=False)
    return hf


def lm_state_from_hf(state: dict[str, Tensor], cfg: LMConfig) -> dict[str, Tensor]:
    """HF causal-LM weights -> DecoderLM's: identity, plus lm_head from the embeddings when tied and absent.

    Rotary `inv_freq` buffers of old checkpoints are dropped (RoPE is recomputed); any other mismatch is left for
    the caller's strict load to report.
    """
    out = {k: v for k, v in state.items() if not k.endswith(STALE_BUFFER_SUFFIXES)}
    if cfg.tie_word_embeddings and "lm_head.weight" not in out and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out
