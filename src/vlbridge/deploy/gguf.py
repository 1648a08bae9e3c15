"""GGUF import: a llama.cpp GGUF LLM (Llama architecture) -> an HF-layout directory vlbridge (and transformers) load.

Many CPU users hold their LLMs as GGUF. The `gguf` package (extra `gguf`) reads the file and dequantises every tensor
to float32 (F32, F16, BF16, Q8_0, Q4_0/Q4_1, Q5_0/Q5_1 and the K-quants it implements); the directory gets
config.json (LlamaConfig), model.safetensors under HF names, and tokenizer.json / tokenizer_config.json with the
file's special tokens and chat template (deploy/gguf_tokenizer.py). llama.cpp's converter interleaves the rows of
q_proj and k_proj per head (for its RoPE layout); they are put back in HF's order here. The weights are then those
transformers' own GGUF loading yields for the same file, so the logits are equal (tests/deploy/test_gguf_hf.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlbridge.atomic import write_safetensors, write_text
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.lm.hf_keys import lm_config_from_hf, lm_config_to_hf

LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "rope.dimension_count": "head_dim",
    "vocab_size": "vocab_size",
}
"""`llama.<key>` metadata -> LlamaConfig field."""


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as err:
        raise ConfigError("GGUF import needs the `gguf` package: pip install 'vlbridge[gguf]'") from err
    return gguf


def read_metadata(reader: Any) -> dict[str, Any]:
    """Every metadata field of an open GGUFReader as a Python value (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def hf_config(meta: dict[str, Any], tied: bool) -> dict[str, Any]:
    """The HF LlamaConfig dict of a Llama-architecture file; other architectures and RoPE scaling raise."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"the GGUF file's architecture is {arch!r}; vlbridge converts Llama-architecture LLMs (llama.cpp's "
            "'llama': Llama, TinyLlama, SmolLM, Mistral)"
        )
    if meta.get("llama.rope.scaling.type", "none") not in ("none", "linear") or meta.get("llama.rope.scaling.factor"):
        raise CheckpointError("the GGUF file uses RoPE scaling, which vlbridge's Llama decoder does not implement")
    hf: dict[str, Any] = {"model_type": "llama", "tie_word_embeddings": tied}
    for key, field in CONFIG_KEYS.items():
        if f"llama.{key}" in meta:
            hf[field] = meta[f"llama.{key}"]
    hf.setdefault("vocab_size", len(meta.get("tokenizer.ggml.tokens") or ()))
    for name in ("bos", "eos", "padding"):
        token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
        hf[f"{'pad' if name == 'padding' else name}_token_id"] = token_id
    return lm_config_to_hf(lm_config_from_hf(hf))


def _hf_name(name: str) -> str:
    """The HF name of a GGUF tensor (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`)."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in TOP_NAMES:
        return f"{TOP_NAMES[parts[0]]}.{parts[1]}"
    raise CheckpointError(f"GGUF tensor {name!r} is not part of a Llama model; the file is not a plain Llama LLM")


def unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head row interleaving of q_proj / k_proj (`heads` = that projection's head count)."""
    out_features = weight.shape[0]
    half = out_features // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)  # (out, in)


def read_weights(reader: Any, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor dequantised to float32 under its HF name, q/k rows in HF's order."""
    gguf = _gguf()
    out = {}
    for tensor in reader.tensors:
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as err:
            raise CheckpointError(
                f"GGUF tensor {tensor.name} is stored as {tensor.tensor_type.name}, which the gguf package cannot "
                "dequantise; convert a file in F32, F16, BF16, Q8_0, Q4_0/Q4_1 or a K-quant"
            ) from err
        shape = [int(n) for n in reversed(tensor.shape)]  # GGUF lists dimensions fastest-first
        weight = torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))  # a writable copy
        name = _hf_name(tensor.name)
        if ".q_proj." in name:
            weight = unpermute(weight, config["num_attention_heads"])
        elif ".k_proj." in name:
            weight = unpermute(weight, config["num_key_value_heads"])
        out[name] = weight
    return out


def gguf_tokenizer(meta: dict[str, Any]) -> Any:
    """The vlbridge Tokenizer the file describes: its vocabulary, named special tokens, BOS/EOS adding (llama.cpp's
    default: BOS for SentencePiece files) and chat template."""
    from vlbridge.deploy.gguf_tokenizer import build_tokenizer
    from vlbridge.lm.tokenizer import Tokenizer

    tokens = meta.get("tokenizer.ggml.tokens", [])
    named = {}
    for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        named[f"{name}_token"] = tokens[token_id] if token_id is not None and token_id < len(tokens) else None
    default_bos = meta.get("tokenizer.ggml.model") == "llama"
    return Tokenizer(
        build_tokenizer(meta),
        chat_template=meta.get("tokenizer.chat_template"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", default_bos)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        **named,
    )


def convert_gguf(file: str | Path, out: str | Path) -> Path:
    """Write the HF-layout directory of the Llama GGUF `file` to `out` (created; an existing model there is refused)."""
    file, out = Path(file), Path(out)
    if not file.is_file():
        raise CheckpointError(f"GGUF file {file} does not exist; pass the path of a .gguf file")
    if (out / "config.json").exists():
        raise ConfigError(f"{out} already holds a model; choose another --out")
    try:
        reader = _gguf().GGUFReader(file)
    except (ValueError, OSError, KeyError) as err:
        raise CheckpointError(f"{file} is not a readable GGUF file ({err}); download or convert it again") from err
    meta = read_metadata(reader)
    names = {tensor.name for tensor in reader.tensors}
    config = hf_config(meta, tied="output.weight" not in names)
    weights = read_weights(reader, config)
    tokenizer = gguf_tokenizer(meta)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    write_safetensors(out / "model.safetensors", weights)
    write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    return out
