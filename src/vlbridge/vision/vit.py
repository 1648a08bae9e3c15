"""The vision encoder: a ViT in the CLIP or SigLIP layout, and which of its hidden states the connector sees.

Dosovitskiy et al., "An Image is Worth 16x16 Words" (ViT, 2020); Radford et al., "CLIP" (2021); Zhai et al., "SigLIP"
(2023). Image -> non-overlapping patches (a strided conv = flatten + linear) -> [CLS] + position information -> pre-LN
transformer layers. Parameter names equal HF's CLIPVisionModel / SiglipVisionModel without the `vision_model.` prefix,
so HF checkpoints load with an identity key map (see hf_keys.py). LLaVA-1.5 (Liu et al., 2023) feeds the connector
the penultimate layer's patch tokens (`feature_layer=-2`, CLS dropped), so the last layer is never computed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from vlbridge.config import VisionConfig
from vlbridge.errors import ConfigError, ImageError
from vlbridge.nn_utils import activation
from vlbridge.vision.position import apply_rotary, interpolate_learned, rope2d_cos_sin

Rope = tuple[torch.Tensor, torch.Tensor, int]
"""(cos, sin, n_prefix): 2D rotary angles for the patch tokens; the first n_prefix tokens (CLS) are not rotated."""


class VisionEncoder(nn.Module, ABC):
    """Pixels (B, 3, H, W) -> features (B, N, hidden_size) for the connector."""

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """Width of one feature vector given to the connector."""

    @abstractmethod
    def num_patches(self, height: int, width: int) -> int:
        """Feature tokens per image of this pixel size, after the select strategy."""

    @abstractmethod
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_patches(H, W), hidden_size) selected features."""


