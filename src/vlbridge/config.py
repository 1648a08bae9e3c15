"""Nested, typed configs: dataclasses read from YAML/dicts, with `--set a.b=c` overrides.

Configs are never mutated; derived values come from `dataclasses.replace`. An unknown key or a value of the
wrong type raises ConfigError naming the dotted key, so a typo never silently falls back to a default. `from_dict` is
the one typed reader: the connectors read their own options dataclasses with it too (vlbridge.connectors.base). It
also refuses a float that is not finite (NaN or infinity: a learning rate of NaN would train a NaN model) and a
number outside the range its field declares in its metadata (`field(default=16, metadata=bounded(1))`), so every
range is stated beside its field and checked in one place.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from vlbridge.errors import ConfigError
from vlbridge.files import NotUtf8, decode_utf8

C = TypeVar("C")


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-3` as a float as YAML 1.2 does (PyYAML's YAML 1.1 rules want `1.0e-3`)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(text: str, source: str = "YAML text", fix: str = "fix the YAML there") -> Any:
    """Parse YAML text with `YamlLoader`; a syntax error raises ConfigError naming `source` (the file or `--set` item
    the text came from), the line and column, the parser's complaint and `fix`, on one line."""
    try:
        return yaml.load(text, Loader=YamlLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        context = getattr(err, "context", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{source}{_yaml_location(err, text)}: {f'{context}: ' if context else ''}{problem}; {fix}"
        ) from None


def _yaml_location(err: yaml.YAMLError, text: str) -> str:
    """`, line L, column C` (1-based) of where the parser stopped, if it says."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:
        return f", line {mark.line + 1}, column {mark.column + 1}"
    position = getattr(err, "position", None)  # a ReaderError: a character YAML does not allow, by text index
    if position is None:
        return ""
    line, column = text.count("\n", 0, position) + 1, position - text.rfind("\n", 0, position)
    return f", line {line}, column {column}"


def read_config_text(path: Path) -> str:
    """The text of config file `path`, which must be UTF-8 (a leading byte order mark is dropped).

    Decoding is explicit, never the locale's: a Latin-1 or UTF-16 file raises ConfigError naming the file, where its
    first foreign byte is, and that it must be saved as UTF-8 (YAML 1.2 allows UTF-16 too; vlbridge keeps to UTF-8).
    """
    raw = path.read_bytes()
    try:
        return decode_utf8(raw)
    except NotUtf8 as err:
        line = raw.count(b"\n", 0, err.offset) + 1
        raise ConfigError(f"config file {path} {err.problem} (line {line}); save it as UTF-8") from None


RANGE = "range"
"""The field-metadata key of a numeric field's `Range`."""


@dataclass(frozen=True)
class Range:
    """The numbers a config field takes: `low` and `high` (None: unbounded), each included unless marked open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'<' if self.high_open else '<='} {self.high}"


def bounded(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False, **more: Any
) -> dict[str, Any]:
    """Field metadata declaring a numeric field's range (with any `more` metadata, e.g. a flag's `help`); for a list
    or mapping field, the range of each of its numbers. `from_dict` checks it."""
    return {**more, RANGE: Range(low, high, low_open, high_open)}


def _check_numbers(value: Any, bounds: Range | None, where: str) -> None:
    """ConfigError naming `where` for a float of `value` (nested lists and mappings too) that is not finite, or a
    number outside `bounds`."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, bounds, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_numbers(item, bounds, f"{where}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} is {value}; set it to a finite number")
    elif bounds is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value not in bounds:
        raise ConfigError(f"{where} is {value!r}; set it to a number {bounds}")


