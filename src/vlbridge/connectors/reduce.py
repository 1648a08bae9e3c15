"""Shared pieces of the spatial token-reduction connectors (`pool`, `patch_merger`, SPEC section 2).

They view the vision features as the square patch grid the ViT produced (row-major, CLS dropped). That view is
checked here once, so both reject a non-grid feature count with the same actionable ConfigError.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from vlbridge.errors import ConfigError


def square_side(n_patches: int, name: str) -> int:
    """The side of the square patch grid that `n_patches` features form; a non-square count is a ConfigError."""
    side = math.isqrt(max(n_patches, 0))
    if n_patches < 1 or side * side != n_patches:
        raise ConfigError(
            f"connector {name!r} needs a square patch grid, but the vision encoder gives {n_patches} features per "
            "image, not a perfect square; if it keeps the CLS token, set vision.select_strategy: default to drop it"
        )
    return side


def as_grid(features: torch.Tensor, name: str) -> torch.Tensor:
    """(N, P, D) row-major patch features -> (N, S, S, D) with S * S = P."""
    n, p, d = features.shape
    side = square_side(p, name)
    return features.reshape(n, side, side, d)  # (N, S, S, D)


def pooled_count(n_patches: int, kernel: int, name: str) -> int:
    """Tokens left from an S x S grid of `n_patches` after k x k average pooling in ceil mode: ceil(S / k)^2."""
    side = square_side(n_patches, name)
    return ((side + kernel - 1) // kernel) ** 2


def avg_pool_grid(features: torch.Tensor, kernel: int, name: str) -> torch.Tensor:
    """(N, P, D) -> (N, ceil(S/k)^2, D): k x k average pooling of the patch grid in ceil mode, row-major; edge windows
    average only the patches they cover (no zero padding)."""
    grid = as_grid(features, name).permute(0, 3, 1, 2)  # (N, D, S, S)
    pooled = F.avg_pool2d(grid, kernel, stride=kernel, ceil_mode=True)  # (N, D, S', S')
    return pooled.flatten(2).transpose(1, 2)  # (N, S'^2, D)
