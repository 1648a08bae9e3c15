"""Benchmark checkpoints written with transformers' own save_pretrained (random weights, nothing downloaded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

IMAGE_TOKEN = 32000


@dataclass(frozen=True)
class LlavaSize:
    """The transformers config arguments of a llava-hf checkpoint's CLIP vision tower and Llama LM."""

    vision: dict[str, Any]
    text: dict[str, Any]

    @property
    def image_size(self) -> int:
        return self.vision["image_size"]

    @property
    def image_tokens(self) -> int:
        """Visual tokens per image: one per patch (CLIP's CLS token is dropped)."""
        return (self.vision["image_size"] // self.vision["patch_size"]) ** 2


# ~212M: CLIP ViT-B/16 (224 px, 196 visual tokens) + a ~126M Llama (768 x 12)
FULL = LlavaSize(
    vision=dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    ),
    text=dict(
        vocab_size=32064,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    ),
)
# --quick: the same layout at widths of 64, 2 layers each, 4 visual tokens
QUICK = LlavaSize(
    vision=dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=16
    ),
    text=dict(
        vocab_size=32064,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
    ),
)


def write_llava_checkpoint(path: Path, size: LlavaSize) -> None:
    """A random llava-hf checkpoint of `size` in `path`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**size.vision),
        text_config=LlamaConfig(**size.text),
        image_token_index=IMAGE_TOKEN,
    )
    LlavaForConditionalGeneration(config).save_pretrained(path)
