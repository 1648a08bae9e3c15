"""The Connector interface every bridge in SPEC section 2 implements, and the registry that names them.

A connector maps vision features (one tensor per image) to visual tokens in the LM's embedding space. It may add
no tokens at all and reach into the LM instead (`lm_hooks`, used by Flamingo's gated cross-attention), or build
layers of the LM's own structure (`ConnectorContext.block_cls`, used by LLaVA-Mini's modality pre-fusion) and rewrite
the text embeddings too (`fuse` at the prompt, `fuse_step` for each generated token, with state in a `FusionCache`).

Each connector declares its options (`connector.options` in a config) as a frozen dataclass, its `Options`, with
types and defaults; `parse_options` is the one path from the config's mapping to that dataclass, through the config
reader's `from_dict`, so an unknown option or a wrong type is a ConfigError naming the connector, the option, the
expected type and every option the connector accepts. Range checks live in the dataclass's `__post_init__`; checks that
need the parts around the connector (the LM's depth, say) stay in the connector.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import nn

from vlbridge.config import ConnectorConfig, LMConfig, from_dict, unknown_keys
from vlbridge.connectors.reduce import avg_pool_grid, pooled_count
from vlbridge.connectors.splice import splice
from vlbridge.errors import ConfigError
from vlbridge.registry import Registry

if TYPE_CHECKING:
    from vlbridge.lm.decoder import DecoderLM

LayerHook = Callable[[torch.Tensor], torch.Tensor]
"""Applied to the LM residual stream (B, T, D) before the decoder layer it is keyed by."""

OptionsT = TypeVar("OptionsT")

VIDEO_FRAME_POOL = 2
"""Spatial connectors average-pool each video frame's patch grid k x k before projecting it (LLaVA-NeXT-Video)."""


@dataclass(frozen=True)
class NoOptions:
    """The options of a connector that takes none (mlp, linear): any key in `connector.options` is an error."""


def describe_options(options_cls: type) -> str:
    """`name: type = default` for each field of an options dataclass ("none" without fields): what a connector
    accepts, as its option errors list it."""
    hints = typing.get_type_hints(options_cls)
    described = [f"{f.name}: {_type_name(hints[f.name])}{_default(f)}" for f in dataclasses.fields(options_cls)]
    return ", ".join(described) or "none"


def _default(f: dataclasses.Field) -> str:
    """` = 2`: the field's default, or what its default factory makes (every option has a default)."""
    return f" = {(f.default if f.default_factory is dataclasses.MISSING else f.default_factory())!r}"


def _type_name(tp: Any) -> str:
    """`int` for a class, `int | None` or `Literal['a', 'b']` for the rest (typing's repr without its module)."""
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def parse_options(name: str, options_cls: type[OptionsT], options: Mapping[str, Any]) -> OptionsT:
    """Connector `name`'s `options` mapping read into its options dataclass, defaults filled in.

    The one path from config to options: `from_dict` does the typing (the same reader as every other config section)
    and this adds which connector it was and what it accepts, so the user can fix the key in one read.
    """
    data = dict(options)
    accepted = describe_options(options_cls)
    unknown = unknown_keys(options_cls, data)
    if unknown:
        raise ConfigError(f"connector {name!r} has no option(s) {', '.join(unknown)}; its options are: {accepted}")
    try:
        return from_dict(options_cls, data, "connector.options")
    except ConfigError as err:
        raise ConfigError(f"connector {name!r}: {err}; its options are: {accepted}") from None


def at_least(options: object, minimum: int, *names: str) -> None:
    """Raise ConfigError for the first of the fields `names` of `options` below `minimum` (None means unset)."""
    for key in names:
        value = getattr(options, key)
        if value is not None and value < minimum:
            raise ConfigError(f"connector.options.{key} must be >= {minimum}, got {value!r}")


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
    """Maps vision features (N_images, P, Dv) to visual tokens (N_images, K, D) for the LM.

    A subclass sets `Options` to its options dataclass; `self.options` then holds `config.options` read into it.
    """

    Options: ClassVar[type] = NoOptions
    """The dataclass `connector.options` is read into: one field per option, with its type and default."""
    spatial: ClassVar[bool] = False
    """Whether `forward`'s tokens are a square grid over the image, row-major (mlp, pool, patch_merger): AnyRes then
    lays a tiled image's tokens out as one grid, unpads it and ends its rows with a newline token; other connectors'
    tokens for each AnyRes view follow one another."""

    def __init__(self, config: ConnectorConfig, context: ConnectorContext) -> None:
        super().__init__()
        self.config = config
        self.context = context
        self.options = parse_options(config.name, self.Options, config.options)

    @property
    def crop_grid(self) -> int:
        """Crops per side the processor cuts each image into, given to the connector before the whole image as one
        image's views (LLaVA-Mini HD: 2); 1: the whole image only."""
        return 1

    @abstractmethod
    def num_tokens(self, n_patches: int) -> int:
        """Visual tokens placed in the LM sequence for an image of `n_patches` features."""

    @abstractmethod
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N_images, P, Dv) -> (N_images, num_tokens(P), D)."""

    def frame_tokens(self, n_patches: int) -> int:
        """Visual tokens one video frame of `n_patches` features takes: spatial connectors pool the frame's grid 2x2
        first (LLaVA-NeXT-Video), the others treat a frame as an image."""
        if self.spatial:
            return self.num_tokens(pooled_count(n_patches, VIDEO_FRAME_POOL, self.config.name))
        return self.num_tokens(n_patches)

    def video_tokens(self, n_frames: int, n_patches: int) -> int:
        """Visual tokens a video of `n_frames` frames of `n_patches` features each takes in the LM sequence."""
        return n_frames * self.frame_tokens(n_patches)

    def encode_frames(self, features: torch.Tensor) -> torch.Tensor:
        """(F, P, Dv) frame features -> (F, frame_tokens(P), D), each frame on its own."""
        if self.spatial:
            features = avg_pool_grid(features, VIDEO_FRAME_POOL, self.config.name)  # (F, P', Dv)
        return self(features)

    def encode_video(self, features: torch.Tensor, chunk: int) -> torch.Tensor:
        """(F, P, Dv) features of one video's frames -> (video_tokens(F, P), D), frames in order, `chunk` at a time."""
        tokens = torch.cat([self.encode_frames(part) for part in features.split(chunk)])  # (F, K, D)
        return tokens.reshape(-1, tokens.shape[-1])

    def fuse_video(
        self,
        embeds: torch.Tensor,
        video_mask: torch.Tensor,
        videos: list[torch.Tensor],
        chunk: int,
        attention_mask: torch.Tensor | None = None,
        cache: FusionCache | None = None,
    ) -> torch.Tensor:
        """The LM input (B, T, D) with the videos' tokens at their positions; `videos` holds each video's frame
        features (F, P, Dv) in prompt order. The default splices `encode_video` and leaves the text alone."""
        return splice(embeds, video_mask, torch.cat([self.encode_video(v, chunk) for v in videos])[None])

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


CONNECTORS: Registry[type[Connector]] = Registry("connector")


def build_connector(config: ConnectorConfig, context: ConnectorContext) -> Connector:
    """Instantiate the connector registered as `config.name`."""
    return CONNECTORS.get(config.name)(config, context)
