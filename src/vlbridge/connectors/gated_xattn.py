"""Flamingo's gated cross-attention (`gated_xattn`): vision enters the LM through new layers, not the sequence.

Alayrac et al., "Flamingo: a Visual Language Model for Few-Shot Learning" (2022), section 2.2. Each image puts one
learned media-marker token in the sequence (the connector's output). Before every `options.every`-th LM layer
(layers i with (i + 1) % every == 0, as OpenFlamingo counts them) a block updates the residual stream:

    x = x + tanh(attn_gate) * XAttn(LN(x), media)
    x = x + tanh(ff_gate) * FFW(x)

Both gates start at 0, so a freshly added block leaves the LM exactly as it was. The media are the Perceiver-resampled
visual features of each image (`options.resampler: "perceiver"`) or its raw features (`"none"`), from which every
block projects its own keys and values. Media masking: a text position attends only to the image of the last marker
at or before it (`options.attend_previous_only`, Flamingo's choice), or to all such images (false); positions before
any marker get no update at all (unlike Flamingo, the gated FFW is skipped there too, so they stay the bare LM's).

The hooks keep the prompt's marker positions and count the tokens they have seen, so prefill and every later decode
step (which passes only the new tokens) know which images precede each token; a new token follows all the prompt's
images. One `lm_hooks` call serves one prefill-then-decode run (or one forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlbridge.config import ConnectorConfig
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext, LayerHook, at_least
from vlbridge.connectors.perceiver import CrossAttention, FeedForward, PerceiverOptions, PerceiverResampler
from vlbridge.errors import ConfigError, ModalityError


@dataclass(frozen=True)
class GatedXAttnOptions(PerceiverOptions):
    """`connector.options` of `gated_xattn`: the resampler's (as `perceiver`) and where the blocks go.

    Flamingo inserts a block every 4th (large) to 7th layer; 1 suits tiny LMs.
    """

    every: int = 1  # a block before every `every`-th LM layer
    resampler: Literal["perceiver", "none"] = "perceiver"  # the media: resampled latents, or the raw features
    attend_previous_only: bool = True  # a position sees only the last image before it (Flamingo), or all of them

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, 1, "every")


class GatedCrossAttentionBlock(nn.Module):
    """Tanh-gated cross-attention then tanh-gated FFW, both residual; gates start at 0 (identity at init)."""

    def __init__(
        self, dim: int, media_dim: int, num_heads: int, head_dim: int, ff_mult: int, act: str, bias: bool
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, media_dim, num_heads, head_dim)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = FeedForward(dim, ff_mult, act, bias)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, T, D); media (B, S, Dm); allowed bool (B, T, S): which media tokens each position may see.

        Positions that may see none keep x exactly (no NaN from an empty softmax reaches them).
        """
        has_media = allowed.any(dim=-1, keepdim=True)  # (B, T, 1)
        mask = allowed | ~has_media  # rows without media attend to everything; their result is discarded
        attended = torch.tanh(self.attn_gate) * self.attn(self.norm(x), media, mask)
        x = x + torch.where(has_media, attended, 0.0)
        return x + torch.where(has_media, torch.tanh(self.ff_gate) * self.ff(x), 0.0)


class _MediaHook:
    """One layer's hook for one prefill + decode run: maps each new token to the images before it by counting."""

    def __init__(
        self,
        block: GatedCrossAttentionBlock,
        media: torch.Tensor,
        last_media: torch.Tensor,
        tokens_per_media: int,
        attend_previous_only: bool,
    ) -> None:
        self.block = block
        self.media = media  # (B, M*K, Dm)
        self.last_media = last_media  # (B, T_prompt): 1-based index of the last image at or before t, 0 = none
        self.tokens_per_media = tokens_per_media
        self.attend_previous_only = attend_previous_only
        self.seen = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        assert b == self.last_media.shape[0], "hooks used with another batch than the one they were made for"
        prompt_length = self.last_media.shape[1]
        positions = torch.arange(self.seen, self.seen + t, device=x.device).clamp_max(prompt_length - 1)
        self.seen += t
        current = self.last_media[:, positions, None]  # (B, t, 1)
        n_media = self.media.shape[1] // self.tokens_per_media
        slots = torch.arange(1, n_media + 1, device=x.device)  # (M,)
        allowed = slots == current if self.attend_previous_only else slots <= current  # (B, t, M)
        allowed = allowed.repeat_interleave(self.tokens_per_media, dim=-1)  # (B, t, M*K)
        return self.block(x, self.media, allowed)


