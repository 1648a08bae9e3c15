"""The Connector interface every bridge in SPEC section 2 implements, and the registry that names them.

A connector maps vision features (one tensor per image) to visual tokens in the LM's embedding space. It may add
no tokens at all and reach into the LM instead (`lm_hooks`, used by Flamingo's gated cross-attention), or build
layers of the LM's own structure (`ConnectorContext.block_cls`, used by LLaVA-Mini's modality pre-fusion) and rewrite
the text embeddings too (`fuse` at the prompt, `fuse_step` for each generated token, with state in a `FusionCache`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vlbridge.config import ConnectorConfig, LMConfig
from vlbridge.connectors.splice import splice
from vlbridge.errors import ConfigError
from vlbridge.registry import Registry

if TYPE_CHECKING:
    from vlbridge.lm.decoder import DecoderLM

LayerHook = Callable[[torch.Tensor], torch.Tensor]
"""Applied to the LM residual stream (B, T, D) before the decoder layer it is keyed by."""


@dataclass(frozen=True)
class ConnectorContext:
    """What a connector may know of the parts around it, without holding references to them."""

    vision_hidden_size: int
    lm_config: LMConfig
    block_cls: type[nn.Module]


@dataclass
class FusionCache:
    """Decode-time state of a connector that rewrites text embeddings, kept beside the LM's KV cache.

    The VLM creates one per generate call; `fuse` sets `state` at the prompt when later tokens need it (LLaVA-Mini's
    pre-fusion KV cache), and `fuse_step` reads it. `max_length` is what the LM cache holds (prompt + new tokens).
    """

    max_length: int
    state: Any = None


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

    def held_media_elements(self, n_patches: int) -> int:
        """Elements per image of `n_patches` features this connector holds outside the LM's KV cache while generating
        (the media gated cross-attention reads at every step); 0 when everything it adds is in the sequence."""
        return 0

    def fuse(
        self,
        embeds: torch.Tensor,
        image_mask: torch.Tensor,
        features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: FusionCache | None = None,
    ) -> torch.Tensor:
        """The LM input (B, T, D): text embeddings with this connector's visual tokens at the image positions.

        The default splices `forward(features)` in and leaves the text alone; a connector that also rewrites the text
        (LLaVA-Mini's modality pre-fusion) overrides it, and stores what decoding needs in `cache`.
        """
        return splice(embeds, image_mask, self(features))

    def fuse_step(self, embeds: torch.Tensor, attention_mask: torch.Tensor, cache: FusionCache) -> torch.Tensor:
        """Embeddings (B, t, D) of generated tokens as the LM must see them, given the full attention mask so far;
        called only when `fuse` set `cache.state`. The default leaves them unchanged."""
        return embeds

    def init_from_language_model(self, language_model: DecoderLM) -> None:
        """Called by the VLM once the language model holds its weights, for connectors initialised from it (LLaVA-Mini
        copies its first layers); most connectors do nothing."""


def check_options(config: ConnectorConfig, allowed: Iterable[str]) -> None:
    """Reject option keys the connector does not read, so a typo never falls back to a default silently."""
    known = sorted(allowed)
    unknown = sorted(set(config.options) - set(known))
    if unknown:
        raise ConfigError(
            f"connector {config.name!r} has no option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(known) or 'none'}"
        )


CONNECTORS: Registry[type[Connector]] = Registry("connector")


def build_connector(config: ConnectorConfig, context: ConnectorContext) -> Connector:
    """Instantiate the connector registered as `config.name`."""
    return CONNECTORS.get(config.name)(config, context)
