"""The Connector interface every bridge in SPEC section 2 implements, and the registry that names them.

A connector maps vision features (one tensor per image) to visual tokens in the LM's embedding space. It may add
no tokens at all and reach into the LM instead (`lm_hooks`, used by Flamingo's gated cross-attention), or build
layers of the LM's own structure (`ConnectorContext.block_cls`, used by LLaVA-Mini's modality pre-fusion).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.registry import Registry

LayerHook = Callable[[torch.Tensor], torch.Tensor]
"""Applied to the LM residual stream (B, T, D) before the decoder layer it is keyed by."""


@dataclass(frozen=True)
class ConnectorContext:
    """What a connector may know of the parts around it, without holding references to them."""

    vision_hidden_size: int
    lm_config: LMConfig
    block_cls: type[nn.Module]


class Connector(nn.Module, ABC):
    """Maps vision features (N_images, P, Dv) to visual tokens (N_images, K, D) for the LM."""

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__()
        self.config = config
        self.context = context

    @abstractmethod
    def num_tokens(self, n_patches: int) -> int:
        """Visual tokens placed in the LM sequence for an image of `n_patches` features."""

    @abstractmethod
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N_images, P, Dv) -> (N_images, num_tokens(P), D)."""

    def lm_hooks(self, features: torch.Tensor, image_mask: torch.Tensor) -> dict[int, LayerHook]:
        """Hooks into LM layers, keyed by layer index, given the vision features (N_images, P, Dv) and where the
        images sit in the sequence (B, T) bool; most connectors need none."""
        return {}


CONNECTORS: Registry[type[Connector]] = Registry("connector")


def build_connector(config: ConnectorConfig, context: ConnectorContext) -> Connector:
    """Instantiate the connector registered as `config.name`."""
    return CONNECTORS.get(config.name)(config, context)
