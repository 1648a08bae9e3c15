"""LLaVA-Mini's `mini` connector: C x C query compression of each image, plus modality pre-fusion of the text.

Zhang et al., "LLaVA-Mini: Efficient Image and Video Large Multimodal Models with One Vision Token" (2025).
Each image's patch features are projected into the LM's width by LLaVA's mlp, then C x C learnable queries (C = 1:
one token per image) cross-attend to all of them in one attention layer. Fixed 2D sin-cos positions (He et al.,
"Masked Autoencoders", 2022) are added to the queries (the centres of the C x C cells) and to the keys (the patch
centres), both in patch-grid units, so query i looks at its own part of the image first.

Compression drops what the LM would have read from the visual tokens in its early layers, so modality pre-fusion
reads it in front of the LM: blocks of the LM's own structure (its block class, RoPE and, with `prefusion_init: lm`,
its first layers' weights) run causally over [every projected visual token of a prompt's images; its text], and the
LM sees the fused text plus the compressed tokens. Visual tokens first and causal attention mean a later (answer)
token never changes an earlier fused embedding, and generated tokens are fused one by one from a KV cache of the
pre-fusion blocks. Rows without images keep their raw text embeddings, so text-only prompts see the base LLM.

High resolution (`hd_grid: 2`), as LLaVA-Mini's code builds its HD model (ictnlp/LLaVA-Mini, `encode_images_mini`;
the paper's HD model takes 672 px images with C = 8): the processor gives each image as hd_grid x hd_grid crops
(row-major) and then the whole image, every view at the encoder's size. The crops' projected tokens are laid out as
one grid hd_grid times the side of a view's, and the C x C queries compress that grid together; pre-fusion runs over
[tiled crop tokens; whole-image tokens; compressed tokens; text] per image, and the LM reads the compressed tokens as
pre-fusion left them, with the fused text (the code takes both from the pre-fusion output).

Options (`connector.options`): grid (C, default 1), prefusion_layers (default 4, 0 = compression only),
prefusion_init ("lm" default, or "random"), hd_grid (crops per side, default 1: the whole image only).
depth / hidden_act / bias configure the mlp projector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from vlbridge.config import ConnectorConfig
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext, FusionCache, at_least
from vlbridge.connectors.mini_video import VideoPrefusionState, frames_per_row, fuse_rows, fuse_text
from vlbridge.connectors.mlp import mlp_projector
from vlbridge.connectors.splice import rows_of_images, splice
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLM, init_weights, padding_mask
from vlbridge.lm.kv_cache import KVCache
from vlbridge.lm.rope import RotaryEmbedding


@dataclass(frozen=True)
class MiniOptions:
    """`connector.options` of `mini`."""

    grid: int = 1  # C: C x C compressed tokens per image
    prefusion_layers: int = 4  # pre-fusion blocks of the LM's structure (0: compression only)
    prefusion_init: Literal["lm", "random"] = "lm"  # copy the LM's first layers into them, or the LM's own init
    hd_grid: int = 1  # LLaVA-Mini HD: also hd_grid x hd_grid crops of each image, compressed together (1: off)

    def __post_init__(self) -> None:
        at_least(self, 1, "grid", "hd_grid")
        at_least(self, 0, "prefusion_layers")


def sincos_2d(rows: Tensor, cols: Tensor, dim: int) -> Tensor:
    """MAE's fixed 2D sin-cos embedding of points (rows[i], cols[i]): (M, dim), the row in the first half."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    parts = []
    for pos in (rows, cols):
        angles = pos.double()[:, None] * omega[None, :]  # (M, dim/4)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=-1).float()  # (M, dim)