@dataclass(frozen=True)
class VisionConfig:
    """A ViT vision encoder (CLIP or SigLIP layout) and which of its features the connector sees."""

    family: str = "clip"  # "clip" (CLS token, pre-LN) or "siglip" (no CLS)
    hidden_size: int = field(default=768, metadata=bounded(1))
    intermediate_size: int = field(default=3072, metadata=bounded(1))
    num_hidden_layers: int = field(default=12, metadata=bounded(1))
    num_attention_heads: int = field(default=12, metadata=bounded(1))
    num_channels: int = field(default=3, metadata=bounded(1))
    image_size: int = field(default=224, metadata=bounded(1))
    patch_size: int = field(default=16, metadata=bounded(1))
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = field(default=1e-5, metadata=bounded(0, low_open=True))
    position: str = "learned"  # "learned" absolute, or "rope2d" for ViTs trained from scratch
    rope_theta: float = field(default=10000.0, metadata=bounded(0, low_open=True))
    use_head: bool = False  # SigLIP's attention-pooling head (kept for weight parity, unused by LLaVA)
    feature_layer: int | list[int] = -2  # index into hidden states (0 = embeddings), LLaVA-1.5 uses -2
    # "default" drops the CLS token, "full" keeps every token, "drop_first" drops the first token even without a CLS
    # (what llava's "default" does to a SigLIP tower: it loses a patch, and checkpoints trained that way expect it)
    select_strategy: str = "default"


