"""Flamingo's Perceiver resampler (`perceiver`): a fixed set of learned latents summarises any number of features.

Alayrac et al., "Flamingo: a Visual Language Model for Few-Shot Learning" (2022), section 2.1 and appendix A.1.1.
Each layer lets the latents cross-attend to the concatenation [features; latents] (keys and values from both), then
applies a feed-forward block; both are pre-LayerNorm residual updates. Learned time (frame) embeddings are added to
the features of each video frame before they are flattened together, so the frames of one video are resampled into
one set of latents and their order matters. A final LayerNorm and a Linear map the latents to the LM hidden size.

The attention and feed-forward blocks here are also the parts of Flamingo's gated cross-attention (`gated_xattn`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vlbridge.config import ConnectorConfig
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext, at_least
from vlbridge.errors import ConfigError
from vlbridge.nn_utils import activation


@dataclass(frozen=True)
class PerceiverOptions:
    """`connector.options` of `perceiver`; the defaults are Flamingo's (64 latents, 6 layers, 8 heads of 64, FFN 4x)."""

    num_latents: int = 64  # output tokens per image or video
    depth: int = 6  # resampler layers
    max_frames: int = 8  # frames per video that have a time embedding
    num_heads: int = 8
    head_dim: int = 64
    ff_mult: int = 4  # feed-forward width, as a multiple of the vision width

    def __post_init__(self) -> None:
        at_least(self, 1, "num_latents", "depth", "max_frames", "num_heads", "head_dim", "ff_mult")


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, T, Dq) over a separate key/value set (B, S, Dkv); no biases (Flamingo)."""

    def __init__(self, query_dim: int, kv_dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(query_dim, inner, bias=False)
        self.k_proj = nn.Linear(kv_dim, inner, bias=False)
        self.v_proj = nn.Linear(kv_dim, inner, bias=False)
        self.o_proj = nn.Linear(inner, query_dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, Dq) attends to context (B, S, Dkv); mask bool (B, T, S), True = attend, every row needs one."""
        b, t, _ = x.shape
        s = context.shape[1]
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(context).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, S, hd)
        v = self.v_proj(context).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, S, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None])
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))  # (B, T, Dq)


class FeedForward(nn.Module):
    """Pre-LN feed-forward: Linear(dim, mult * dim) -> activation -> Linear back to dim (Flamingo's FFW)."""

    def __init__(self, dim: int, mult: int, hidden_act: str, bias: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up_proj = nn.Linear(dim, mult * dim, bias=bias)
        self.act = activation(hidden_act)
        self.down_proj = nn.Linear(mult * dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(self.norm(x))))


class ResamplerLayer(nn.Module):
    """Latents += Attn(LN(latents) -> [LN(features); LN(latents)]); latents += FFW(latents)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, ff_mult: int, hidden_act: str, bias: bool) -> None:
        super().__init__()
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, dim, num_heads, head_dim)
        self.ff = FeedForward(dim, ff_mult, hidden_act, bias)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """features (N, S, Dv), latents (N, K, Dv) -> updated latents (N, K, Dv)."""
        queries = self.norm_latents(latents)
        context = torch.cat([self.norm_media(features), queries], dim=1)  # (N, S + K, Dv)
        latents = latents + self.attn(queries, context)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """(N, F, P, Dv) frames -> (N, K, out_dim): K learned latents resample the features of each item's frames."""

    def __init__(self, in_dim: int, out_dim: int, options: PerceiverOptions, hidden_act: str, bias: bool) -> None:
        super().__init__()
        self.max_frames = options.max_frames
        self.latents = nn.Parameter(torch.randn(options.num_latents, in_dim))
        self.frame_embeddings = nn.Parameter(torch.randn(self.max_frames, in_dim) * 0.02)
        self.layers = nn.ModuleList(
            ResamplerLayer(in_dim, options.num_heads, options.head_dim, options.ff_mult, hidden_act, bias)
            for _ in range(options.depth)
        )
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)

    @property
    def num_latents(self) -> int:
        """K, the number of output tokens whatever the number of input features."""
        return self.latents.shape[0]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, F, P, Dv), F <= max_frames, frame f gets time embedding f; returns (N, K, out_dim)."""
        n, f, p, d = frames.shape
        if f > self.max_frames:
            raise ConfigError(
                f"the perceiver resampler got {f} frames per item but has time embeddings for {self.max_frames}; "
                f"sample fewer frames or set connector.options.max_frames >= {f} (and retrain)"
            )
        x = frames + self.frame_embeddings[:f, None, :].to(frames.dtype)  # (N, F, P, Dv)
        x = x.reshape(n, f * p, d)  # (N, F*P, Dv)
        latents = self.latents.to(frames.dtype).expand(n, -1, -1)  # (N, K, Dv)
        for layer in self.layers:
            latents = layer(x, latents)
        return self.proj(self.norm(latents))  # (N, K, D)


@CONNECTORS.register("perceiver")
class PerceiverConnector(Connector):
    """Flamingo's resampler as a connector: every image becomes `options.num_latents` visual tokens."""

    Options = PerceiverOptions
    options: PerceiverOptions

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.resampler = PerceiverResampler(
            context.vision_hidden_size, context.lm_config.hidden_size, self.options, config.hidden_act, config.bias
        )

    def num_tokens(self, n_patches: int) -> int:
        return self.resampler.num_latents

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Each image (N, P, Dv) on its own, as frame 0 -> (N, K, D)."""
        return self.resampler(features[:, None])  # (N, 1, P, Dv) -> (N, K, D)

    def video_tokens(self, n_frames: int, n_patches: int) -> int:
        """A whole video's frames are resampled into one set of latents (up to `max_frames` frames)."""
        if n_frames > self.options.max_frames:
            raise ConfigError(
                f"the perceiver connector has time embeddings for {self.options.max_frames} frames but the video has "
                f"{n_frames}; sample at most {self.options.max_frames} (max_frames / --max-frames) or a lower fps"
            )
        return self.resampler.num_latents

    def encode_video(self, features: torch.Tensor, chunk: int) -> torch.Tensor:
        """(F, P, Dv) frames with their time embeddings -> (K, D); the latents read all frames at once."""
        return self.forward_frames(features[None])[0]

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """The frames of each video (N, F, P, Dv), with time embeddings, resampled together -> (N, K, D)."""
        return self.resampler(frames)
