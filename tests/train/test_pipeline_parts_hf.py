"""A recipe that starts each part from its own HF checkpoint (`init_from` a text LLM, `vision_from` a CLIP/SigLIP
tower) trains its new connector and keeps the frozen tower and LLM bitwise, `<image>` row aside."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_run import align_stage, recipe

import vlbridge
from hf_fixtures import make_tokenizer, tiny_lm, tiny_tower
from vlbridge.errors import ConfigError
from vlbridge.train import recipe_from_dict, train


def test_recipe_from_a_tower_and_an_llm_trains_the_connector_only(tiny_data, tmp_path: Path) -> None:
    hf_lm = tiny_lm("qwen2", tmp_path / "lm")
    hf_tower = tiny_tower("clip", tmp_path / "tower")
    spec = recipe(tmp_path / "run", tiny_data, None, [align_stage(steps=2)], model=None)
    del spec["tokenizer"]  # the LLM's own tokenizer is used
    spec.update(init_from=str(tmp_path / "lm"), vision_from=str(tmp_path / "tower"))
    model, processor = vlbridge.load(train(recipe_from_dict(spec)))

    vocab = hf_lm.config.vocab_size
    assert processor.tokenizer.token_to_id("<image>") == vocab == model.config.image_token_id
    ours = model.language_model.state_dict()
    for key, theirs in hf_lm.state_dict().items():
        assert torch.equal(ours[key][:vocab] if "embed" in key or "lm_head" in key else ours[key], theirs), key
    for key, theirs in hf_tower.state_dict().items():
        assert torch.equal(model.vision_encoder.state_dict()[key], theirs), key
    assert model.config.image_processor.crop_size == 32 and model.config.connector.name == "mlp"


def test_vision_from_needs_init_from(tiny_data, tmp_path: Path) -> None:
    spec = recipe(tmp_path / "run", tiny_data, None, [align_stage(steps=1)], vision_from=str(tmp_path))
    with pytest.raises(ConfigError, match=r"vision_from .* needs init_from"):
        recipe_from_dict(spec)


def test_image_token_is_added_only_when_a_text_llm_gets_vision(tiny_data, tmp_path: Path) -> None:
    from tiny_run import TINY_MODEL

    from vlbridge.train.pipeline import _given_tokenizer

    tiny_lm("llama", tmp_path / "lm")
    text_only = recipe(tmp_path / "run", tiny_data, None, [align_stage()], model=None, init_from=str(tmp_path / "lm"))
    del text_only["tokenizer"]
    assert _given_tokenizer(recipe_from_dict(text_only)).token_to_id("<image>") is None
    with_vision = recipe_from_dict({**text_only, "model": TINY_MODEL})
    assert _given_tokenizer(with_vision).token_to_id("<image>") == len(make_tokenizer(image_token=False))


def test_recipe_takes_the_tower_of_a_vision_language_checkpoint(tiny_data, tmp_path: Path) -> None:
    from tiny_run import TINY_MODEL

    from vlbridge.config import ModelConfig, from_dict
    from vlbridge.model.vlm import VisionLanguageModel

    tiny_lm("llama", tmp_path / "lm")
    torch.manual_seed(1)
    config = from_dict(ModelConfig, {**TINY_MODEL, "vision": {**TINY_MODEL["vision"], "feature_layer": -1}})
    source = VisionLanguageModel(config)
    source.save_pretrained(tmp_path / "vlm")
    spec = recipe(tmp_path / "run", tiny_data, None, [align_stage(steps=1)], model={"vision": None})
    del spec["tokenizer"]
    spec.update(init_from=str(tmp_path / "lm"), vision_from=str(tmp_path / "vlm"))
    model, _ = vlbridge.load(train(recipe_from_dict(spec)))

    for key, theirs in source.vision_encoder.state_dict().items():  # frozen in the stage: bitwise the checkpoint's
        assert torch.equal(model.vision_encoder.state_dict()[key], theirs), key
    assert model.config.vision == source.config.vision  # feature_layer -1 kept: the recipe's model has no vision
    assert model.config.image_processor == source.config.image_processor
