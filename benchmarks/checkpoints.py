"""Benchmark checkpoints written with transformers' own save_pretrained (random weights, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_TOKEN = 32000


def write_llava_checkpoint(path: Path) -> None:
    """A random ~212M llava-hf checkpoint: CLIP ViT-B/16 (224px, 196 visual tokens) + a ~126M Llama (768 x 12)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN)
    LlavaForConditionalGeneration(config).save_pretrained(path)
