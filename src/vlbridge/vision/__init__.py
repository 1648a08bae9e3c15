"""The vision side: a CLIP/SigLIP-layout ViT, its position encodings, the image processor and HF config/weight maps."""

from __future__ import annotations

from vlbridge.vision.hf_keys import (
    HF_PREFIX,
    image_processor_config_from_hf,
    image_processor_config_to_hf,
    state_dict_from_hf,
    state_dict_to_hf,
    vision_config_from_hf,
    vision_config_to_hf,
)
from vlbridge.vision.processor import ImageProcessor, load_image
from vlbridge.vision.vit import VisionEncoder, ViT

__all__ = [
    "HF_PREFIX",
    "ImageProcessor",
    "ViT",
    "VisionEncoder",
    "image_processor_config_from_hf",
    "image_processor_config_to_hf",
    "load_image",
    "state_dict_from_hf",
    "state_dict_to_hf",
    "vision_config_from_hf",
    "vision_config_to_hf",
]
