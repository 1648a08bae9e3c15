"""The `tome` connector: Token Merging of similar visual tokens, then LLaVA's mlp projector.

Bolya et al., "Token Merging: Your ViT But Faster" (ICLR 2023). One round of bipartite soft matching splits the
tokens alternately into sets A and B, scores every A-B pair by cosine similarity of the features (the connector has
no attention keys of its own), gives each A token its most similar B token and merges the r best-scoring edges. A
merge is a size-weighted average and token sizes are tracked, so after any number of rounds every token is the exact
mean of the patches it absorbed. Rounds repeat (at most half the tokens each) until the target count is reached:
`options.target` tokens, or `options.ratio` (default 0.25) of the patches, rounded, at least 1. Survivors are kept
in raster order of their B token's patch, so the next round's alternation pairs spatial neighbours. Deterministic
and batched: every image of a batch ends with the same count, which `num_tokens` states exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vlbridge.config import ConnectorConfig
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext, at_least
from vlbridge.connectors.mlp import mlp_projector
from vlbridge.errors import ConfigError

DEFAULT_RATIO = 0.25
"""The share of the patches kept when neither `target` nor `ratio` is set."""


def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor, pos: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round: merge the r A tokens (even slots) most similar to their best B token (odd slots) into it.

    x (N, T, D) token means, size (N, T, 1) patches per token, pos (N, T) raster position; r <= T // 2.
    Returns the T - r surviving tokens' means, sizes and positions, sorted by position.
    """
    assert 0 <= r <= x.shape[1] // 2, "a round merges at most half the tokens"
    d = x.shape[-1]
    metric = F.normalize(x, dim=-1)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (N, Ta, Tb)
    best, best_idx = scores.max(dim=-1)  # (N, Ta)
    order = best.argsort(dim=-1, descending=True, stable=True)  # (N, Ta) edges, most similar first
    src, keep = order[:, :r, None], order[:, r:, None]  # (N, r, 1), (N, Ta - r, 1)
    dst = best_idx[..., None].gather(1, src)  # (N, r, 1)
    weighted = x * size  # (N, T, D) sums of the patches each token holds
    wa, wb, sa, sb = weighted[:, ::2], weighted[:, 1::2], size[:, ::2], size[:, 1::2]
    wb = wb.scatter_add(1, dst.expand(-1, -1, d), wa.gather(1, src.expand(-1, -1, d)))  # (N, Tb, D)
    sb = sb.scatter_add(1, dst, sa.gather(1, src))  # (N, Tb, 1)
    weighted = torch.cat([wa.gather(1, keep.expand(-1, -1, d)), wb], dim=1)  # (N, T - r, D)
    size = torch.cat([sa.gather(1, keep), sb], dim=1)  # (N, T - r, 1)
    pos = torch.cat([pos[:, ::2].gather(1, keep[..., 0]), pos[:, 1::2]], dim=1)  # (N, T - r)
    raster = pos.argsort(dim=1)  # (N, T - r) positions are distinct, so the order is unique
    size = size.gather(1, raster[..., None])
    x = weighted.gather(1, raster[..., None].expand(-1, -1, d)) / size
    return x, size, pos.gather(1, raster)


def merge_tokens(x: torch.Tensor, target: int, size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge (N, T, D) tokens down to `target` by repeated bipartite rounds; returns means and sizes (N, K, 1).

    `size` (N, T, 1) gives the tokens' starting weights (default 1 each); sum(size * x) over tokens is preserved.
    """
    n, t, _ = x.shape
    dtype = x.dtype
    x = x.float()
    size = torch.ones(n, t, 1, device=x.device) if size is None else size.float()
    pos = torch.arange(t, device=x.device).expand(n, t)  # (N, T)
    while x.shape[1] > target:
        x, size, pos = bipartite_merge(x, size, pos, min(x.shape[1] - target, x.shape[1] // 2))
    return x.to(dtype), size


@dataclass(frozen=True)
class ToMeOptions:
    """`connector.options` of `tome`: merge down to `target` tokens, or to `ratio` of the patches (at most one)."""

    target: int | None = None  # tokens per image (fewer patches stay as they are)
    ratio: float | None = None  # share of the patches, rounded, at least 1 token; DEFAULT_RATIO when neither is set

    def __post_init__(self) -> None:
        if self.target is not None and self.ratio is not None:
            raise ConfigError("connector.options sets both target and ratio; they exclude each other, drop one")
        at_least(self, 1, "target")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"connector.options.ratio must be a number in (0, 1], got {self.ratio!r}")


@CONNECTORS.register("tome")
class ToMeConnector(Connector):
    """Bipartite token merging down to `options.target` tokens or `options.ratio` of them, then the mlp projector."""

    Options = ToMeOptions
    options: ToMeOptions

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.projector = mlp_projector(config, context)

    def num_tokens(self, n_patches: int) -> int:
        if self.options.target is not None:
            return min(self.options.target, n_patches)
        ratio = DEFAULT_RATIO if self.options.ratio is None else self.options.ratio
        return max(1, round(n_patches * ratio))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        merged, _ = merge_tokens(features, self.num_tokens(features.shape[1]))  # (N, K, Dv)
        return self.projector(merged)  # (N, K, D)
