"""Rotary position embedding (RoPE) for the language model, as used by Llama, Mistral and Qwen2.

Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding" (2021). Channel pairs (i, i + hd/2) of
queries and keys are rotated by angle pos * theta^(-2i/hd) (the "rotate half" layout of HF checkpoints). The cos/sin
table is computed once in float32, exactly as HF computes it, grown on demand, and gathered per forward by position
id, so decoding a token costs one small gather instead of recomputing trigonometry. The table is a plain attribute
rather than a buffer: `module.to(torch.bfloat16)` must not round it, and it holds no learned state.

The sign of rotate-half is folded into the sin table: `sin` here is (-sin, +sin) over the two halves, so that
x * cos + roll(x, hd/2) * sin equals HF's x * cos + rotate_half(x) * sin bit for bit, in fewer operations.
"""

from __future__ import annotations

import torch
from torch import Tensor


class RotaryEmbedding:
    """cos/sin lookup for positions; `__call__(position_ids, dtype)` -> (cos, signed sin), each (B, T, hd)."""

    def __init__(self, head_dim: int, theta: float, initial_length: int = 2048) -> None:
        self.head_dim = head_dim
        self.theta = theta
        # On the CPU even while a model is built on the meta device: these are computed, never loaded.
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim))
        self._cos = self._sin = torch.empty(0, head_dim, device="cpu")
        self._initial_length = initial_length
        self._cast: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def _build(self, length: int, device: torch.device) -> None:
        """(Re)compute the float32 table for positions [0, length) on `device`."""
        positions = torch.arange(length, dtype=torch.float, device=device)
        freqs = positions[:, None] * self.inv_freq.to(device)[None, :]  # (L, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (L, hd)
        sin = freqs.sin()
        self._cos, self._sin = emb.cos(), torch.cat((-sin, sin), dim=-1)
        self._cast = {}

    def table(self, length: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos, sin (L >= length, hd) in `dtype` on `device`, cached per (dtype, device). Always ordinary tensors,
        even when first asked for under inference mode: `span` hands out views of them, which a later forward with
        autograd may save for backward."""
        with torch.inference_mode(False):
            if self._cos.shape[0] < length or self._cos.device != device:
                size = max(self._initial_length, self._cos.shape[0])
                while size < length:
                    size *= 2
                self._build(size, device)
            key = (dtype, device)
            if key not in self._cast:
                self._cast[key] = (self._cos.to(dtype), self._sin.to(dtype))
        return self._cast[key]

    def __call__(
        self, position_ids: Tensor, dtype: torch.dtype, max_position: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """cos, sin (B, T, hd) for position_ids (B, T) or (1, T); `max_position` bounds the ids (saves a sync)."""
        if max_position is None:
            max_position = int(position_ids.max()) if position_ids.numel() else 0
        cos, sin = self.table(max_position + 1, dtype, position_ids.device)
        return cos[position_ids], sin[position_ids]

    def span(self, start: int, length: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos, sin (1, length, hd) for positions start .. start + length - 1: views of the table, no gather (a
        gather of 100 positions took ~1 ms on a 2-core CPU, 1% of a SmolLM2-135M prompt)."""
        cos, sin = self.table(start + length, dtype, device)
        return cos[None, start : start + length], sin[None, start : start + length]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, T, hd) by cos / signed sin (B, T, hd) from `RotaryEmbedding`."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd)
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin
