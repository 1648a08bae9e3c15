"""A preallocated key/value cache for autoregressive decoding, kept outside the model class.

Decoding one token at a time re-uses the keys and values of every earlier position (Pope et al., "Efficiently
Scaling Transformer Inference", 2022). Growing the cache with `torch.cat` each step allocates and copies the whole
history per layer per token; this cache allocates (B, H_kv, max_length, hd) buffers once and writes each step's
keys/values in place, so the decode hot path allocates nothing here. All layers share one `length`, advanced once per
forward by the model after every layer has written.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlbridge.errors import ContextOverflowError


class KVCache:
    """Per-layer key/value buffers (B, H_kv, max_length, hd), filled left to right."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        max_length: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        if max_length < 1:
            raise ContextOverflowError(f"a KV cache needs max_length >= 1, got {max_length}")
        shape = (batch_size, num_kv_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.batch_size = batch_size
        self.max_length = max_length
        self.length = 0

    @classmethod
    def from_buffers(cls, keys: list[Tensor], values: list[Tensor]) -> KVCache:
        """A cache over existing per-layer buffers (B, H_kv, max_length, hd), written in place: a server's slot cache
        hands each request a view of its rows, so no request allocates its own."""
        cache = cls.__new__(cls)
        cache.keys, cache.values = keys, values
        cache.batch_size, cache.max_length = keys[0].shape[0], keys[0].shape[2]
        cache.length = 0
        return cache

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H_kv, t, hd) at [length, length + t); return views (B, H_kv, length + t, hd) of all stored."""
        end = self.room(k.shape[2])
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]

    def write_positions(self) -> Tensor:
        """Where each row's next token is written: (B,) int64, every row at `length` (a server's ragged batch
        overrides it)."""
        return torch.full((self.batch_size,), self.length, dtype=torch.long, device=self.keys[0].device)

    def room(self, t: int) -> int:
        """The end of t more tokens after the stored ones; ContextOverflowError if the buffers cannot hold them."""
        end = self.length + t
        if end > self.max_length:
            raise ContextOverflowError(
                f"the sequence needs {end} tokens but the KV cache holds at most {self.max_length}; "
                "shorten the prompt, lower max_new_tokens, or allocate a larger cache"
            )
        return end

    def advance(self, t: int) -> None:
        """Mark t more tokens as stored; the model calls it once per forward, after every layer wrote."""
        assert self.length + t <= self.max_length, "advance past a write that update() would have refused"
        self.length += t

    @property
    def nbytes(self) -> int:
        """Memory held by the key and value buffers, in bytes."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
