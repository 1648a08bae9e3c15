"""The `pool` connector: k x k spatial average pooling of the patch grid, then LLaVA's mlp projector.

A plain way to cut visual tokens by k^2 (576 -> 144 for CLIP-L/336 at k = 2) before the projector, as compared in
token-reduction studies of LLaVA (e.g. LLaVA-1.5 ablations, LLaVA-NeXT's pooled video frames). Odd grids use ceil
mode without padding: the last row/column of windows covers the patches left over and averages only those, so an
S x S grid gives ceil(S / k)^2 tokens and no zero padding dilutes an edge token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlbridge.config import ConnectorConfig
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext, at_least
from vlbridge.connectors.mlp import mlp_projector
from vlbridge.connectors.reduce import avg_pool_grid, pooled_count


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
        return pooled_count(n_patches, self.options.kernel, self.config.name)  # ceil(S / k)^2

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(N, P, Dv) -> (N, ceil(S/k)^2, Dv): the pooled grid in row-major order, before projection."""
        return avg_pool_grid(features, self.options.kernel, self.config.name)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(self.pool(features))  # (N, K, D)

    def frame_tokens(self, n_patches: int) -> int:
        """A video frame is pooled once, by this connector's own kernel, as an image is."""
        return self.num_tokens(n_patches)

    def encode_frames(self, features: torch.Tensor) -> torch.Tensor:
        return self(features)  # (F, K, D)
