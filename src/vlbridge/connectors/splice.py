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


def images_per_row(image_mask: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """(B,) number of images each row holds, from its image-token positions (B, T) and the tokens one image takes."""
    assert tokens_per_image >= 1, "only connectors that place tokens in the sequence group images by row"
    slots = image_mask.sum(dim=1)  # (B,)
    if bool((slots % tokens_per_image).any()):
        raise PlaceholderError(
            f"a prompt has image-token positions {slots.tolist()} that are not whole images of {tokens_per_image} "
            "tokens; build inputs with the model's processor so each <image> is expanded to the right number of tokens"
        )
    return slots // tokens_per_image


def rows_of_images(
    tokens: torch.Tensor, image_mask: torch.Tensor, tokens_per_image: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather per-image tokens (N_images, P, D) into one left-padded run per prompt row, images in reading order.

    `image_mask` (B, T) says where each row's images sit in the LM sequence, each image taking `tokens_per_image` slots.
    Returns (rows (B, V, D), valid (B, V) bool) with V the most tokens any row has; row b holds its n_b * P tokens
    at the right end, zeros (valid False) before them.
    """
    n_images, p, d = tokens.shape
    per_row = images_per_row(image_mask, tokens_per_image)  # (B,)
    if int(per_row.sum()) != n_images:
        raise PlaceholderError(
            f"the prompts hold {int(per_row.sum())} image(s) but {n_images} were given; pass one image per <image>"
        )
    lengths = per_row * p  # (B,)
    width = int(lengths.max()) if lengths.numel() else 0
    valid = torch.arange(width, device=tokens.device)[None, :] >= (width - lengths.to(tokens.device))[:, None]
    flat = tokens.reshape(n_images * p, d)  # (N*P, D)
    rows = flat.new_zeros(image_mask.shape[0], width, d).masked_scatter(valid.unsqueeze(-1), flat)  # (B, V, D)
    return rows, valid
