"""LLaVA-Mini's video path: one compressed token per frame, and modality pre-fusion per frame, averaged.

Zhang et al., "LLaVA-Mini" (2025), section 4.3: each frame is compressed to C x C tokens on its own, and pre-fusion
runs once per frame over [that frame's projected visual tokens; the prompt's text], the fused text then averaged over
the frames. The LM reads frames x C^2 compressed tokens and the averaged fused text, so its sequence grows by C^2 per
frame while pre-fusion's cost grows linearly with the frames and its memory stays at `chunk` frames at a time.

Decoding fuses each generated token the same way: pre-fusion is causal with the visual tokens first, so the fused
embedding of token t depends only on the frame and text up to t. The prompt's text and the frames' projected tokens
are kept, and each step reruns pre-fusion per frame over the text so far (chunked), keeping the position of the new
tokens; a per-frame KV cache would make steps cheaper at the cost of frames x layers x (P + T) cached keys.
Pre-fusion reads only a row's text positions (its video positions are dropped, not masked), so its cost is frames x
(P + T) and not frames x (P + T + video tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vlbridge.errors import PlaceholderError
from vlbridge.lm.decoder import padding_mask

Prefuse = Callable[[Tensor, Tensor, Tensor], Tensor]
"""Runs the pre-fusion blocks: (x (N, S, D), positions (N, S), bool mask (N, 1, S, S)) -> (N, S, D)."""


@dataclass
class VideoPrefusionState:
    """What decoding needs to fuse generated tokens with a video prompt: each row's frames' projected tokens
    (F_b, P, D) or None, and its text so far without the video positions: embeddings (T_b, D) and which of them are
    real tokens (T_b,), padding not."""

    frames: list[Tensor | None]
    text: list[Tensor]
    text_valid: list[Tensor]
    chunk: int

    def append(self, embeds: Tensor, valid: Tensor) -> None:
        """Add generated tokens: embeddings (B, t, D) and their attention mask (B, t)."""
        self.text = [torch.cat([row, new]) for row, new in zip(self.text, embeds, strict=True)]
        self.text_valid = [torch.cat([row, new.bool()]) for row, new in zip(self.text_valid, valid, strict=True)]


def frames_per_row(video_mask: Tensor, projected: list[Tensor], tokens_per_video: list[int]) -> list[Tensor | None]:
    """Each prompt row's frames (F_b, P, D): the videos' projected frame tokens dealt out to rows in reading order by
    the video-token positions each row holds (B, T); None for a row without a video."""
    slots = video_mask.sum(dim=1).tolist()  # video tokens per row
    rows: list[Tensor | None] = []
    k = 0
    for b, n in enumerate(slots):
        taken: list[Tensor] = []
        while n > 0 and k < len(projected):
            taken.append(projected[k])
            n -= tokens_per_video[k]
            k += 1
        if n != 0:
            raise PlaceholderError(
                f"prompt row {b} has video-token positions that are not whole videos; build inputs with the model's "
                "processor so each <video> is expanded to its number of tokens, one video per <video>"
            )
        rows.append(torch.cat(taken) if taken else None)
    return rows


def fuse_text(prefuse: Prefuse, frames: Tensor, text: Tensor, valid: Tensor, chunk: int) -> Tensor:
    """Text (T, D) fused with each of `frames` (F, P, D) on its own, averaged over the frames: (T, D).

    `valid` (T,) marks real text tokens (padding and video positions are not read); frames run `chunk` at a time."""
    p, t = frames.shape[1], text.shape[0]
    keys_valid = torch.cat([valid.new_ones(p), valid])  # (P + T,)
    positions = (keys_valid.long().cumsum(0) - 1).clamp_min(0)  # (P + T,)
    total = text.new_zeros(t, text.shape[-1])
    for part in frames.split(chunk):
        c = part.shape[0]
        x = torch.cat([part.to(text.dtype), text.expand(c, -1, -1)], dim=1)  # (c, P + T, D)
        mask = padding_mask(keys_valid.expand(c, -1), p + t)  # (c, 1, P + T, P + T)
        total += prefuse(x, positions.expand(c, -1), mask)[:, p:].sum(dim=0)  # (T, D)
    return total / frames.shape[0]


def fuse_rows(prefuse: Prefuse, state: VideoPrefusionState, last: int) -> Tensor:
    """The last `last` text positions of every row (B, last, D), fused with its frames; rows without a video keep
    their raw embeddings."""
    out = []
    for frames, text, valid in zip(state.frames, state.text, state.text_valid, strict=True):
        if frames is None:
            out.append(text[-last:])
        else:
            out.append(fuse_text(prefuse, frames, text, valid, state.chunk)[-last:].to(text.dtype))
    return torch.stack(out)  # (B, last, D)
