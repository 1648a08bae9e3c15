"""The HF llava layouts (LlavaForConditionalGeneration, LlavaNextForConditionalGeneration) as data: config conversion
and weight-key renaming. llava_next adds AnyRes: `image_grid_pinpoints` and the `image_newline` row-end vector.

transformers has written three key layouts over time; all load: the original (`language_model.model.*`,
`vision_tower.vision_model.*`), the 4.5x one (`model.language_model.*`, `lm_head.*`) and 5.x's (`vision_tower.*`
without `vision_model.`). A plain HF causal LM (`model.*`, `lm_head.*`) loads as a text-only model.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlbridge.config import ConnectorConfig, ImageProcessorConfig, ModelConfig
from vlbridge.errors import CheckpointError
from vlbridge.files import RECOPY, read_json_object
from vlbridge.lm.hf_keys import lm_config_from_hf
from vlbridge.vision.hf_keys import image_processor_config_from_hf, vision_config_from_hf

LLAVA_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^(model\.)?vision_tower\.(vision_model\.)?", "vision_encoder."),
    (r"^(model\.)?multi_modal_projector\.", "connector."),
    (r"^language_model\.model\.", "language_model.model."),
    (r"^model\.language_model\.", "language_model.model."),
    (r"^(language_model\.)?lm_head\.", "language_model.lm_head."),
    (r"^(model\.)?image_newline$", "image_newline"),
)
CAUSAL_LM_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
)
TEXT_MODEL_TYPES = ("llama", "mistral", "qwen2")


def rename_key(key: str, rules: tuple[tuple[str, str], ...]) -> str | None:
    """Our name for an HF key under the first matching rule, or None when no rule matches."""
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key, count=1)
        if count:
            return new
    return None


LLAVA_MODEL_TYPES = ("llava", "llava_next")
"""config.json model_type values of the HF llava-layout checkpoints vlbridge loads."""


def model_config_from_hf(raw: dict[str, Any], path: Path) -> tuple[ModelConfig, tuple[tuple[str, str], ...]]:
    """A ModelConfig and the key rules for an HF checkpoint directory (llava, or a text-only causal LM)."""
    model_type = raw.get("model_type")
    if model_type in TEXT_MODEL_TYPES:
        return ModelConfig(language_model=lm_config_from_hf(raw), vision=None), CAUSAL_LM_KEY_RULES
    if model_type not in LLAVA_MODEL_TYPES:
        raise CheckpointError(
            f"config.json has model_type {model_type!r}; vlbridge loads 'llava' and 'llava_next' checkpoints, text "
            f"LLMs ({', '.join(TEXT_MODEL_TYPES)}) and its own format"
        )
    text = dict(_section(raw, "text_config", "the language model's settings", path))
    if raw.get("tie_word_embeddings"):
        text["tie_word_embeddings"] = True
    vision = vision_config_from_hf(_section(raw, "vision_config", "the vision tower's settings", path))
    layer = raw.get("vision_feature_layer", -2)
    vision = replace(
        vision,
        feature_layer=list(layer) if isinstance(layer, (list, tuple)) else int(layer),
        select_strategy=_select_strategy(raw.get("vision_feature_select_strategy", "default"), vision.family),
    )
    preprocessor = image_processor_dict_from_dir(path)
    image_processor = (
        image_processor_config_from_hf(preprocessor) if preprocessor is not None else ImageProcessorConfig()
    )
    if model_type == "llava_next":
        image_processor = _anyres(raw, image_processor, vision.image_size, path)
    config = ModelConfig(
        language_model=lm_config_from_hf(text),
        vision=vision,
        connector=ConnectorConfig(
            name="mlp",
            depth=2,
            hidden_act=raw.get("projector_hidden_act", "gelu"),
            bias=raw.get("multimodal_projector_bias", True),
        ),
        image_processor=image_processor,
        image_token=image_token_from_dir(path, "<image>"),
        image_token_id=int(raw.get("image_token_index", raw.get("image_token_id", 32000))),
    )
    return config, LLAVA_KEY_RULES


def _anyres(raw: dict[str, Any], image_processor: ImageProcessorConfig, tile: int, path: Path) -> ImageProcessorConfig:
    """The image processor settings with llava_next's pinpoints; its tiles must be the vision tower's input size,
    as LlavaNextModel lays out each tile's features on the tower's patch grid."""
    pinpoints = raw.get("image_grid_pinpoints")
    if not isinstance(pinpoints, list):
        raise CheckpointError(f"{path / 'config.json'} is a llava_next config without image_grid_pinpoints; {RECOPY}")
    if image_processor.crop_size != tile:
        raise CheckpointError(
            f"{path}: the image processor cuts {image_processor.crop_size}px tiles but the vision tower takes "
            f"{tile}px images; set the preprocessor's crop_size to {tile}"
        )
    return replace(image_processor, image_grid_pinpoints=[list(p) for p in pinpoints])


def _section(raw: dict[str, Any], key: str, what: str, path: Path) -> dict[str, Any]:
    """A part of a llava config.json that must be present. transformers fills an absent one with the defaults of a
    model nobody loaded (a 7B Llama, a CLIP ViT-L/14 at 336 px), so loading would build the wrong model: refuse."""
    section = raw.get(key)
    if not isinstance(section, dict):
        raise CheckpointError(
            f"{path / 'config.json'} has no {key} ({what}), which a llava config needs; {RECOPY} "
            "(transformers' save_pretrained writes it)"
        )
    return section


def image_token_from_dir(path: Path, default: str) -> str:
    """The placeholder string an HF processor/tokenizer config names, else `default`."""
    for name in ("processor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file():
            token = read_json_object(file).get("image_token")
            if isinstance(token, str):
                return token
    return default


def image_processor_dict_from_dir(path: Path) -> dict[str, Any] | None:
    """The HF image-processor settings: preprocessor_config.json, or (transformers 5) processor_config.json's
    `image_processor` entry; None when neither exists."""
    legacy = path / "preprocessor_config.json"
    if legacy.is_file():
        return read_json_object(legacy)
    combined = path / "processor_config.json"
    if not combined.is_file():
        return None
    settings = read_json_object(combined).get("image_processor")
    if settings is not None and not isinstance(settings, dict):
        raise CheckpointError(f"{combined}: image_processor must be a JSON object of settings; {RECOPY}")
    return settings


def _select_strategy(strategy: str, family: str) -> str:
    """Our select strategy for llava's: its "default" drops the first token whatever it is, which on a SigLIP tower
    (no CLS token) is a patch; ours drops only a CLS token, so that case is "drop_first"."""
    return "drop_first" if strategy == "default" and family == "siglip" else strategy
