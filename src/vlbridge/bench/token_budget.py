"""The token budget of a context window: what each connector design leaves for text, how many video frames fit,
and the KV-cache memory its visual tokens take (SPEC section 3, "Token budget").

Visual tokens per image come from the connectors' own `Connector.num_tokens`, built on the meta device (no weights,
no compute), for every design that is registered; a design whose connector is not registered (or cannot be built)
falls back to the rule its paper documents, and the row says so. The figures the field quotes for a 4096 context with
CLIP ViT-L/14 at 336 px (576 patches): mlp 576 -> 3520 left for text (LLaVA-1.5), qformer 32 -> 4064 (BLIP-2),
AnyRes 2x2 + base view 5 x 576 = 2880 -> 1216 (LLaVA-NeXT, counted before unpadding and row-end tokens); LLaVA-Mini's
HD model, 2x2 crops + the whole image compressed to 8 x 8 = 64 tokens. AnyRes rows
here count as the processor does (vlbridge.highres.anyres): an image filling the 2x2 grid takes 576 + 48 x (48 + 1)
= 2928 with the mlp connector (its row-end tokens included), 144 + 24 x 25 = 744 with pool.

KV cache: bytes = tokens x layers x 2 (K and V) x kv_heads x head_dim x bytes per element; Vicuna-7B in fp16 holds
0.5 MiB per token. Video is compressed per frame, so frames fit = floor((context - text_reserve) / tokens per frame).
A real video file is counted by a model's own processor (`video_tokens`): the frames it samples and the tokens its
connector gives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlbridge.config import ConnectorConfig, LMConfig, ModelConfig, VisionConfig
from vlbridge.connectors import CONNECTORS, ConnectorContext, available, build_connector
from vlbridge.dtypes import DTYPE_CHOICES, DTYPES
from vlbridge.errors import ConfigError
from vlbridge.highres import anyres
from vlbridge.lm.decoder import DecoderLM
from vlbridge.vision.vit import ViT

CLIP_L_336 = VisionConfig(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
)
"""CLIP ViT-L/14 at 336 px, LLaVA-1.5's vision tower: 24 x 24 = 576 patches (CLS dropped)."""

LM_PRESETS: dict[str, LMConfig] = {
    "vicuna-7b": LMConfig(),
    "vicuna-13b": LMConfig(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40
    ),
    "llama3-8b": LMConfig(
        vocab_size=128256, intermediate_size=14336, num_key_value_heads=8, max_position_embeddings=8192
    ),
    "mistral-7b": LMConfig(intermediate_size=14336, num_key_value_heads=8, max_position_embeddings=32768),
    "qwen2-7b": LMConfig(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        attention_bias=True,
    ),
}
"""Language models by name (the shapes of their HF configs); vicuna-7b is LMConfig's default."""

KV_DTYPE_BYTES = {**{name: DTYPES[name].itemsize for name in DTYPE_CHOICES}, "int8": 1}
"""Bytes per KV-cache element by storage type: the float types by their short names, and int8 (quantised caches)."""

DEFAULT_MINI_GRIDS = (1, 12)
"""LLaVA-Mini's 1 token, and the 12 x 12 = 144 compressed tokens it compares against."""


@dataclass(frozen=True)
class Design:
    """One way of bringing an image into the sequence: a connector config, applied to the image as one view, or with
    AnyRes to an image filling an `anyres_grid` (rows, cols) of tiles plus the base view."""

    label: str
    connector: ConnectorConfig
    anyres_grid: tuple[int, int] | None = None
    note: str = ""


@dataclass(frozen=True)
class BudgetRow:
    """What one design costs in a context window."""

    design: str
    tokens_per_image: int
    text_left: int  # negative: one image alone overflows the context
    frames_fit: int | None  # None: the design puts no tokens in the sequence, frames are unbounded by context
    kv_bytes_per_image: int
    source: str  # "num_tokens" (the registered connector counted), or "rule" with why
    note: str = ""
    frames: dict[str, Any] = field(default_factory=dict)  # with --frames N: tokens, fits, kv_bytes of N frames


def kv_bytes(tokens: int, lm: LMConfig, dtype_bytes: int = 2, layers: int | None = None) -> int:
    """KV-cache bytes `tokens` take: tokens x layers x 2 (K, V) x kv_heads x head_dim x bytes per element, over
    `layers` layers of `lm`'s shape (default: all of `lm`'s; fewer for pre-fusion blocks)."""
    layers = lm.num_hidden_layers if layers is None else layers
    return tokens * layers * 2 * lm.num_key_value_heads * lm.resolved_head_dim * dtype_bytes