@CONNECTORS.register("gated_xattn")
class GatedXAttnConnector(Connector):
    """One learned media-marker token per image in the sequence; vision reaches the LM through `lm_hooks`."""

    Options = GatedXAttnOptions
    options: GatedXAttnOptions

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        options = self.options
        lm = context.lm_config
        if options.every > lm.num_hidden_layers:
            raise ConfigError(
                f"connector.options.every is {options.every} but the LM has {lm.num_hidden_layers} layers, so no "
                f"cross-attention block would be inserted; set it to at most {lm.num_hidden_layers}"
            )
        d, dv = lm.hidden_size, context.vision_hidden_size
        self.media_marker = nn.Parameter(torch.randn(d) * 0.02)
        self.resampler: PerceiverResampler | None = None
        self.media_norm: nn.LayerNorm | None = None
        if options.resampler == "perceiver":
            self.resampler = PerceiverResampler(dv, d, options, config.hidden_act, config.bias)
            media_dim = d
        else:
            self.media_norm = nn.LayerNorm(dv)
            media_dim = dv
        blocks = {}
        for i in range(lm.num_hidden_layers):
            if (i + 1) % options.every == 0:
                heads = (lm.num_attention_heads, lm.resolved_head_dim)
                ff = (options.ff_mult, config.hidden_act, config.bias)
                blocks[str(i)] = GatedCrossAttentionBlock(d, media_dim, *heads, *ff)
        self.layers = nn.ModuleDict(blocks)
        self.media_dim = media_dim

    def num_tokens(self, n_patches: int) -> int:
        return 1

    def video_tokens(self, n_frames: int, n_patches: int) -> int:
        raise ModalityError(
            "the gated_xattn connector does not take video input; use a model with the mlp, pool, perceiver or mini "
            "connector for video"
        )

    def held_media_elements(self, n_patches: int) -> int:
        tokens = self.resampler.num_latents if self.resampler is not None else n_patches
        return tokens * self.media_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The media marker for each image: (N, P, Dv) -> (N, 1, D)."""
        return self.media_marker.to(features.dtype).expand(features.shape[0], 1, -1)

    def media(self, features: torch.Tensor) -> torch.Tensor:
        """The visual tokens the cross-attention reads, per image: (N, P, Dv) -> (N, K, Dm)."""
        if self.resampler is not None:
            return self.resampler(features[:, None])  # (N, K, D)
        assert self.media_norm is not None
        return self.media_norm(features)  # (N, P, Dv)

    def lm_hooks(self, features: torch.Tensor, image_mask: torch.Tensor) -> dict[int, LayerHook]:
        """A gated cross-attention hook per chosen layer; image_mask (B, T) marks each image's one marker token."""
        per_row = image_mask.sum(dim=1)  # (B,)
        assert int(per_row.sum()) == features.shape[0], "one marker per image (checked by splice)"
        media = self.media(features)  # (N, K, Dm)
        n, k, dm = media.shape
        n_slots = max(int(per_row.max()), 1)
        first = per_row.cumsum(0) - per_row  # (B,) index of each row's first image among all N
        index = (first[:, None] + torch.arange(n_slots, device=image_mask.device)).clamp_max(n - 1)  # (B, M)
        row_media = media[index].reshape(image_mask.shape[0], n_slots * k, dm)  # (B, M*K, Dm), extra slots unseen
        last_media = image_mask.long().cumsum(dim=1).to(media.device)  # (B, T); the mask may be real when media is meta
        return {
            int(i): _MediaHook(block, row_media, last_media, k, self.options.attend_previous_only)
            for i, block in self.layers.items()
        }