@lru_cache(maxsize=16)
def grid_positions(cells: int, side: int, dim: int) -> tuple[Tensor, Tensor]:
    """Fixed positions (queries (cells^2, dim), keys (side^2, dim)) of a cells x cells query grid over a side x side
    patch grid, in patch units: patch (i, j) sits at (i + 0.5, j + 0.5), query cell (a, b) at its cell's centre."""
    with torch.inference_mode(False):  # cached tensors must stay usable by later autograd-recording forwards

        def embed(axis: Tensor) -> Tensor:
            r, c = torch.meshgrid(axis, axis, indexing="ij")  # (n, n) each, row-major like the patch sequence
            return sincos_2d(r.reshape(-1), c.reshape(-1), dim)

        patches = torch.arange(side, dtype=torch.float64) + 0.5
        cell_centres = (torch.arange(cells, dtype=torch.float64) + 0.5) * side / cells
        return embed(cell_centres), embed(patches)


class CrossAttention(nn.Module):
    """Multi-head attention of queries (N, Q, D) over keys / values (N, P, D), with q/k/v/o projections."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        n, q_len, d = queries.shape
        hd = d // self.num_heads
        q = self.q_proj(queries).view(n, q_len, self.num_heads, hd).transpose(1, 2)  # (N, H, Q, hd)
        k = self.k_proj(keys).view(n, -1, self.num_heads, hd).transpose(1, 2)  # (N, H, P, hd)
        v = self.v_proj(values).view(n, -1, self.num_heads, hd).transpose(1, 2)  # (N, H, P, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, Q, hd)
        return self.o_proj(out.transpose(1, 2).reshape(n, q_len, d))  # (N, Q, D)


@dataclass
class PrefusionState:
    """What decoding needs from the prompt's pre-fusion: its KV cache, which of its keys are real, and which rows
    have images (the others pass through unfused)."""

    kv: KVCache
    valid: Tensor  # (B, V + T) bool: real visual tokens, then real text tokens of the prompt
    prompt_length: int  # T
    has_visual: Tensor  # (B,) bool


@CONNECTORS.register("mini")
class MiniConnector(Connector):
    """mlp projection -> C x C query cross-attention (the visual tokens); pre-fusion blocks rewrite the text."""

    Options = MiniOptions
    options: MiniOptions

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        lm = context.lm_config
        n_layers = self.options.prefusion_layers
        if self.options.prefusion_init == "lm" and n_layers > lm.num_hidden_layers:
            raise ConfigError(
                f"connector.options.prefusion_layers {n_layers} exceeds the language model's {lm.num_hidden_layers} "
                "layers, so they cannot be initialised from it; use fewer pre-fusion layers or prefusion_init: random"
            )
        d = lm.hidden_size
        if d % 4 or d % lm.num_attention_heads:
            raise ConfigError(
                f"the mini connector needs the LM hidden size ({d}) divisible by 4 (2D sin-cos positions) and by its "
                f"{lm.num_attention_heads} attention heads (cross-attention heads)"
            )
        self.projector = mlp_projector(config, context)
        self.queries = nn.Parameter(torch.randn(self.options.grid**2, d) * 0.02)  # (C^2, D)
        self.query_norm = nn.LayerNorm(d)
        self.key_norm = nn.LayerNorm(d)
        self.cross_attn = CrossAttention(d, lm.num_attention_heads)
        self.prefusion = nn.ModuleList(context.block_cls(lm, i) for i in range(n_layers))
        self.prefusion.apply(partial(init_weights, std=lm.initializer_range))  # the LM's own initialisation
        self.rotary = RotaryEmbedding(lm.resolved_head_dim, lm.rope_theta, min(lm.max_position_embeddings, 4096))

    @property
    def crop_grid(self) -> int:
        return self.options.hd_grid

    def num_tokens(self, n_patches: int) -> int:
        return self.options.grid**2

    def forward(self, features: Tensor) -> Tensor:
        projected = self.projector(features)  # (N, P, D)
        if self.options.hd_grid > 1:
            projected = self.high_res_views(projected)[0]
        return self.compress(projected)

    def high_res_views(self, projected: Tensor) -> tuple[Tensor, Tensor]:
        """HD: an image's projected views (N, (k^2 + 1) * P, D), k x k crops row-major then the whole image ->
        (the crops tiled into one (k * s, k * s) grid, row-major (N, k^2 * P, D); the whole image's (N, P, D))."""
        k = self.options.hd_grid
        n, total, d = projected.shape
        p = total // (k * k + 1)
        side = math.isqrt(p)
        if p * (k * k + 1) != total or side * side != p:
            raise ConfigError(
                f"the mini connector with hd_grid {k} takes {k * k} crops and the whole image per image, each a square "
                f"patch grid, but got {total} features per image; build the inputs with the model's processor"
            )
        crops = projected[:, : k * k * p].reshape(n, k, k, side, side, d).permute(0, 1, 3, 2, 4, 5)  # (N,k,s,k,s,D)
        return crops.reshape(n, k * k * p, d), projected[:, k * k * p :]  # (N, k^2 P, D), (N, P, D)

    def compress(self, projected: Tensor) -> Tensor:
        """Projected visual tokens (N, P, D) of square patch grids -> compressed tokens (N, C^2, D)."""
        n, p, d = projected.shape
        side = math.isqrt(p)
        if side * side != p:
            raise ConfigError(
                f"the mini connector needs a square patch grid but got {p} features per image; drop the CLS token "
                "(vision.select_strategy: default)"
            )
        positions = grid_positions(self.options.grid, side, d)
        query_pos, key_pos = (t.to(projected.device, projected.dtype) for t in positions)
        queries = (self.query_norm(self.queries) + query_pos).expand(n, -1, -1)  # (N, C^2, D)
        values = self.key_norm(projected)  # (N, P, D)
        return self.cross_attn(queries, values + key_pos, values)

    def fuse(
        self,
        embeds: Tensor,
        image_mask: Tensor,
        features: Tensor,
        attention_mask: Tensor | None = None,
        cache: FusionCache | None = None,
    ) -> Tensor:
        projected = self.projector(features)  # (N, P, D)
        hd = self.options.hd_grid > 1
        if hd:
            tiled, whole = self.high_res_views(projected)
            compressed = self.compress(tiled)  # (N, C^2, D)
            projected = torch.cat([tiled, whole, compressed], dim=1)  # (N, k^2 P + P + C^2, D): what pre-fusion reads
        else:
            compressed = self.compress(projected)
        out = splice(embeds, image_mask, compressed)  # (B, T, D)
        if not len(self.prefusion):
            return out
        visual, visual_valid = rows_of_images(projected, image_mask, self.options.grid**2)  # (B, V, D), (B, V)
        text_valid = ~image_mask if attention_mask is None else attention_mask.bool() & ~image_mask  # (B, T)
        valid = torch.cat([visual_valid, text_valid], dim=1)  # (B, V + T)
        x = torch.cat([visual.to(embeds.dtype), embeds], dim=1)  # (B, V + T, D)
        kv = None
        if cache is not None:
            lm = self.context.lm_config
            shape = (lm.num_key_value_heads, lm.resolved_head_dim)
            length = visual.shape[1] + cache.max_length  # visual tokens + prompt + new tokens
            kv = KVCache(len(self.prefusion), x.shape[0], length, *shape, x.dtype, x.device)
        positions = (valid.long().cumsum(dim=-1) - 1).clamp_min(0)  # (B, V + T)
        fused_all = self._prefuse(x, positions, padding_mask(valid, x.shape[1]), kv)  # (B, V + T, D)
        fused = fused_all[:, visual.shape[1] :]  # (B, T, D)
        if hd:  # the LM reads the compressed tokens as pre-fusion left them: each image's last C^2 visual tokens
            per_image = fused_all[:, : visual.shape[1]][visual_valid].reshape(projected.shape)  # (N, L, D)
            out = splice(embeds, image_mask, per_image[:, -compressed.shape[1] :])
        has_visual = visual_valid.any(dim=1)  # (B,)
        if kv is not None:
            assert cache is not None
            cache.state = PrefusionState(kv, valid, embeds.shape[1], has_visual)
        keep = (text_valid & has_visual[:, None]).unsqueeze(-1)  # (B, T, 1)
        return torch.where(keep, fused.to(out.dtype), out)

    def video_tokens(self, n_frames: int, n_patches: int) -> int:
        return n_frames * self.options.grid**2  # C x C per frame

    def encode_video(self, features: Tensor, chunk: int) -> Tensor:
        tokens = torch.cat([self(part) for part in features.split(chunk)])  # (F, C^2, D)
        return tokens.reshape(-1, tokens.shape[-1])

    def fuse_video(
        self,
        embeds: Tensor,
        video_mask: Tensor,
        videos: list[Tensor],
        chunk: int,
        attention_mask: Tensor | None = None,
        cache: FusionCache | None = None,
    ) -> Tensor:
        """Per-frame compression spliced in; the text pre-fused with each frame on its own and averaged over the
        frames of its row (mini_video.py)."""
        projected = [torch.cat([self.projector(part) for part in v.split(chunk)]) for v in videos]  # (F, P, D) each
        compressed = torch.cat([self.compress(p).reshape(-1, embeds.shape[-1]) for p in projected])  # (sum F*C^2, D)
        out = splice(embeds, video_mask, compressed[None])  # (B, T, D)
        if not len(self.prefusion):
            return out
        rows = frames_per_row(video_mask, projected, [p.shape[0] * self.options.grid**2 for p in projected])
        text_valid = ~video_mask if attention_mask is None else attention_mask.bool() & ~video_mask  # (B, T)
        keep = [~row for row in video_mask]  # each row's text positions (its video positions dropped)
        state = VideoPrefusionState(
            rows,
            [e[k] for e, k in zip(embeds, keep, strict=True)],
            [v[k] for v, k in zip(text_valid, keep, strict=True)],
            chunk,
        )
        if cache is not None:
            cache.state = state
        for b, frames in enumerate(rows):
            if frames is not None:
                fused = fuse_text(self._prefuse_all, frames, state.text[b], state.text_valid[b], chunk)  # (T_b, D)
                real = state.text_valid[b].unsqueeze(-1)  # (T_b, 1)
                out[b, keep[b]] = torch.where(real, fused.to(out.dtype), out[b, keep[b]])
        return out

    def _prefuse_all(self, x: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        return self._prefuse(x, positions, mask, None)

    def fuse_step(self, embeds: Tensor, attention_mask: Tensor, cache: FusionCache) -> Tensor:
        state = cache.state
        if isinstance(state, VideoPrefusionState):
            state.append(embeds, attention_mask[:, -embeds.shape[1] :])
            return fuse_rows(self._prefuse_all, state, embeds.shape[1])
        assert isinstance(state, PrefusionState), "fuse_step runs only after fuse filled the cache"
        valid = torch.cat([state.valid, attention_mask[:, state.prompt_length :].bool()], dim=1)  # (B, S + t)
        t = embeds.shape[1]
        assert valid.shape[1] == state.kv.length + t, "attention_mask must cover the cached and the new tokens"
        positions = (valid.long().cumsum(dim=-1)[:, -t:] - 1).clamp_min(0)  # (B, t)
        fused = self._prefuse(embeds, positions, padding_mask(valid, t), state.kv)  # (B, t, D)
        return torch.where(state.has_visual[:, None, None], fused, embeds)

    def _prefuse(self, x: Tensor, positions: Tensor, mask: Tensor, kv: KVCache | None) -> Tensor:
        """Run the pre-fusion blocks over x (B, t, D) at `positions` (B, t) with a bool mask (B, 1, t, S)."""
        rope = self.rotary(positions, x.dtype)
        for block in self.prefusion:
            x = block(x, rope, mask, kv)
        if kv is not None:
            kv.advance(x.shape[1])
        return x

    def init_from_language_model(self, language_model: DecoderLM) -> None:
        """With prefusion_init 'lm', copy the LM's first layers into the pre-fusion blocks (same class, same keys)."""
        if self.options.prefusion_init != "lm":
            return
        for block, layer in zip(self.prefusion, language_model.model.layers, strict=False):
            block.load_state_dict(layer.state_dict())
