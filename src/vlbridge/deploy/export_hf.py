"""Export to HF layouts other engines read: a llava-hf directory (`LlavaForConditionalGeneration` + `LlavaProcessor`)
or the language model alone as an HF Llama/Qwen2 causal-LM directory.

The key maps are the loader's own rules (`model/hf_llava.py`) run backwards: each layout below only names the HF
prefixes it writes, and our prefix for each is what the loader's rules turn that HF prefix into, so export and load
cannot disagree. Configs come from the inverse config maps in `lm/hf_keys.py` and `vision/hf_keys.py`.

transformers' llava holds one projector: Linear -> activation -> Linear. vlbridge's `mlp` at depth 2 is that
projector; `linear` (and `mlp` at depth 1) is written as it exactly, with the `linear` (identity) activation and an
identity second Linear. Every other connector changes what the LM reads in ways llava cannot express, so export
refuses it. SigLIP towers have no CLS token, so they are written with the `full` select strategy (llava's `default`
drops the first token whatever the tower; vlbridge's drops only a CLS token). An AnyRes model (image_grid_pinpoints
set) is written as llava_next (`LlavaNextForConditionalGeneration` + `LlavaNextProcessor`): the same weights plus the
`image_newline` row-end vector, the pinpoints in config.json and in the image processor's settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlbridge.atomic import write_safetensors, write_text
from vlbridge.config import ModelConfig
from vlbridge.errors import ConfigError, ModalityError
from vlbridge.lm.hf_keys import lm_config_to_hf
from vlbridge.lm.tokenizer_train import chat_template_jinja
from vlbridge.model.hf_llava import CAUSAL_LM_KEY_RULES, LLAVA_KEY_RULES, rename_key
from vlbridge.model.save import WEIGHTS, tied_keys
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.vision.hf_keys import vision_config_to_hf

FORMATS = ("llava-hf", "hf-lm")

LLAVA_LAYOUTS: dict[str, tuple[str, ...]] = {
    # transformers 5's own parameter names (LlavaForConditionalGeneration.state_dict()).
    "transformers": ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head."),
    # transformers 4's llava-hf hub layout, the names older engines' llava conversions (llama.cpp's scripts) match.
    "legacy": (
        "vision_tower.vision_model.",
        "multi_modal_projector.",
        "language_model.model.",
        "language_model.lm_head.",
    ),
}
NEWLINE_KEYS = {"transformers": "model.image_newline", "legacy": "image_newline"}
"""Where each layout keeps llava_next's row-end vector (LlavaNextForConditionalGeneration's `image_newline`)."""
CAUSAL_LM_LAYOUT = ("model.", "lm_head.")

LLAVA_CONNECTORS = ("mlp", "linear")
"""Connectors transformers' llava projector holds exactly."""


