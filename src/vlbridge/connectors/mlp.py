"""LLaVA's projectors: `mlp` (LLaVA-1.5 `mlp2x_gelu`, Linear -> GELU -> Linear) and `linear` (LLaVA-1).

Liu et al., "Improved Baselines with Visual Instruction Tuning" (2023). Weights are named as HF's
`LlavaMultiModalProjector` (`linear_1`, `linear_2`) so llava-hf checkpoints load with an identity map. Neither takes
`connector.options`: `depth`, `hidden_act` and `bias` are fields of the connector config itself. `mlp_projector` builds
the same projector inside the connectors that reduce or compress the patches before or after it.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from vlbridge.config import ConnectorConfig
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext
from vlbridge.errors import ConfigError
from vlbridge.nn_utils import activation


@CONNECTORS.register("mlp")
class MLPConnector(Connector):
    """`depth` Linear layers with the activation between them; one visual token per patch."""

    spatial = True

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        if config.depth < 1:
            raise ConfigError(f"connector.depth must be >= 1, got {config.depth}")
        d_in, d_out = context.vision_hidden_size, context.lm_config.hidden_size
        self.act = activation(config.hidden_act)
        for i in range(config.depth):
            setattr(self, f"linear_{i + 1}", nn.Linear(d_in if i == 0 else d_out, d_out, bias=config.bias))

    def num_tokens(self, n_patches: int) -> int:
        return n_patches

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        for i in range(self.config.depth):
            if i > 0:
                x = self.act(x)
            x = getattr(self, f"linear_{i + 1}")(x)
        return x  # (N, P, D)


@CONNECTORS.register("linear")
class LinearConnector(MLPConnector):
    """A single Linear projection per patch (LLaVA-1): the mlp connector at depth 1, whatever `depth` says."""

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(replace(config, depth=1), context)


def mlp_projector(config: ConnectorConfig, context: ConnectorContext) -> MLPConnector:
    """LLaVA's mlp from `config`'s depth, hidden_act and bias, as a part of another connector (whose options are its
    own, so the projector is built without them)."""
    return MLPConnector(replace(config, name="mlp", options={}), context)
