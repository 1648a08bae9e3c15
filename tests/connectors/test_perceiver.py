"""The perceiver resampler connector: token count, per-image independence, video frames with time embeddings."""

from __future__ import annotations

import pytest
import torch

from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors import ConnectorContext, build_connector
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLayer

CONTEXT = ConnectorContext(vision_hidden_size=12, lm_config=LMConfig(hidden_size=20), block_cls=DecoderLayer)
OPTIONS = {"num_latents": 5, "depth": 2, "num_heads": 2, "head_dim": 6, "max_frames": 3, "ff_mult": 2}


def _perceiver(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_connector(ConnectorConfig(name="perceiver", options={**OPTIONS, **options}), CONTEXT).eval()


def test_num_tokens_is_num_latents_whatever_the_patches() -> None:
    connector = _perceiver()
    for patches in (1, 7, 30):
        out = connector(torch.randn(3, patches, 12))
        assert out.shape == (3, connector.num_tokens(patches), 20) == (3, 5, 20)


def test_flamingo_defaults() -> None:
    connector = build_connector(ConnectorConfig(name="perceiver"), CONTEXT)
    assert connector.num_tokens(576) == 64
    assert len(connector.resampler.layers) == 6
    assert connector.resampler.frame_embeddings.shape == (8, 12)


def test_images_are_resampled_independently() -> None:
    connector = _perceiver()
    features = torch.randn(3, 7, 12)
    with torch.no_grad():
        together = connector(features)
        alone = connector(features[1:2])
        changed = connector(torch.cat([features[:1], torch.randn(1, 7, 12), features[2:]]))
    assert torch.allclose(together[1:2], alone, atol=1e-6)
    assert torch.allclose(together[0], changed[0], atol=1e-6) and torch.allclose(together[2], changed[2], atol=1e-6)
    assert not torch.allclose(together[1], changed[1])


def test_latents_attend_to_features_and_latents() -> None:
    """Flamingo's keys/values are [features; latents]: one layer equals the computation written out by hand."""
    connector = _perceiver(depth=1)
    layer = connector.resampler.layers[0]
    features = torch.randn(2, 4, 12)
    with torch.no_grad():
        x = features + connector.resampler.frame_embeddings[0]
        latents = connector.resampler.latents.expand(2, -1, -1)
        q_in = layer.norm_latents(latents)
        kv_in = torch.cat([layer.norm_media(x), q_in], dim=1)  # (2, 4 + 5, 12)
        attn = layer.attn
        q = attn.q_proj(q_in).view(2, 5, 2, 6).transpose(1, 2)
        k = attn.k_proj(kv_in).view(2, 9, 2, 6).transpose(1, 2)
        v = attn.v_proj(kv_in).view(2, 9, 2, 6).transpose(1, 2)
        weights = (q @ k.transpose(-1, -2) / 6**0.5).softmax(-1)
        latents = latents + attn.o_proj((weights @ v).transpose(1, 2).reshape(2, 5, 12))
        latents = latents + layer.ff(latents)
        want = connector.resampler.proj(connector.resampler.norm(latents))
        assert torch.allclose(connector(features), want, atol=1e-5)


def test_video_frames_use_time_embeddings() -> None:
    connector = _perceiver()
    frames = torch.randn(2, 3, 4, 12)  # (N, F, P, Dv)
    with torch.no_grad():
        out = connector.forward_frames(frames)
        reversed_order = connector.forward_frames(frames.flip(1))
        assert out.shape == (2, 5, 20)
        assert (out - reversed_order).abs().max() > 1e-4, "frame order must matter"
        assert torch.allclose(connector.forward_frames(frames[:, :1]), connector(frames[:, 0]), atol=1e-6)
        connector.resampler.frame_embeddings.zero_()  # without time embeddings the frames are an unordered set
        assert torch.allclose(connector.forward_frames(frames), connector.forward_frames(frames.flip(1)), atol=1e-5)


def test_too_many_frames_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"got 4 frames .* time embeddings for 3; .*max_frames >= 4"):
        _perceiver().forward_frames(torch.randn(1, 4, 2, 12))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_latent": 4}, r"no option\(s\) num_latent; its options are: num_latents: int = 64, depth: int = 6"),
        ({"depth": 0}, r"options\.depth must be >= 1, got 0"),
        ({"num_latents": "8"}, r"options\.num_latents: expected int, got str '8'"),
        ({"num_latents": True}, r"options\.num_latents: expected int, got a boolean True"),
    ],
)
def test_bad_options_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_connector(ConnectorConfig(name="perceiver", options=options), CONTEXT)


def test_gradients_reach_every_parameter() -> None:
    connector = _perceiver().train()
    connector.forward_frames(torch.randn(2, 3, 4, 12)).square().sum().backward()
    for name, param in connector.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