class VisionEmbeddings(nn.Module):
    """Patch embedding, the CLS token (CLIP) and learned absolute positions (unless the ViT uses 2D RoPE)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.has_cls = config.family == "clip"
        if self.has_cls:
            self.class_embedding = nn.Parameter(torch.randn(config.hidden_size) * config.hidden_size**-0.5)
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=config.family == "siglip",
        )
        self.position_embedding = None
        if config.position == "learned":
            num_positions = (config.image_size // config.patch_size) ** 2 + int(self.has_cls)
            self.position_embedding = nn.Embedding(num_positions, config.hidden_size)
            nn.init.normal_(self.position_embedding.weight, std=0.02)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch = pixel_values.shape[0]
        grid_h, grid_w = pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, D)
        if self.position_embedding is not None:
            patch_positions = self.position_embedding.weight[int(self.has_cls) :]  # (G*G, D), CLS row excluded
            x = x + interpolate_learned(patch_positions, grid_h, grid_w)
        if self.has_cls:
            cls = self.class_embedding.expand(batch, 1, -1)
            if self.position_embedding is not None:
                cls = cls + self.position_embedding.weight[0]
            x = torch.cat([cls, x], dim=1)  # (B, 1 + gh*gw, D)
        return x


class Attention(nn.Module):
    """Multi-head self-attention (q/k/v/out projections with bias), computed by fused SDPA."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        d = config.hidden_size
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        batch, n, d = x.shape
        q, k, v = (
            proj(x).view(batch, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        if rope is not None:
            cos, sin, prefix = rope
            q = torch.cat([q[:, :, :prefix], apply_rotary(q[:, :, prefix:], cos, sin)], dim=2)
            k = torch.cat([k[:, :, :prefix], apply_rotary(k[:, :, prefix:], cos, sin)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd)
        return self.out_proj(out.transpose(1, 2).reshape(batch, n, d))  # (B, N, D)


class MLP(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + attn(ln1(x)), then + mlp(ln2(x))."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = Attention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), rope)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """The stack of encoder layers (a module of its own so keys read `encoder.layers.{i}.`)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))


class AttentionPoolingHead(nn.Module):
    """SigLIP's multi-head attention pooling: one learned probe attends to all tokens, then a residual MLP."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, config.hidden_size) * config.hidden_size**-0.5)
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)  # (B, 1, D)
        pooled = self.attention(probe, x, x, need_weights=False)[0]  # (B, 1, D)
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]  # (B, D)


def _check_config(config: VisionConfig) -> None:
    """Raise ConfigError for a vision config this ViT cannot build."""
    choices = {
        "family": ("clip", "siglip"),
        "position": ("learned", "rope2d"),
        "select_strategy": ("default", "full", "drop_first"),
    }
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise ConfigError(f"vision.{key} is {getattr(config, key)!r}; choose one of {', '.join(allowed)}")
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(
            f"vision.hidden_size {config.hidden_size} is not divisible by num_attention_heads "
            f"{config.num_attention_heads}; pick a head count that divides it"
        )
    head_dim = config.hidden_size // config.num_attention_heads
    if config.position == "rope2d" and head_dim % 4:
        raise ConfigError(f"vision.position rope2d needs a head dim divisible by 4, got {head_dim}")
    if config.use_head and config.family != "siglip":
        raise ConfigError("vision.use_head is SigLIP's attention-pooling head; set it false for family clip")
    layers = config.feature_layer if isinstance(config.feature_layer, list) else [config.feature_layer]
    n_states = config.num_hidden_layers + 1
    if not layers or any(not -n_states <= i < n_states for i in layers):
        raise ConfigError(
            f"vision.feature_layer {config.feature_layer} must index the {n_states} hidden states "
            f"(0 = embeddings, -1 = last layer) of a {config.num_hidden_layers}-layer ViT"
        )


class ViT(VisionEncoder):
    """A CLIP- or SigLIP-layout ViT (state_dict keys = HF's without `vision_model.`)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        _check_config(config)
        self.config = config
        self.gradient_checkpointing = False
        self.embeddings = VisionEmbeddings(config)
        if config.family == "clip":
            self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if config.use_head:
            self.head = AttentionPoolingHead(config)
        layers = config.feature_layer if isinstance(config.feature_layer, list) else [config.feature_layer]
        self._feature_layers = [i % (config.num_hidden_layers + 1) for i in layers]

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size * len(self._feature_layers)

    @property
    def _n_prefix(self) -> int:
        return int(self.embeddings.has_cls)

    def num_patches(self, height: int, width: int) -> int:
        patches = (height // self.config.patch_size) * (width // self.config.patch_size)
        kept = {"full": self._n_prefix, "default": 0, "drop_first": self._n_prefix - 1}
        return patches + kept[self.config.select_strategy]

    def _states(self, pixel_values: torch.Tensor, upto: int) -> Iterator[torch.Tensor]:
        """Yield hidden states 0 (embeddings) .. upto (output of layer `upto`), computing nothing beyond."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ImageError(
                f"pixel_values must be (B, {self.config.num_channels}, H, W), got {tuple(pixel_values.shape)}; "
                "use vlbridge.vision.ImageProcessor to make them"
            )
        height, width = pixel_values.shape[-2:]
        if min(height, width) < self.config.patch_size:
            raise ImageError(f"image {height}x{width} is smaller than one {self.config.patch_size}px patch")
        rope = None
        if self.config.position == "rope2d":
            cfg, p = self.config, self.config.patch_size
            head_dim = cfg.hidden_size // cfg.num_attention_heads
            cos, sin = rope2d_cos_sin(height // p, width // p, head_dim, cfg.rope_theta, pixel_values.device)
            rope = (cos, sin, self._n_prefix)
        x = self.embeddings(pixel_values)
        if self.config.family == "clip":
            x = self.pre_layrnorm(x)
        yield x
        for layer in self.encoder.layers[:upto]:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, rope, use_reentrant=False)
            else:
                x = layer(x, rope)
            yield x

    def hidden_states(self, pixel_values: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """[embeddings (after CLIP's pre-LN), layer 1 out, ..., layer `upto` out] (HF semantics, no post-LN).

        `upto` (default: all layers) stops early so later layers are never computed.
        """
        n_layers = self.config.num_hidden_layers
        upto = n_layers if upto is None else upto
        if not 0 <= upto <= n_layers:
            raise ConfigError(f"upto must be within 0..{n_layers} for a {n_layers}-layer ViT, got {upto}")
        return list(self._states(pixel_values, upto))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Selected features (B, N, hidden_size): feature_layer(s) concatenated on channels, CLS per select_strategy."""
        wanted = set(self._feature_layers)
        kept = {i: x for i, x in enumerate(self._states(pixel_values, max(wanted))) if i in wanted}
        features = torch.cat([kept[i] for i in self._feature_layers], dim=-1)  # (B, N_all, D * n_layers)
        if self.config.select_strategy != "full":
            dropped = self._n_prefix if self.config.select_strategy == "default" else 1
            features = features[:, dropped:]  # (B, N, D * n_layers)
        return features

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One vector per image (B, D): CLIP post_layernorm(CLS); SigLIP head(post_layernorm(last)).

        A SigLIP ViT without a head returns the mean of the post-LN patch tokens (for contrastive pre-training).
        """
        *_, last = self._states(pixel_values, self.config.num_hidden_layers)
        if self.config.family == "clip":
            return self.post_layernorm(last[:, 0])
        last = self.post_layernorm(last)
        return self.head(last) if self.config.use_head else last.mean(dim=1)