def _prefix_map(hf_prefixes: tuple[str, ...], rules: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Our prefix -> HF prefix: each HF prefix renamed by the loader's `rules` gives ours."""
    out = {}
    for hf_prefix in hf_prefixes:
        ours = rename_key(hf_prefix, rules)
        assert ours is not None, f"the loader's rules do not read {hf_prefix!r}"
        out[ours] = hf_prefix
    return out


def rename_state(state: Mapping[str, torch.Tensor], prefixes: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """`state` with our prefixes replaced by the HF ones; every key must fall under one of them."""
    out = {}
    for key, value in state.items():
        ours = next(p for p in prefixes if key.startswith(p))
        out[prefixes[ours] + key.removeprefix(ours)] = value.detach().contiguous()
    return out


def refuse_unless_llava(config: ModelConfig) -> None:
    """ConfigError naming what transformers' llava cannot hold in `config`, and where the model can go instead
    (ModalityError for a model without vision)."""
    if config.vision is None:
        raise ModalityError("this model has no vision encoder, so it has no llava form; export it with --format hf-lm")
    connector = config.connector
    elsewhere = (
        "keep it in vlbridge's own format (save_pretrained / vlbridge ship), which holds every connector, or export "
        "the language model alone with --format hf-lm"
    )
    if connector.name not in LLAVA_CONNECTORS:
        raise ConfigError(
            f"connector {connector.name!r} cannot be exported to llava-hf: transformers' llava holds only a "
            f"per-patch projector ({' or '.join(LLAVA_CONNECTORS)}); {elsewhere}"
        )
    if connector.name == "mlp" and connector.depth > 2:
        raise ConfigError(
            f"connector mlp with depth {connector.depth} cannot be exported to llava-hf: transformers' llava "
            f"projector has two Linear layers; {elsewhere}"
        )


def llava_config(config: ModelConfig) -> dict[str, Any]:
    """The llava config.json dict for `config` (which `refuse_unless_llava` accepted)."""
    assert config.vision is not None
    vision, connector, lm = config.vision, config.connector, config.language_model
    two_layers = connector.name == "mlp" and connector.depth == 2
    side = vision.image_size // vision.patch_size
    cls_kept = vision.family == "clip" and vision.select_strategy == "full"
    patch_dropped = vision.family == "siglip" and vision.select_strategy == "drop_first"
    tokens = side * side + cls_kept - patch_dropped  # visual tokens per image, as llava's config records it
    pinpoints = config.image_processor.image_grid_pinpoints
    anyres = {} if pinpoints is None else {"image_grid_pinpoints": [list(p) for p in pinpoints]}
    return {
        "architectures": [f"{_architecture(config)}ForConditionalGeneration"],
        "model_type": "llava_next" if anyres else "llava",
        **anyres,
        "text_config": lm_config_to_hf(lm),
        "vision_config": vision_config_to_hf(vision),
        "image_token_index": config.image_token_id,
        "image_seq_length": tokens,
        "projector_hidden_act": connector.hidden_act if two_layers else "linear",
        "multimodal_projector_bias": connector.bias,
        "vision_feature_layer": vision.feature_layer,
        "vision_feature_select_strategy": _select_strategy(config),
        "tie_word_embeddings": lm.tie_word_embeddings,
    }


def _architecture(config: ModelConfig) -> str:
    """transformers' class stem for `config`: LlavaNext for AnyRes (pinpoints set), else Llava."""
    return "Llava" if config.image_processor.image_grid_pinpoints is None else "LlavaNext"


def _select_strategy(config: ModelConfig) -> str:
    """llava's strategy for our tower: llava's "default" drops the first token, so a SigLIP tower (no CLS token) is
    "full" unless it drops its first patch too ("drop_first")."""
    assert config.vision is not None
    vision = config.vision
    if vision.family == "siglip":
        return "default" if vision.select_strategy == "drop_first" else "full"
    return "default" if vision.select_strategy == "drop_first" else vision.select_strategy


def _projector_state(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    """The connector's weights as llava's two-layer projector: a one-layer connector gets an identity second layer."""
    state = {k: v for k, v in model.state_dict().items() if k.startswith("connector.")}
    if "connector.linear_2.weight" not in state:
        width = model.config.language_model.hidden_size
        weight = state["connector.linear_1.weight"]
        state["connector.linear_2.weight"] = torch.eye(width, dtype=weight.dtype, device=weight.device)
        if model.config.connector.bias:
            state["connector.linear_2.bias"] = torch.zeros(width, dtype=weight.dtype, device=weight.device)
    return state


def _dtype_entries(model: VisionLanguageModel) -> dict[str, str]:
    """The weights' dtype as config.json records it: `dtype` (transformers 5) and `torch_dtype` (transformers 4 and
    engines built on it), so `from_pretrained(..., dtype="auto")` keeps a bf16 export in bf16."""
    name = str(model.language_model.model.embed_tokens.weight.dtype).removeprefix("torch.")
    return {"dtype": name, "torch_dtype": name}


def _new_dir(out: str | Path) -> Path:
    """`out`, created; a non-empty one is refused, as stale files (another export's shard index, a chat template)
    would be read together with the new ones."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"export destination {out} exists and is not an empty directory; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def _require_tokenizer(model: VisionLanguageModel) -> None:
    """ConfigError when `model` has no processor: an export without a tokenizer is no model others can run."""
    if model.processor is None:
        raise ConfigError(
            "this model has no tokenizer attached, so the export would lack one; load it with vlbridge.load(path) "
            "or build it with VisionLanguageModel(config, tokenizer=...)"
        )


def _save_processor(model: VisionLanguageModel, out: Path, images: bool) -> None:
    """The tokenizer files (and the image processor's with `images`), with the built-in chat template as jinja when
    the model's config names one, so HF's apply_chat_template renders what vlbridge's does."""
    assert model.processor is not None
    if images:
        model.processor.save_pretrained(out)
    else:
        model.processor.tokenizer.save(out)
    if model.config.template is not None:
        write_text(out / "chat_template.jinja", chat_template_jinja(model.config.template))


def export_llava_hf(model: VisionLanguageModel, out: str | Path, legacy_keys: bool = False) -> Path:
    """Write `model` as an HF llava directory (config, weights, tokenizer, image processor, LlavaProcessor settings),
    or llava_next for an AnyRes model.

    `legacy_keys` writes transformers 4's hub key layout instead of transformers 5's. Connectors llava cannot hold
    raise ConfigError; a model loaded with vision=False raises ModalityError."""
    config = model.config
    refuse_unless_llava(config)
    assert config.vision is not None
    hf_config = llava_config(config)  # a vision tower with no HF form raises here, before anything is written
    if not model.has_vision:
        raise ModalityError("this model was loaded with vision=False; load it with vision=True to export llava-hf")
    _require_tokenizer(model)
    out = _new_dir(out)
    layout = "legacy" if legacy_keys else "transformers"
    anyres = config.image_processor.image_grid_pinpoints is not None
    prefixes = _prefix_map(LLAVA_LAYOUTS[layout] + ((NEWLINE_KEYS[layout],) if anyres else ()), LLAVA_KEY_RULES)
    tied = tied_keys(config)
    state = {k: v for k, v in model.state_dict().items() if k not in tied and not k.startswith("connector.")}
    write_safetensors(out / WEIGHTS, rename_state({**state, **_projector_state(model)}, prefixes))
    _write_json(out / "config.json", {**hf_config, **_dtype_entries(model)})
    _save_processor(model, out, images=True)
    processor = {
        "processor_class": f"{_architecture(config)}Processor",
        "image_token": config.image_token,
        "patch_size": config.vision.patch_size,
        "vision_feature_select_strategy": _select_strategy(config),
        "num_additional_image_tokens": 1 if config.vision.family == "clip" else 0,
    }
    _write_json(out / "processor_config.json", processor)
    return out


def export_hf_lm(model: VisionLanguageModel, out: str | Path) -> Path:
    """Write the language model alone as an HF Llama (Qwen2 when it has q/k/v biases) causal-LM directory."""
    config = model.config
    _require_tokenizer(model)
    out = _new_dir(out)
    tied = tied_keys(config)
    state = {k: v for k, v in model.state_dict().items() if k.startswith("language_model.") and k not in tied}
    write_safetensors(out / WEIGHTS, rename_state(state, _prefix_map(CAUSAL_LM_LAYOUT, CAUSAL_LM_KEY_RULES)))
    _write_json(out / "config.json", {**lm_config_to_hf(config.language_model), **_dtype_entries(model)})
    _save_processor(model, out, images=False)
    return out


def export(model: VisionLanguageModel, out: str | Path, format: str = "llava-hf", legacy_keys: bool = False) -> Path:
    """Export `model` to `out` in `format` (one of FORMATS); returns `out`."""
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r} is unknown; choose one of {', '.join(FORMATS)}")
    if model.config.quantization is not None:
        raise ConfigError(
            f"the model is {model.config.quantization}-quantised and {format} holds float weights; export the float "
            "checkpoint it was quantised from (`vlbridge quantize` writes a copy and leaves that one unchanged)"
        )
    if format == "hf-lm":
        if legacy_keys:
            raise ConfigError("legacy keys are a llava-hf layout; --format hf-lm has one key layout")
        return export_hf_lm(model, out)
    return export_llava_hf(model, out, legacy_keys=legacy_keys)
