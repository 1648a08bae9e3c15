"""A toy connector in one file, written as a user writes one (docs/adding-a-connector.md): keep every `stride`-th
patch, scale it by a learned per-channel gain, and project it to the LM width.

Importing this module registers it as `toy`; tests/connectors/test_toy_connector.py imports it, then trains it for
two steps with `vlbridge train --config tests/connectors/toy.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlbridge.config import ConnectorConfig
from vlbridge.connectors import CONNECTORS, Connector, ConnectorContext
from vlbridge.connectors.base import at_least


@dataclass(frozen=True)
class ToyOptions:
    """`connector.options` of `toy`: every option has a type and a default."""

    stride: int = 2  # keep patches 0, stride, 2 * stride, ...

    def __post_init__(self) -> None:
        at_least(self, 1, "stride")


@CONNECTORS.register("toy")
class ToyConnector(Connector):
    """Every `stride`-th patch, times a learned gain, through one Linear: ceil(P / stride) tokens per image."""

    Options = ToyOptions
    options: ToyOptions

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.gain = nn.Parameter(torch.ones(context.vision_hidden_size))
        self.proj = nn.Linear(context.vision_hidden_size, context.lm_config.hidden_size, bias=config.bias)

    def num_tokens(self, n_patches: int) -> int:
        return -(-n_patches // self.options.stride)  # ceil(P / stride)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        kept = features[:, :: self.options.stride]  # (N, ceil(P / stride), Dv)
        return self.proj(kept * self.gain)  # (N, K, D)