@dataclass(frozen=True)
class LMConfig:
    """A Llama-family decoder (Llama, Vicuna, Mistral, Qwen2, SmolLM)."""

    vocab_size: int = field(default=32000, metadata=bounded(1))
    hidden_size: int = field(default=4096, metadata=bounded(1))
    intermediate_size: int = field(default=11008, metadata=bounded(1))
    num_hidden_layers: int = field(default=32, metadata=bounded(1))
    num_attention_heads: int = field(default=32, metadata=bounded(1))
    num_key_value_heads: int = field(default=32, metadata=bounded(1))
    head_dim: int | None = field(default=None, metadata=bounded(1))  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = field(default=4096, metadata=bounded(1))
    rms_norm_eps: float = field(default=1e-6, metadata=bounded(0, low_open=True))
    rope_theta: float = field(default=10000.0, metadata=bounded(0, low_open=True))
    attention_bias: bool = False  # Qwen2 sets q/k/v biases
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02  # std of the normal init of linear and embedding weights (HF's name and default)
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None

    @property
    def resolved_head_dim(self) -> int:
        """Per-head width, explicit or derived."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ConnectorConfig:
    """Which connector bridges vision to language, and its settings.

    Connector-specific settings stay a plain mapping in `options`, as written in YAML and saved in config.json; the
    connector named by `name` declares their types and defaults as a dataclass and reads them into it when it is
    built (`vlbridge.connectors.base.parse_options`), so this file needs to know no connector.
    """

    name: str = "mlp"
    depth: int = 2  # mlp: number of Linear layers (LLaVA-1.5 mlp2x_gelu = 2)
    hidden_act: str = "gelu"
    bias: bool = True
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageProcessorConfig:
    """Image preprocessing equal to CLIPImageProcessor / SiglipImageProcessor, plus LLaVA's pad-to-square.

    The two limits bound the memory an untrusted image can take; they are checked from the file's header, before any
    pixel is decoded. `max_image_pixels` caps the largest image the processor holds (the decoded image, or with
    pad_to_square the padded square): 8192 x 8192 passes phone and full-frame camera photos (50 MP, 61 MP; 100 MP
    medium format is refused) and stays under PIL's decompression-bomb warning (89.5 M pixels); at that size
    processing peaks at about 0.5 GiB for an RGB JPEG and 1.3 GiB for a transparent PNG (4 bytes a pixel decoded,
    plus the RGB conversion's copies), so a server taking many images at once may want it lower. `max_aspect_ratio`
    caps long side / short side: the shortest-edge resize makes a size x (size * ratio) image before the centre
    crop, so the ratio bounds that image (a 1x100000 strip would be 224 x 22.4 M pixels, over 20 GB); at 50:1 it is
    at most 7 bytes x 50 x size^2 (18 MB at size 224, 40 MB at 336), and only strips of which a centre crop would
    keep under 2% are refused.
    """

    resize_mode: str = "shortest_edge"  # "shortest_edge" (CLIP) or "exact" (SigLIP: resize to crop size)
    size: int = 224  # shortest edge in "shortest_edge" mode
    crop_size: int = 224  # square output side
    do_center_crop: bool = True
    resample: int = 3  # PIL code: 3 bicubic (CLIP), 2 bilinear (SigLIP)
    rescale_factor: float = 1 / 255
    image_mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    image_std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    pad_to_square: bool = False  # LLaVA "pad": expand to a square filled with the mean colour first
    max_image_pixels: int = 8192 * 8192  # largest image held (padded square with pad_to_square); see above
    max_aspect_ratio: float = 50.0  # long side / short side; bounds the shortest-edge resize; see above
    image_grid_pinpoints: list[list[int]] | None = None  # AnyRes (LLaVA-NeXT) grids [height, width]; None: one view


@dataclass(frozen=True)
class ModelConfig:
    """A whole vision-language model; a checkpoint's saved config records every choice."""

    language_model: LMConfig = field(default_factory=LMConfig)
    vision: VisionConfig | None = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    image_processor: ImageProcessorConfig = field(default_factory=ImageProcessorConfig)
    image_token: str = "<image>"
    image_token_id: int = 32000
    template: str | None = None  # built-in template name; None: the tokenizer's own chat template
    text_only_images: str = "refuse"  # text-only mode: "refuse" prompts with <image>, or "strip" the placeholder
    quantization: Literal["int8"] | None = None  # "int8": the LM's linear weights are stored and run as int8
    video_chunk_frames: int = 16  # video frames the vision encoder and connector take at once (bounds their memory)


def _check(tp: Any, value: Any, where: str) -> Any:
    """Validate (and for dataclasses, build) `value` against the annotation `tp`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check(option, value, where)
            except ConfigError as err:
                if isinstance(value, dict) and dataclasses.is_dataclass(option):
                    raise  # a section: its own error names the bad key
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} does not fit {tp} ({'; '.join(errors)})")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is Any:
        return value
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if not any(type(value) is type(choice) and value == choice for choice in choices):
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got a boolean {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def unknown_keys(cls: type, data: dict[str, Any]) -> list[str]:
    """The keys of `data` that are no field of dataclass `cls`, sorted."""
    return sorted(set(data) - {f.name for f in dataclasses.fields(cls)})


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass `cls` from a nested dict; unknown keys, wrong types, floats that are not finite and numbers
    outside their field's declared range raise ConfigError naming the dotted key."""
    unknown = unknown_keys(cls, data)
    if unknown:
        prefix = f"{where}." if where else ""
        names = sorted(f.name for f in dataclasses.fields(cls))
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; valid keys: {', '.join(names)}"
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        kwargs[key] = _check(hints[key], value, name)
        _check_numbers(kwargs[key], fields[key].metadata.get(RANGE), name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (YAML/JSON-ready) of a config dataclass."""
    return dataclasses.asdict(cfg)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on top: mappings merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; a missing or non-mapping file raises ConfigError.

    A top-level `base: OTHER.yaml` (relative to this file) reads that file first and lays this one over it, so a
    variant (e.g. configs/connectors/pool.yaml) states only what differs from the recipe it builds on.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = read_yaml(read_config_text(path), f"config file {path}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / str(base)).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"config file {path}: `base: {base}` makes a cycle; a base may not lead back to this file")
    return merge(load_yaml(base_path, (*_seen, path.resolve())), data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `a.b=c` set (the value parsed as YAML); a number indexes a list
    (`stages.1.steps=5`)."""
    out = read_yaml(yaml.safe_dump(data)) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        node: Any = out
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    where = ".".join(parts[:depth]) or "the top level"
                    raise ConfigError(f"override {item!r}: {where} is a list of {len(node)}; index it with 0..")
                if last:
                    node[int(part)] = _override_value(item, raw)
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = _override_value(item, raw)
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:depth])!r} is not a section")
    return out


def _override_value(item: str, raw: str) -> Any:
    """The value of override `item` (`key=raw`), read as YAML."""
    return read_yaml(raw, f"override {item!r}", "write a complete YAML value, or quote the value to set a string")
