"""The HF llava layout (LlavaForConditionalGeneration) as data: config conversion and weight-key renaming.

transformers has written three key layouts over time; all load: the original (`language_model.model.*`,
`vision_tower.vision_model.*`), the 4.5x one (`model.language_model.*`, `lm_head.*`) and 5.x's (`vision_tower.*`
without `vision_model.`). A plain HF causal LM (`model.*`, `lm_head.*`) loads as a text-only model.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlbridge.config import ConnectorConfig, ImageProcessorConfig, ModelConfig
from vlbridge.errors import CheckpointError
from vlbridge.lm.hf_keys import lm_config_from_hf
from vlbridge.vision.hf_keys import image_processor_config_from_hf, vision_config_from_hf

LLAVA_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^(model\.)?vision_tower\.(vision_model\.)?", "vision_encoder."),
    (r"^(model\.)?multi_modal_projector\.", "connector."),
    (r"^language_model\.model\.", "language_model.model."),
    (r"^model\.language_model\.", "language_model.model."),
    (r"^(language_model\.)?lm_head\.", "language_model.lm_head."),
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


def model_config_from_hf(raw: dict[str, Any], path: Path) -> tuple[ModelConfig, tuple[tuple[str, str], ...]]:
    """A ModelConfig and the key rules for an HF checkpoint directory (llava, or a text-only causal LM)."""
    model_type = raw.get("model_type")
    if model_type in TEXT_MODEL_TYPES:
        return ModelConfig(language_model=lm_config_from_hf(raw), vision=None), CAUSAL_LM_KEY_RULES
    if model_type != "llava":
        raise CheckpointError(
            f"config.json has model_type {model_type!r}; vlbridge loads 'llava' checkpoints, text LLMs "
            f"({', '.join(TEXT_MODEL_TYPES)}) and its own format"
        )
    text = dict(raw["text_config"])
    if raw.get("tie_word_embeddings"):
        text["tie_word_embeddings"] = True
    vision = vision_config_from_hf(raw["vision_config"])
    layer = raw.get("vision_feature_layer", -2)
    vision = replace(
        vision,
        feature_layer=list(layer) if isinstance(layer, (list, tuple)) else int(layer),
        select_strategy=raw.get("vision_feature_select_strategy", "default"),
    )
    preprocessor = image_processor_dict_from_dir(path)
    image_processor = (
        image_processor_config_from_hf(preprocessor) if preprocessor is not None else ImageProcessorConfig()
    )
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


def image_token_from_dir(path: Path, default: str) -> str:
    """The placeholder string an HF processor/tokenizer config names, else `default`."""
    for name in ("processor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file():
            token = json.loads(file.read_text()).get("image_token")
            if isinstance(token, str):
                return token
    return default


def image_processor_dict_from_dir(path: Path) -> dict[str, Any] | None:
    """The HF image-processor settings: preprocessor_config.json, or (transformers 5) processor_config.json's
    `image_processor` entry; None when neither exists."""
    legacy = path / "preprocessor_config.json"
    if legacy.is_file():
        return json.loads(legacy.read_text())
    combined = path / "processor_config.json"
    if combined.is_file():
        return json.loads(combined.read_text()).get("image_processor")
    return None
