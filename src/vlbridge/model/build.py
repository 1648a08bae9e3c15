"""Assembling a processor that fits a model: tokenizer, image preprocessing and the image-token count per image."""

from __future__ import annotations

from pathlib import Path

from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.processor import Processor
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.vision.processor import ImageProcessor


def processor_for(model: VisionLanguageModel, tokenizer: Tokenizer) -> Processor:
    """A Processor whose `<image>` expansion and preprocessing match `model` (text-only when it has no vision)."""
    config = model.config
    return Processor(
        tokenizer,
        ImageProcessor(config.image_processor) if model.has_vision else None,
        image_token=config.image_token,
        image_token_id=config.image_token_id,
        tokens_per_image=model.tokens_per_image,
        max_length=config.language_model.max_position_embeddings,
        template=config.template,
        text_only_images=config.text_only_images,
    )


def build_processor(model: VisionLanguageModel, path: Path) -> Processor:
    """The processor for a checkpoint directory (its tokenizer files) and the loaded model."""
    return processor_for(model, Tokenizer.from_dir(path))
