"""Splicing visual tokens into the text embedding sequence at the `<image>` placeholder positions.

The processor has already expanded every `<image>` to as many image-token ids as the image takes, so the sequence
positions of the spliced embeddings line up with the logits (as in transformers' LlavaForConditionalGeneration).
"""

from __future__ import annotations

import torch

from vlbridge.errors import PlaceholderError


def image_token_mask(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Bool (B, T): True where a visual token goes."""
    return input_ids == image_token_id


def splice(embeds: torch.Tensor, mask: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """Place `visual` (N_images, K, D) row-major into `embeds` (B, T, D) where `mask` (B, T) is True.

    Images fill the masked positions in reading order: first prompt first, left to right.
    """
    n_slots = int(mask.sum())
    n_visual = visual.shape[0] * visual.shape[1]
    if n_slots != n_visual:
        raise PlaceholderError(
            f"the prompt has {n_slots} image-token positions but the images give {n_visual} visual tokens "
            f"({visual.shape[0]} image(s) x {visual.shape[1]} tokens); build inputs with the model's processor so each "
            "<image> is expanded to the right number of tokens, and pass one image per <image>"
        )
    flat = visual.reshape(-1, visual.shape[-1]).to(embeds.dtype)  # (N*K, D)
    return embeds.masked_scatter(mask.unsqueeze(-1), flat)
