"""Shared pieces of the spatial token-reduction connectors (`pool`, `patch_merger`, SPEC section 2).

They view the vision features as the square patch grid the ViT produced (row-major, CLS dropped). That view is
checked here once, so both reject a non-grid feature count with the same actionable ConfigError.
"""

from __future__ import annotations

import math

import torch

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
