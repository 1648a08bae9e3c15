"""Oracle tests: our ViT equals transformers' CLIPVisionModel / SiglipVisionModel on the same (random) weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from vlbridge.vision import ViT, state_dict_from_hf, state_dict_to_hf, vision_config_from_hf, vision_config_to_hf

TINY = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
TOL = 1e-4


def _hf_model(family: str, use_head: bool = True) -> torch.nn.Module:
    """A tiny HF vision model with every parameter randomised (so a swapped or skipped weight shows)."""
    torch.manual_seed(0)
    if family == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**TINY, attn_implementation="eager"))
    else:
        model = SiglipVisionModel(SiglipVisionConfig(**TINY, vision_use_head=use_head, attn_implementation="eager"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            param.copy_(base + 0.3 * torch.randn_like(param))
    return model.eval()


def _ours_from_saved(hf_model: torch.nn.Module, tmp_path, **overrides) -> ViT:
    """Save the HF model, rebuild its config and weights through hf_keys, load strictly."""
    hf_model.save_pretrained(tmp_path)
    config = dataclasses.replace(vision_config_from_hf(hf_model.config.to_dict()), **overrides)
    ours = ViT(config)
    ours.load_state_dict(state_dict_from_hf(load_file(tmp_path / "model.safetensors")), strict=True)
    return ours.eval()


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_state_dict_keys_equal_hf(family):
    hf = _hf_model(family)
    ours = ViT(vision_config_from_hf(hf.config.to_dict()))
    assert set(ours.state_dict()) == set(hf.state_dict())
    for key, value in hf.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape, key


@pytest.mark.parametrize("family", ["clip", "siglip"])
@pytest.mark.parametrize("size", [(32, 32), (48, 40)])
def test_hidden_states_features_and_pooled_match_hf(family, size, tmp_path):
    hf = _hf_model(family)
    ours = _ours_from_saved(hf, tmp_path)
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf(pixels, output_hidden_states=True, interpolate_pos_encoding=size != (32, 32))
        states = ours.hidden_states(pixels)
        features = ours(pixels)
        pooled = ours.pooled(pixels)
    assert len(states) == len(ref.hidden_states) == TINY["num_hidden_layers"] + 1
    for mine, theirs in zip(states, ref.hidden_states, strict=True):
        torch.testing.assert_close(mine, theirs, atol=TOL, rtol=0)
    # LLaVA-1.5 default: penultimate layer, CLS dropped where the family has one
    n_cls = 1 if family == "clip" else 0
    torch.testing.assert_close(features, ref.hidden_states[-2][:, n_cls:], atol=TOL, rtol=0)
    assert features.shape[1] == ours.num_patches(*size)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=TOL, rtol=0)


def test_upto_stops_early_with_identical_states(tmp_path):
    ours = _ours_from_saved(_hf_model("clip"), tmp_path)
    pixels = torch.randn(1, 3, 32, 32)
    full = ours.hidden_states(pixels)
    calls = []
    hooks = [layer.register_forward_hook(lambda *_: calls.append(1)) for layer in ours.encoder.layers]
    partial = ours.hidden_states(pixels, upto=1)
    ours(pixels)  # feature_layer -2 of 3 layers: layers 1 and 2 only
    for hook in hooks:
        hook.remove()
    assert len(partial) == 2 and len(calls) == 1 + 2
    for a, b in zip(partial, full, strict=False):
        torch.testing.assert_close(a, b)


def test_siglip_without_head_matches_hf(tmp_path):
    hf = _hf_model("siglip", use_head=False)
    ours = _ours_from_saved(hf, tmp_path)
    assert not hasattr(ours, "head")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixels)
        torch.testing.assert_close(ours.pooled(pixels), ref.last_hidden_state.mean(1), atol=TOL, rtol=0)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_export_loads_into_hf(family, tmp_path):
    """Our weights, saved with the HF prefix, load into transformers strictly and give the same outputs."""
    hf_src = _hf_model(family)
    ours = _ours_from_saved(hf_src, tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    save_file(state_dict_to_hf(ours.state_dict()), out / "model.safetensors")
    hf_cls, cfg_cls = (
        (CLIPVisionModel, CLIPVisionConfig) if family == "clip" else (SiglipVisionModel, SiglipVisionConfig)
    )
    cfg_cls(**vision_config_to_hf(ours.config)).save_pretrained(out)
    loaded, info = hf_cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.pooled(pixels), loaded.eval()(pixels).pooler_output, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_config_round_trip(family):
    hf = _hf_model(family).config
    cfg = vision_config_from_hf(hf.to_dict())
    assert cfg.family == family
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size, cfg.image_size) == (32, 3, 8, 32)
    assert cfg.hidden_act == hf.hidden_act and cfg.layer_norm_eps == hf.layer_norm_eps
    assert vision_config_from_hf(vision_config_to_hf(cfg)) == cfg
    back = (CLIPVisionConfig if family == "clip" else SiglipVisionConfig)(**vision_config_to_hf(cfg))
    for key, value in vision_config_to_hf(cfg).items():
        assert getattr(back, key) == value, key


def test_config_from_full_clip_config_and_hf_defaults():
    full = CLIPConfig(vision_config={"hidden_size": 64, "num_attention_heads": 4}).to_dict()
    cfg = vision_config_from_hf(full)
    assert (cfg.family, cfg.hidden_size, cfg.patch_size, cfg.hidden_act) == ("clip", 64, 32, "quick_gelu")
    # llava-1.5's config.json lists only non-default keys: the rest are HF's CLIP defaults
    llava_style = {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 336, "patch_size": 14}
    cfg = vision_config_from_hf(llava_style)
    assert (cfg.num_hidden_layers, cfg.intermediate_size, cfg.layer_norm_eps) == (12, 3072, 1e-5)
    assert cfg.feature_layer == -2 and cfg.select_strategy == "default"
