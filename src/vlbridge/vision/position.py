"""Position information for the ViT: learned absolute embeddings (resized to any grid) and 2D rotary embeddings.

Learned absolute: CLIP/SigLIP keep one embedding per patch of a square grid fixed at training time; for other input
sizes the grid is resized bicubically (align_corners=False), as in DINO/DINOv2 and HF's `interpolate_pos_encoding`.

2D RoPE: as in the Qwen2-VL vision encoder (Wang et al., "Qwen2-VL", 2024), each head's rotary dimensions are split in
two: the first half of the frequencies rotate by the patch row, the second half by the patch column. Attention scores
q.k then depend only on the relative 2D offset of two patches, at any image size, with no parameters.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def interpolate_learned(weight: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize square-grid position embeddings (G*G, D) to a (grid_h, grid_w) grid, returned as (grid_h*grid_w, D)."""
    num_positions, dim = weight.shape
    side = round(num_positions**0.5)
    assert side * side == num_positions, "learned position embeddings must cover a square grid"
    if (grid_h, grid_w) == (side, side):
        return weight
    grid = weight.reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, G, G)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)  # (1, D, gh, gw)
    return grid.permute(0, 2, 3, 1).reshape(grid_h * grid_w, dim)  # (gh*gw, D)


def rope2d_cos_sin(
    grid_h: int, grid_w: int, head_dim: int, theta: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (grid_h*grid_w, head_dim) of the 2D rotary angles for patches in row-major order.

    Rotation pairs are (i, i + head_dim/2) (the "rotate half" layout); of the head_dim/2 pairs, the first half turn
    with the patch row and the second half with the patch column, each with frequencies theta^(-k / (head_dim/4)).
    """
    assert head_dim % 4 == 0, "2D RoPE needs a head_dim divisible by 4"
    quarter = head_dim // 4
    inv_freq = 1.0 / theta ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)  # (D/4,)
    rows = torch.arange(grid_h, dtype=torch.float32, device=device).repeat_interleave(grid_w)  # (N,)
    cols = torch.arange(grid_w, dtype=torch.float32, device=device).repeat(grid_h)  # (N,)
    angles = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)  # (N, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (N, D)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., N, head_dim) by per-position angles given as cos/sin (N, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (..., N, D)
    return (x * cos + rotated * sin).to(x.dtype)