def frames_fit(context: int, tokens_per_frame: int, text_reserve: int = 0) -> int | None:
    """Frames (or images) that fit: floor((context - text_reserve) / tokens_per_frame); None when a frame takes 0."""
    if text_reserve < 0 or text_reserve >= context:
        raise ConfigError(f"text reserve must be in [0, context={context}), got {text_reserve}; lower --text-reserve")
    if tokens_per_frame == 0:
        return None
    return (context - text_reserve) // tokens_per_frame


def rule_tokens(config: ConnectorConfig, n_patches: int) -> int:
    """Visual tokens per view by the rule each connector's paper documents (SPEC section 2), from its options."""
    opts, name = config.options, config.name
    side = math.isqrt(n_patches)
    if name in ("mlp", "linear"):
        return n_patches
    if name == "qformer":
        return int(opts.get("num_queries", 32))
    if name == "perceiver":
        return int(opts.get("num_latents", 64))
    if name == "gated_xattn":
        return 1  # one media-marker token; the visual features enter through cross-attention, not the sequence
    if name == "pool":
        return math.ceil(side / int(opts.get("kernel", 2))) ** 2  # ceil mode over the square patch grid
    if name == "tome":
        return int(opts["target"]) if "target" in opts else max(1, round(n_patches * float(opts.get("ratio", 0.25))))
    if name == "patch_merger":
        return n_patches // int(opts.get("merge", 2)) ** 2
    if name == "mini":
        return int(opts.get("grid", 1)) ** 2
    raise ConfigError(f"no documented token rule for connector {name!r}; register it so its num_tokens can be counted")


def default_designs(
    mini_grids: tuple[int, ...] = DEFAULT_MINI_GRIDS, anyres_grid: tuple[int, int] = (2, 2)
) -> list[Design]:
    """The SPEC section 2 zoo with default options, AnyRes over the mlp connector, and mini at each C x C grid."""
    rows, cols = anyres_grid
    designs = [Design(name, ConnectorConfig(name=name)) for name in ("mlp", "linear", "qformer", "perceiver")]
    designs.append(Design("gated_xattn", ConnectorConfig(name="gated_xattn"), note="vision enters by cross-attention"))
    designs += [Design(name, ConnectorConfig(name=name)) for name in ("pool", "tome", "patch_merger")]
    designs += [
        Design(
            f"anyres {rows}x{cols} ({name})",
            ConnectorConfig(name=name),
            anyres_grid=(rows, cols),
            note=f"{rows * cols} tiles + base view, as the processor counts an image filling the grid",
        )
        for name in ("mlp", "pool")
    ]
    for grid in mini_grids:
        if grid < 1:
            raise ConfigError(f"a mini grid C must be >= 1 (C x C compressed tokens), got {grid}")
        designs.append(Design(f"mini C={grid}", ConnectorConfig(name="mini", options={"grid": grid})))
    hd = ConnectorConfig(name="mini", options={"grid": 8, "hd_grid": 2})
    designs.append(Design("mini HD 2x2 C=8", hd, note="2x2 crops + whole image compressed to 8x8 (LLaVA-Mini HD)"))
    return designs


def count_tokens(connector: ConnectorConfig, n_patches: int, context: ConnectorContext) -> tuple[int, str, str]:
    """(tokens per view, source, note): the registered connector's own num_tokens, else the documented rule."""
    if connector.name not in available():
        return rule_tokens(connector, n_patches), "rule", "connector not registered"
    try:
        with torch.device("meta"):
            built = build_connector(connector, context)
    except Exception as err:  # a connector that cannot be built on meta still gets a figure, marked as such
        return rule_tokens(connector, n_patches), "rule", f"could not build {connector.name}: {err}"
    tokens = built.num_tokens(n_patches)
    try:
        rule = rule_tokens(connector, n_patches)
    except ConfigError:
        return tokens, "num_tokens", ""
    return tokens, "num_tokens", "" if rule == tokens else f"documented rule gives {rule}"


def vision_patches(vision: VisionConfig, image_size: int | None = None) -> int:
    """Features per image the connector sees (the ViT's own count, built on the meta device), at `image_size` px
    (default: the vision config's)."""
    size = vision.image_size if image_size is None else image_size
    with torch.device("meta"):
        return ViT(vision).num_patches(size, size)


