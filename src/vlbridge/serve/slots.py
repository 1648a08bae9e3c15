"""The serving engine's KV cache: one preallocated buffer of `slots` rows, each row one running request.

Continuous batching (Yu et al., "Orca", OSDI 2022) lets requests join and leave a running batch between decode steps.
The buffers (slots, H_kv, max_length, hd) per layer are allocated once when the engine starts; a request is prefilled
into a free row, decodes beside the others at its own position, and its row is reused by the next request. Running
requests always hold rows 0..n-1 (a finished request's row is filled with the last row's contents), so a decode
step reads the batch as views, without gathering.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlbridge.lm.decoder import DecoderLM
from vlbridge.lm.kv_cache import KVCache


class RaggedStep(KVCache):
    """The KVCache one batched decode step sees: rows 0..n-1 of the slot buffers, row i writing its one new token at
    `positions[i]` (its own length) instead of one shared length."""

    def __init__(self, keys: list[Tensor], values: list[Tensor], positions: Tensor) -> None:
        n = positions.shape[0]
        self.keys, self.values = [k[:n] for k in keys], [v[:n] for v in values]
        self.batch_size, self.max_length = n, keys[0].shape[2]
        self.positions = positions
        self.rows = torch.arange(n, device=positions.device)
        self.length = int(positions.max())  # the decoder reads past = length; its mask covers length + 1 keys

    def write_positions(self) -> Tensor:
        """Each row writes its new token at its own length."""
        return self.positions

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v (n, H_kv, 1, hd) written at each row's position; views (n, H_kv, length + 1, hd) returned."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self.rows, :, self.positions] = k[:, :, 0]
        values[self.rows, :, self.positions] = v[:, :, 0]
        end = self.length + 1
        return keys[:, :, :end], values[:, :, :end]


class SlotCache:
    """Key/value buffers for `slots` concurrent requests of up to `max_length` tokens each, allocated once."""

    def __init__(self, language_model: DecoderLM, slots: int, max_length: int) -> None:
        whole = language_model.new_cache(slots, max_length)
        self.keys, self.values = whole.keys, whole.values
        self.slots, self.max_length = slots, max_length

    def row(self, index: int) -> KVCache:
        """A fresh KVCache (length 0) over row `index` alone, for prefilling one request into it."""
        return KVCache.from_buffers(
            [k[index : index + 1] for k in self.keys], [v[index : index + 1] for v in self.values]
        )

    def step(self, positions: Tensor) -> RaggedStep:
        """The cache of one decode step over rows 0..len(positions)-1, row i at length positions[i]."""
        return RaggedStep(self.keys, self.values, positions)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of row `source` into row `target` (compacting the running rows)."""
        for buffers in (self.keys, self.values):
            for layer in buffers:
                layer[target, :, :length] = layer[source, :, :length]

    @property
    def nbytes(self) -> int:
        """Memory held by every buffer, in bytes."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
