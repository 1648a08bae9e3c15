"""ViT behaviour without an oracle: feature selection, token counts, 2D RoPE at any size, config errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlbridge.config import VisionConfig
from vlbridge.errors import ConfigError, ImageError
from vlbridge.vision import VisionEncoder, ViT

TINY = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4}


def _vit(**kw) -> ViT:
    torch.manual_seed(0)
    return ViT(VisionConfig(**{**TINY, "image_size": 32, "patch_size": 8, **kw})).eval()


def test_is_a_vision_encoder():
    assert isinstance(_vit(), VisionEncoder)


def test_feature_layer_list_concatenates_on_channels():
    vit = _vit(feature_layer=[-2, 1, 0])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        states = vit.hidden_states(pixels)
        features = vit(pixels)
    assert vit.hidden_size == 3 * 32
    assert features.shape == (2, 16, 96)
    expected = torch.cat([states[2], states[1], states[0]], dim=-1)[:, 1:]
    torch.testing.assert_close(features, expected)


@pytest.mark.parametrize("family", ["clip", "siglip"])
@pytest.mark.parametrize("strategy", ["default", "full"])
@pytest.mark.parametrize("position", ["learned", "rope2d"])
def test_num_patches_equals_output_tokens(family, strategy, position):
    vit = _vit(family=family, select_strategy=strategy, position=position)
    for height, width in [(32, 32), (40, 27), (16, 64)]:
        with torch.no_grad():
            out = vit(torch.randn(1, 3, height, width))
        assert out.shape == (1, vit.num_patches(height, width), vit.hidden_size)
    has_cls = family == "clip" and strategy == "full"
    assert vit.num_patches(32, 32) == 16 + has_cls


def test_select_strategy_full_keeps_cls_default_drops_it():
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        full = _vit(select_strategy="full")(pixels)
        default = _vit()(pixels)
    torch.testing.assert_close(full[:, 1:], default)


def test_llava_default_is_576_tokens_for_clip_l_336():
    config = VisionConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2)
    vit = ViT(dataclasses.replace(config, image_size=336, patch_size=14))
    assert vit.num_patches(336, 336) == 576


def _swap_corner_patches(pixels: torch.Tensor) -> torch.Tensor:
    """Swap the top-left and bottom-right 8x8 patches of a (B, 3, 24, 40) image (grid 3 x 5: tokens 0 and 14)."""
    swapped = pixels.clone()
    swapped[..., 0:8, 0:8], swapped[..., 16:24, 32:40] = pixels[..., 16:24, 32:40], pixels[..., 0:8, 0:8]
    return swapped


def _swap_error(vit: ViT) -> float:
    """How far vit(swapped image) is from vit(image) with patch tokens 0 and 14 swapped (0 = blind to position)."""
    pixels = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        out, out_swapped = vit(pixels), vit(_swap_corner_patches(pixels))
    expected = out.clone()
    expected[:, [0, 14]] = out[:, [14, 0]]
    return (out_swapped - expected).abs().max().item()


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_rope2d_has_no_position_table_and_sees_position(family):
    """Without position information a ViT is equivariant to swapping two patches; with 2D RoPE it is not."""
    vit = _vit(family=family, position="rope2d")
    assert not any("position_embedding" in k for k in vit.state_dict())
    assert _swap_error(vit) > 1e-2
    blind = _vit(family=family)
    with torch.no_grad():
        blind.embeddings.position_embedding.weight.zero_()
    assert _swap_error(blind) < 1e-5


def test_gradient_checkpointing_gives_same_grads():
    vit = _vit()
    pixels = torch.randn(1, 3, 32, 32)
    vit.train()
    vit(pixels).square().sum().backward()
    ref = [p.grad.clone() for p in vit.parameters() if p.grad is not None]
    vit.zero_grad()
    vit.gradient_checkpointing = True
    vit(pixels).square().sum().backward()
    got = [p.grad for p in vit.parameters() if p.grad is not None]
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"feature_layer": 4}, "feature_layer"),
        ({"feature_layer": -5}, "feature_layer"),
        ({"feature_layer": []}, "feature_layer"),
        ({"family": "dino"}, "family"),
        ({"select_strategy": "cls"}, "select_strategy"),
        ({"num_attention_heads": 5}, "divisible"),
        ({"position": "rope2d", "hidden_size": 24, "num_attention_heads": 4}, "divisible by 4"),
        ({"use_head": True}, "use_head"),
        ({"hidden_act": "nope"}, "activation"),
    ],
)
def test_bad_config_raises_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        _vit(**kw)


def test_bad_pixel_shapes_raise_image_error():
    vit = _vit()
    with pytest.raises(ImageError, match=r"\(B, 3, H, W\)"):
        vit(torch.randn(3, 32, 32))
    with pytest.raises(ImageError, match="smaller than one 8px patch"):
        vit(torch.randn(1, 3, 4, 32))
    with pytest.raises(ConfigError, match="upto"):
        vit.hidden_states(torch.randn(1, 3, 32, 32), upto=4)
