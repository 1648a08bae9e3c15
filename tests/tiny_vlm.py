"""Tiny vision-language model configs and the forward / generate / save-load check shared by the model tests.

Imported by name (tests/conftest.py puts tests/ on sys.path), as tests are not a package. One builder,
`tiny_mapping`, gives every tiny config: the model tests' VLM by default (a 2-layer LM of width 32 with 4 query and
2 KV heads, a 2-layer ViT of width 16 with 8 px patches on 16 px images), with single fields overridden per test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlbridge.config import LMConfig, ModelConfig, from_dict, merge
from vlbridge.model.io import load_weights, read_config
from vlbridge.model.vlm import VisionLanguageModel

IMAGE_TOKEN = 99

LM: dict[str, Any] = {
    "vocab_size": 100,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
VISION: dict[str, Any] = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 16,
    "patch_size": 8,
}
WIDE_VISION: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
"""A ViT of width 32 (4 heads of 8), as the qformer and profiler tests use."""


TINY_LM = LMConfig(
    vocab_size=53,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
"""A 2-layer GQA decoder small enough for exact per-test checks of the LM alone."""


def tiny_mapping(
    connector: str = "mlp",
    options: dict[str, Any] | None = None,
    *,
    image_size: int = 16,
    processor: bool = False,
    lm: dict[str, Any] | None = None,
    vision: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A tiny ModelConfig mapping (YAML-ready): LM / VISION with `lm` / `vision` laid over them, the connector
    `connector` with `options`, `image_size` px images (and an image processor of that size with `processor`), and
    any other top-level ModelConfig `fields` (image_token_id, template, ...)."""
    mapping: dict[str, Any] = {
        "language_model": merge(LM, lm or {}),
        "vision": merge(VISION, {"image_size": image_size, **(vision or {})}),
        "connector": {"name": connector, **({"options": options} if options else {})},
        **fields,
    }
    if processor:
        mapping["image_processor"] = {"size": image_size, "crop_size": image_size}
    return mapping


def tiny_config(
    connector: str = "mlp", options: dict[str, Any] | None = None, *, image_token_id: int = IMAGE_TOKEN, **kw: Any
) -> ModelConfig:
    """The ModelConfig of `tiny_mapping(connector, options, **kw)`, with IMAGE_TOKEN as the image token by default."""
    return from_dict(ModelConfig, tiny_mapping(connector, options, image_token_id=image_token_id, **kw))


def tiny_vlm(config: ModelConfig, seed: int = 0) -> VisionLanguageModel:
    """A VisionLanguageModel of `config`, initialised after `torch.manual_seed(seed)`, in eval mode."""
    torch.manual_seed(seed)
    return VisionLanguageModel(config).eval()


def connector_vlm(connector: str, options: dict[str, Any] | None, image_size: int) -> VisionLanguageModel:
    """The connector tests' tiny VLM (seed 0, eval mode): vocab 64 with image token 63, a 1-layer ViT with 8 px
    patches on `image_size` px images."""
    config = tiny_config(
        connector,
        options,
        image_size=image_size,
        image_token_id=63,
        lm={"vocab_size": 64},
        vision={"num_hidden_layers": 1},
    )
    return tiny_vlm(config)


PROFILE_TINY: dict[str, Any] = tiny_mapping(
    image_size=32,
    processor=True,
    lm={"vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "max_position_embeddings": 256},
    vision=WIDE_VISION,
)
"""The profiler tests' model: an LM of width 64 (4 heads of 16, 2 KV heads), a ViT of width 32 on 32 px images with
8 px patches (16 visual tokens through the mlp connector)."""


def assert_forward_generate_round_trip(
    model: VisionLanguageModel, ids: torch.Tensor, pixels: torch.Tensor, path: Path
) -> None:
    """Forward, greedy generate (its first token is the forward's argmax, the prompt kept), then save to `path` and
    load again: the same config and bit-identical logits."""
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits
    out = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=3, eos_token_id=())
    assert out.shape == (ids.shape[0], ids.shape[1] + 3) and torch.equal(out[:, : ids.shape[1]], ids)
    assert torch.equal(out[:, ids.shape[1]], logits[:, -1].argmax(-1))
    model.save_pretrained(path)
    saved, rules = read_config(path)
    assert saved == model.config
    again = VisionLanguageModel(saved).eval()
    load_weights(again, path, rules)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, pixel_values=pixels).logits, logits)


def greedy_by_full_forwards(
    model: VisionLanguageModel, ids: torch.Tensor, mask: torch.Tensor | None, pixels: torch.Tensor, steps: int
) -> torch.Tensor:
    """Greedy decoding without any cache: one full forward over the whole sequence per new token (the attention
    mask, when given, grown by one for each)."""
    seq = ids
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=seq, attention_mask=mask, pixel_values=pixels).logits
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return seq
