"""The `patch_merger` connector (Qwen2-VL): concatenate each m x m block of neighbouring patches, then an MLP.

Wang et al., "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World at Any Resolution" (2024).
Qwen2-VL's merger normalises each patch (LayerNorm over Dv, eps 1e-6), concatenates the m x m neighbours in
row-major order (top-left, top-right, bottom-left, bottom-right for m = 2) into one m^2 * Dv vector, and maps it with
Linear(m^2 Dv, m^2 Dv) -> GELU -> Linear(m^2 Dv, D). `options.norm: merged` instead normalises the concatenated
vector (Qwen3-VL's post-shuffle norm). Weights are named as HF's merger (`ln_q`, `mlp.0`, `mlp.2`), so the block
layout matches Qwen2-VL's and its merger weights fit by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlbridge.config import ConnectorConfig
from vlbridge.connectors.base import CONNECTORS, Connector, ConnectorContext, at_least
from vlbridge.connectors.reduce import as_grid, square_side
from vlbridge.errors import ConfigError
from vlbridge.nn_utils import activation


@dataclass(frozen=True)
class PatchMergerOptions:
    """`connector.options` of `patch_merger`."""

    merge: int = 2  # m: concatenate m x m neighbouring patches into one token
    norm: Literal["patch", "merged"] = "patch"  # LayerNorm each patch (Qwen2-VL) or the merged vector (Qwen3-VL)

    def __post_init__(self) -> None:
        at_least(self, 1, "merge")


@CONNECTORS.register("patch_merger")
class PatchMergerConnector(Connector):
    """m x m neighbouring patches (`options.merge`, default 2) -> one token; `options.norm`: patch | merged."""

    spatial = True
    Options = PatchMergerOptions
    options: PatchMergerOptions

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        d_vision = context.vision_hidden_size
        d_merged = d_vision * self.options.merge**2
        self.ln_q = nn.LayerNorm(d_vision if self.options.norm == "patch" else d_merged, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(d_merged, d_merged, bias=config.bias),
            activation(config.hidden_act),
            nn.Linear(d_merged, context.lm_config.hidden_size, bias=config.bias),
        )

    def num_tokens(self, n_patches: int) -> int:
        side, m = square_side(n_patches, self.config.name), self.options.merge
        if side % m:
            raise ConfigError(
                f"connector 'patch_merger' merges {m} x {m} patches, but the patch grid is "
                f"{side} x {side} ({n_patches} patches, not divisible by {m**2}); choose "
                f"vision.image_size / vision.patch_size divisible by {m}, or set connector.options.merge"
            )
        return n_patches // m**2

    def group(self, features: torch.Tensor) -> torch.Tensor:
        """(N, P, C) row-major grid -> (N, P / m^2, m^2 * C): each m x m block's patches concatenated row-major."""
        self.num_tokens(features.shape[1])  # a ConfigError unless the grid splits into m x m blocks
        grid = as_grid(features, self.config.name)  # (N, S, S, C)
        n, side, _, c = grid.shape
        m = self.options.merge
        blocks = side // m
        grid = grid.reshape(n, blocks, m, blocks, m, c).permute(0, 1, 3, 2, 4, 5)  # (N, S/m, S/m, m, m, C)
        return grid.reshape(n, blocks * blocks, m * m * c)  # (N, P/m^2, m^2 C)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        merged = self.group(self.ln_q(features)) if self.options.norm == "patch" else self.ln_q(self.group(features))
        return self.mlp(merged)  # (N, P/m^2, D)
