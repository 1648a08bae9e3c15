"""Oracle tests: a VLM assembled from parts with their own HF checkpoints (model/parts.py) equals transformers'
standalone towers and LLMs on the same random weights, and adding `<image>` changes nothing but the new rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import vlbridge
from hf_fixtures import LM_FAMILIES, TOWER_KINDS, tiny_llava, tiny_lm, tiny_tower
from init_ops import InitialisingOps
from tiny_vlm import tiny_config, tiny_vlm
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.model.parts import from_parts, grow_vocab, read_tower_config, tower_state
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.vision import ViT

TOL = 1e-4


@pytest.mark.parametrize("kind", TOWER_KINDS)
def test_tower_from_its_own_checkpoint_matches_hf(kind: str, tmp_path: Path) -> None:
    hf = tiny_tower(kind, tmp_path)
    vision, image_processor = read_tower_config(tmp_path)
    ours = ViT(vision)
    ours.load_state_dict(tower_state(tmp_path), strict=True)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixels, output_hidden_states=True)
        states = ours.eval().hidden_states(pixels)
    assert len(states) == len(ref.hidden_states)
    for mine, theirs in zip(states, ref.hidden_states, strict=True):
        torch.testing.assert_close(mine, theirs, atol=TOL, rtol=0)
    if kind.startswith("clip"):
        assert (image_processor.size, image_processor.crop_size, image_processor.do_center_crop) == (40, 32, True)
    else:
        assert (image_processor.resize_mode, image_processor.image_mean) == ("exact", [0.4, 0.5, 0.6])


@pytest.mark.parametrize("family", LM_FAMILIES)
@pytest.mark.parametrize("tie", [False, True])
def test_from_parts_adds_image_token_and_keeps_every_other_weight_bitwise(family: str, tie: bool, tmp_path) -> None:
    lm_dir, tower_dir = tmp_path / "lm", tmp_path / "tower"
    hf_lm = tiny_lm(family, lm_dir, tie=tie)
    hf_tower = tiny_tower("siglip", tower_dir)
    model, processor = vlbridge.from_parts(str(lm_dir), str(tower_dir))

    vocab = hf_lm.config.vocab_size
    image_id = processor.tokenizer.token_to_id("<image>")
    assert image_id == vocab == model.config.image_token_id
    assert model.config.language_model.vocab_size == vocab + 1
    ours = model.language_model.state_dict()
    for key, theirs in hf_lm.state_dict().items():
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ours[key][:vocab], theirs), key
            assert torch.equal(ours[key][vocab], theirs.mean(dim=0)), key
        else:
            assert torch.equal(ours[key], theirs), key
    assert set(ours) == set(hf_lm.state_dict())
    for key, theirs in hf_tower.state_dict().items():
        assert torch.equal(model.vision_encoder.state_dict()[key], theirs), key
    assert processor.image_processor.config == read_tower_config(tower_dir)[1]
    assert processor.apply_chat_template([{"role": "user", "content": "hi"}]) == "USER: hi ASSISTANT:"

    ids = torch.tensor([processor.tokenizer.encode("a red circle is left of a blue square")])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits[..., :vocab], hf_lm(ids).logits, atol=TOL, rtol=0)
    inputs = processor(
        text="<image>\ndescribe", images=[Image.new("RGB", (40, 30), (200, 10, 10))], return_tensors="pt"
    )
    assert (inputs["input_ids"] == image_id).sum() == model.vision_encoder.num_patches(32, 32) == 16
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_grow_vocab_grows_a_tied_table_once_and_passes_others_through() -> None:
    table = torch.randn(5, 3)
    other = torch.randn(2)
    out = grow_vocab({"model.embed_tokens.weight": table, "lm_head.weight": table, "x": other}, 7)
    assert out["model.embed_tokens.weight"] is out["lm_head.weight"]
    assert torch.equal(out["lm_head.weight"][5:], table.mean(dim=0).expand(2, 3))
    assert out["x"] is other
    assert grow_vocab({"model.embed_tokens.weight": table}, 5)["model.embed_tokens.weight"] is table


def test_whole_vlm_as_language_model_is_refused(tmp_path: Path) -> None:
    llava = tiny_llava(tmp_path / "llava")
    tiny_tower("clip", tmp_path / "tower")
    with pytest.raises(ConfigError, match="whole vision-language model"):
        from_parts(llava, tmp_path / "tower")


def _assert_same_tower(model: VisionLanguageModel, source: VisionLanguageModel) -> None:
    """`model`'s vision encoder is `source`'s, weight for weight and bit for bit, with its vision settings."""
    ours = model.vision_encoder.state_dict()
    assert ours.keys() == source.vision_encoder.state_dict().keys()
    for key, theirs in source.vision_encoder.state_dict().items():
        assert torch.equal(ours[key], theirs), key
    assert model.config.vision == source.config.vision
    assert model.config.image_processor == source.config.image_processor


def test_a_vision_language_checkpoint_serves_as_the_tower(tmp_path: Path) -> None:
    lm = _lm_dir(tmp_path)
    vision = {"family": "siglip", "feature_layer": -1}  # not LLaVA's -2: the checkpoint's own settings are kept
    source = tiny_vlm(tiny_config(image_size=32, processor=True, vision=vision, image_token_id=5), seed=3)
    source.save_pretrained(tmp_path / "vlm")
    model, processor = from_parts(lm, tmp_path / "vlm")
    _assert_same_tower(model, source)
    assert processor.image_processor.config == source.config.image_processor
    assert model.connector is not None and model.config.connector.name == "mlp"  # a new one, of the LM's width

    llava = tiny_llava(tmp_path / "llava", family="siglip")  # an HF llava checkpoint's tower, under HF's key names
    model, _ = from_parts(lm, llava)
    _assert_same_tower(model, vlbridge.load(llava)[0])


def test_a_text_only_checkpoint_as_tower_is_refused(tmp_path: Path) -> None:
    text_only = replace(tiny_config(), vision=None)
    tiny_vlm(text_only).save_pretrained(tmp_path / "text")
    with pytest.raises(CheckpointError, match="text-only checkpoint: it has no vision encoder"):
        from_parts(_lm_dir(tmp_path), tmp_path / "text")


def _lm_dir(tmp_path: Path) -> Path:
    tiny_lm("llama", tmp_path / "lm")
    return tmp_path / "lm"


def test_tower_with_weights_of_another_model_is_refused(tmp_path: Path) -> None:
    tower = tmp_path / "tower"
    tiny_tower("clip_vision", tower)
    weights = load_file(tower / "model.safetensors")
    save_file({**weights, "classifier.weight": torch.zeros(2)}, tower / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"weights in .*tower do not fit.*classifier.weight"):
        from_parts(_lm_dir(tmp_path), tower)
    mixed = {"vision_model.post_layernorm.weight": torch.zeros(2), "classifier.weight": torch.zeros(2)}
    save_file(mixed, tower / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"neither the vision tower nor the text half.*classifier.weight"):
        tower_state(tower)


def test_from_parts_initialises_the_connector_alone(tmp_path: Path) -> None:
    tiny_lm("llama", tmp_path / "lm", tie=False)
    tiny_tower("siglip", tmp_path / "tower")
    with InitialisingOps() as building:
        model, _ = vlbridge.from_parts(str(tmp_path / "lm"), str(tmp_path / "tower"))
    connector = sum(p.numel() for p in model.connector.parameters())
    assert building.calls and building.elements <= connector  # nothing the two files hold was initialised
    assert not any(t.is_meta for t in model.state_dict().values())