@dataclass(frozen=True)
class Window:
    """The context window budgeted: its length, the LM whose KV cache holds it, and the video-frame question."""

    context: int
    lm: LMConfig
    kv_dtype_bytes: int = 2
    text_reserve: int = 0  # tokens kept for text when counting frames that fit
    frames: int | None = None  # also ask whether this many frames fit

    def __post_init__(self) -> None:
        if self.context < 1:
            raise ConfigError(f"context must be a positive number of tokens, got {self.context}")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"--frames must be >= 1, got {self.frames}")
        frames_fit(self.context, 1, self.text_reserve)  # validates the reserve

    def row(self, design: str, tokens: int, source: str, note: str = "") -> BudgetRow:
        """The BudgetRow of a design that puts `tokens` visual tokens per image into this window."""
        extra: dict[str, Any] = {}
        if self.frames is not None:
            need = self.frames * tokens
            extra = {
                "n": self.frames,
                "tokens": need,
                "fits": need + self.text_reserve <= self.context,
                "kv_bytes": kv_bytes(need, self.lm, self.kv_dtype_bytes),
            }
        return BudgetRow(
            design=design,
            tokens_per_image=tokens,
            text_left=self.context - tokens,
            frames_fit=frames_fit(self.context, tokens, self.text_reserve),
            kv_bytes_per_image=kv_bytes(tokens, self.lm, self.kv_dtype_bytes),
            source=source,
            note=note,
            frames=extra,
        )


def budget(
    window: Window, vision: VisionConfig, designs: list[Design], image_size: int | None = None
) -> list[BudgetRow]:
    """One BudgetRow per design for `window` behind the vision tower `vision`, for images of `image_size` px
    (default: the vision config's)."""
    n_patches = vision_patches(vision, image_size)
    ctx = ConnectorContext(vision_hidden_size=vision.hidden_size, lm_config=window.lm, block_cls=DecoderLM.block_cls)
    rows = []
    for design in designs:
        per_view, source, why = count_tokens(design.connector, n_patches, ctx)
        note = "; ".join(text for text in (design.note, why) if text)
        tokens = per_view
        if design.anyres_grid is not None:
            tile = vision.image_size if image_size is None else image_size
            tokens = anyres_tokens(design.connector.name, per_view, design.anyres_grid, tile)
        rows.append(window.row(design.label, tokens, source, note))
    return rows


def anyres_tokens(connector: str, per_view: int, grid: tuple[int, int], tile: int) -> int:
    """Tokens of an image filling a (rows, cols) grid of `tile` px tiles: a grid connector's tokens packed as
    LLaVA-NeXT packs them (base view, then the tile grid with a row-end token per row), any other's views in turn."""
    rows, cols = grid
    size = (rows * tile, cols * tile)
    spatial = connector in available() and CONNECTORS.get(connector).spatial
    if spatial:
        return anyres.num_tokens(size, [size], tile, math.isqrt(per_view))
    return (rows * cols + 1) * per_view


def model_row(config: ModelConfig, window: Window) -> BudgetRow:
    """The row of a real model: its own connector's count at its processor's crop size, built on the meta device."""
    from vlbridge.model.vlm import VisionLanguageModel

    if config.vision is None:
        raise ConfigError("this checkpoint is a text LLM: it has no vision encoder or connector to count")
    with torch.device("meta"):
        model = VisionLanguageModel(config)
    size = config.image_processor.crop_size
    return window.row(
        f"this model ({config.connector.name})", model.tokens_per_image(size, size), "num_tokens", f"{size}px image"
    )


@dataclass(frozen=True)
class VideoTokens:
    """A video file as a model's processor reads it: frames sampled, visual tokens they take, the connector."""

    frames: int
    tokens: int
    connector: str


def video_tokens(model_dir: str | Path | None, video: str | Path, fps: float, max_frames: int | None) -> VideoTokens:
    """The frames and visual tokens of `video` sampled at `fps` up to `max_frames`, counted by the processor of the
    checkpoint in `model_dir` (None: the embedded default) on a model built on the meta device (no weights read)."""
    from vlbridge.lm.tokenizer import Tokenizer
    from vlbridge.model.io import default_model_dir, read_config
    from vlbridge.model.processor import processor_for
    from vlbridge.model.vlm import VisionLanguageModel

    path = default_model_dir() if model_dir is None else Path(model_dir)
    config, _ = read_config(path)
    if config.vision is None:
        raise ConfigError(f"{path} is a text LLM: it has no vision encoder or connector to take a video")
    with torch.device("meta"):
        model = VisionLanguageModel(config)
    processor = processor_for(model, Tokenizer.from_dir(path))
    inputs = processor(text=processor.video_token, videos=[video], fps=fps, max_frames=max_frames)
    tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
    return VideoTokens(int(inputs["video_frames"][0]), tokens, config.connector.name)
