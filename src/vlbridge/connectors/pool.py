"""The `pool` connector: k x k spatial average pooling of the patch grid, then LLaVA's mlp projector.

A plain way to cut visual tokens by k^2 (576 -> 144 for CLIP-L/336 at k = 2) before the projector, as compared in
token-reduction studies of LLaVA (e.g. LLaVA-1.5 ablations, LLaVA-NeXT's pooled video frames). Odd grids use ceil
mode without padding: the last row/column of windows covers the patches left over and averages only those, so an
S x S grid gives ceil(S / k)^2 tokens and no zero padding dilutes an edge token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from vlbridge.config import ConnectorConfig
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext, at_least
from vlbridge.connectors.mlp import mlp_projector
from vlbridge.connectors.reduce import as_grid, square_side


@dataclass(frozen=True)
class PoolOptions:
    """`connector.options` of `pool`."""

    kernel: int = 2  # k: pool k x k patches into one token

    def __post_init__(self) -> None:
        at_least(self, 1, "kernel")


@CONNECTORS.register("pool")
class PoolConnector(Connector):
    """Average-pool k x k neighbourhoods of the patch grid (`options.kernel`, default 2), then the mlp projector."""

    spatial = True

    Options = PoolOptions
    options: PoolOptions

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.projector = mlp_projector(config, context)

    def num_tokens(self, n_patches: int) -> int:
        side, k = square_side(n_patches, self.config.name), self.options.kernel
        return ((side + k - 1) // k) ** 2  # ceil(S / k)^2

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(N, P, Dv) -> (N, ceil(S/k)^2, Dv): the pooled grid in row-major order, before projection."""
        k = self.options.kernel
        grid = as_grid(features, self.config.name).permute(0, 3, 1, 2)  # (N, Dv, S, S)
        pooled = F.avg_pool2d(grid, k, stride=k, ceil_mode=True)  # (N, Dv, S', S')
        return pooled.flatten(2).transpose(1, 2)  # (N, S'^2, Dv)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(self.pool(features))  # (N, K, D)
