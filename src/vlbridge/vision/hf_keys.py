"""Maps between HF CLIP/SigLIP vision configs, weights and preprocessor configs and vlbridge's own.

The ViT's parameter names equal HF's CLIPVisionModel / SiglipVisionModel names, so the weight map is the identity up
to the `vision_model.` prefix (present in CLIPModel/SiglipModel and llava checkpoints, and in transformers 4.x saves;
transformers 5.x saves a bare vision model without it). Config and preprocessor maps are tables of HF defaults per
family (what a key missing from a config.json means), read by two small functions each way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vlbridge.config import ImageProcessorConfig, VisionConfig
from vlbridge.errors import CheckpointError, ConfigError

HF_PREFIX = "vision_model."
"""HF key = HF_PREFIX + our key (the prefix-free layout of transformers 5.x bare vision models is accepted too)."""

FAMILY_OF_MODEL_TYPE = {
    "clip_vision_model": "clip",
    "siglip_vision_model": "siglip",
    "clip": "clip",
    "siglip": "siglip",
}
MODEL_TYPE_OF_FAMILY = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}

# HF's defaults for keys a vision config may omit (CLIPVisionConfig / SiglipVisionConfig), under our field names.
HF_VISION_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 32,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "use_head": False,
    },
    "siglip": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_channels": 3,
        "image_size": 224,
        "patch_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "use_head": True,
    },
}
HF_VISION_RENAMES = {"vision_use_head": "use_head"}  # HF key -> our field; every other field keeps its name

# HF image processor defaults per image_processor_type (CLIPImageProcessor / SiglipImageProcessor / llava's).
_CLIP_PP = {
    "size": {"shortest_edge": 224},
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
_SIGLIP_PP = {
    "size": {"height": 224, "width": 224},
    "do_center_crop": False,
    "resample": 3,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
HF_PROCESSOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "CLIPImageProcessor": _CLIP_PP,
    "CLIPFeatureExtractor": _CLIP_PP,
    "LlavaImageProcessor": _CLIP_PP,
    "LlavaNextImageProcessor": _CLIP_PP,
    "SiglipImageProcessor": _SIGLIP_PP,
}
PROCESSOR_TYPE_OF_FAMILY = {"clip": "CLIPImageProcessor", "siglip": "SiglipImageProcessor"}


def vision_config_from_hf(hf: Mapping[str, Any]) -> VisionConfig:
    """A VisionConfig from a CLIP/SigLIP vision config dict (or a full clip/siglip config holding `vision_config`)."""
    model_type = hf.get("model_type")
    if model_type in ("clip", "siglip") and "vision_config" in hf:
        hf = {"model_type": MODEL_TYPE_OF_FAMILY[model_type], **hf["vision_config"]}
        model_type = hf["model_type"]
    if model_type not in FAMILY_OF_MODEL_TYPE:
        raise ConfigError(
            f"vision config model_type {model_type!r} is not supported; expected one of "
            f"{', '.join(FAMILY_OF_MODEL_TYPE)} (a CLIP or SigLIP vision tower)"
        )
    family = FAMILY_OF_MODEL_TYPE[model_type]
    values = dict(HF_VISION_DEFAULTS[family])
    for key, value in hf.items():
        field = HF_VISION_RENAMES.get(key, key)
        if field in values and value is not None:
            values[field] = value
    if family == "clip":
        values["use_head"] = False
    values["layer_norm_eps"] = float(values["layer_norm_eps"])
    return VisionConfig(family=family, **values)


def vision_config_to_hf(cfg: VisionConfig) -> dict[str, Any]:
    """The HF vision config dict (as in llava's config.json `vision_config`) for a CLIP/SigLIP-layout ViT."""
    if cfg.position != "learned":
        raise ConfigError(
            f"vision.position {cfg.position!r} has no HF CLIP/SigLIP equivalent; only 'learned' can be exported"
        )
    out: dict[str, Any] = {"model_type": MODEL_TYPE_OF_FAMILY[cfg.family]}
    for field in HF_VISION_DEFAULTS[cfg.family]:
        if field != "use_head":
            out[field] = getattr(cfg, field)
    if cfg.family == "siglip":
        out["vision_use_head"] = cfg.use_head
    return out


def state_dict_from_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ViT's state dict from an HF vision-model one (keys with or without `vision_model.`)."""
    prefixed = [k.startswith(HF_PREFIX) for k in state_dict]
    if any(prefixed) and not all(prefixed):
        stray = sorted(k for k in state_dict if not k.startswith(HF_PREFIX))[:5]
        raise CheckpointError(
            f"vision weights mix keys with and without {HF_PREFIX!r} (e.g. {', '.join(stray)}); "
            "pass only the vision tower's weights"
        )
    return {k.removeprefix(HF_PREFIX): v for k, v in state_dict.items()}


def state_dict_to_hf(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The HF (`vision_model.`-prefixed) state dict of our ViT, loadable by CLIPVisionModel / SiglipVisionModel."""
    return {HF_PREFIX + k: v for k, v in state_dict.items()}


def _side(value: Any, key: str) -> int:
    """One square side from an HF size entry (int, {'shortest_edge'}, or square {'height','width'})."""
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping) and "shortest_edge" in value and len(value) == 1:
        return int(value["shortest_edge"])
    if isinstance(value, Mapping) and set(value) == {"height", "width"} and value["height"] == value["width"]:
        return int(value["height"])
    raise ConfigError(f"preprocessor {key} {value!r} is not supported; use an int, shortest_edge, or a square")


def image_processor_config_from_hf(pp: Mapping[str, Any]) -> ImageProcessorConfig:
    """An ImageProcessorConfig from a preprocessor_config.json dict (CLIP, SigLIP or llava image processor)."""
    kind = pp.get("image_processor_type") or pp.get("feature_extractor_type") or "CLIPImageProcessor"
    kind = kind.removesuffix("Pil").removesuffix("Fast")
    if kind not in HF_PROCESSOR_DEFAULTS:
        raise ConfigError(
            f"image processor type {kind!r} is not supported; expected one of {', '.join(HF_PROCESSOR_DEFAULTS)}"
        )
    values = {**HF_PROCESSOR_DEFAULTS[kind], **{k: v for k, v in pp.items() if v is not None}}
    if not values.get("do_resize", True):
        raise ConfigError("preprocessor do_resize=false is not supported: images must be resized to one size")
    size = values["size"]
    exact = isinstance(size, Mapping) and "height" in size
    side = _side(size, "size")
    crop = _side(values["crop_size"], "crop_size") if "crop_size" in values else side
    do_crop = bool(values["do_center_crop"])
    if exact and do_crop and crop != side:
        raise ConfigError(f"preprocessor resizes to {side}x{side} then crops to {crop}: not supported")
    mean, std = values["image_mean"], values["image_std"]
    mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(m) for m in mean]
    std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(s) for s in std]
    if not values.get("do_normalize", True):
        mean, std = [0.0] * len(mean), [1.0] * len(std)
    return ImageProcessorConfig(
        resize_mode="exact" if exact else "shortest_edge",
        size=side,
        crop_size=side if exact else crop,
        do_center_crop=do_crop and not exact,
        resample=int(values["resample"]),
        rescale_factor=float(values.get("rescale_factor", 1 / 255)) if values.get("do_rescale", True) else 1.0,
        image_mean=mean,
        image_std=std,
        pad_to_square=bool(values.get("do_pad", False)) and kind == "LlavaImageProcessor",
    )


def image_processor_config_to_hf(cfg: ImageProcessorConfig, family: str) -> dict[str, Any]:
    """A preprocessor_config.json dict that CLIPImageProcessor / SiglipImageProcessor (llava's when padding,
    llava_next's with AnyRes pinpoints) loads."""
    if family not in PROCESSOR_TYPE_OF_FAMILY:
        raise ConfigError(f"vision family {family!r} is unknown; choose one of {', '.join(PROCESSOR_TYPE_OF_FAMILY)}")
    if cfg.resize_mode not in ("shortest_edge", "exact"):
        raise ConfigError(f"image_processor.resize_mode {cfg.resize_mode!r}; choose shortest_edge or exact")
    exact = cfg.resize_mode == "exact"
    out: dict[str, Any] = {
        "image_processor_type": "LlavaImageProcessor" if cfg.pad_to_square else PROCESSOR_TYPE_OF_FAMILY[family],
        "do_resize": True,
        "size": {"height": cfg.crop_size, "width": cfg.crop_size} if exact else {"shortest_edge": cfg.size},
        "do_center_crop": cfg.do_center_crop and not exact,
        "crop_size": {"height": cfg.crop_size, "width": cfg.crop_size},
        "resample": cfg.resample,
        "do_rescale": True,
        "rescale_factor": cfg.rescale_factor,
        "do_normalize": True,
        "image_mean": list(cfg.image_mean),
        "image_std": list(cfg.image_std),
        "do_convert_rgb": True,
    }
    if cfg.pad_to_square:
        out["do_pad"] = True
    if cfg.image_grid_pinpoints is not None:  # AnyRes: LLaVA-NeXT's processor tiles on these grids
        out["image_processor_type"] = "LlavaNextImageProcessor"
        out["image_grid_pinpoints"] = [list(p) for p in cfg.image_grid_pinpoints]
    return out
