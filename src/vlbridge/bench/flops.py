"""Analytical FLOPs per image of a vision-language model, counted from its config on the meta device.

Each part (vision encoder, connector, LLaVA-Mini's modality pre-fusion, LM prefill) is built on
`torch.device("meta")` and run under `torch.utils.flop_counter.FlopCounterMode`: the FLOPs of every matmul,
convolution and attention come from tensor shapes alone, nothing is computed, and any registered connector is
counted by running its own `forward`. FLOPs = 2 x multiply-accumulates.

Two conventions are reported, because papers and our code count different things:

- `paper`: the convention of LLaVA-Mini's Table 14 (Zhang et al., 2025; counted with calflops). It is worked out
  from the table itself: CLIP ViT-L/336 over 577 tokens costs 24 layers x 14.52 GFLOPs of weight products + 0.69 G
  of patch embedding = 0.349 T, so every ViT layer is counted (LLaVA's HF tower runs all 24 and keeps layer -2)
  and attention score/value products are not (with them it would be 0.382 T). The LM column gives
  13.21 GFLOPs per token for Vicuna-7B at both 336 px (8.177 T) and 672 px (38.623 T): weight products plus
  `lm_head` at every position, again no attention products (those would grow with length), and both totals fit
  576 + 43 and 2880 + 43 tokens. So: weight products only (linear and conv layers), all ViT layers, logits at every
  prompt position.
- `executed`: what vlbridge runs for one prefill: weight and attention products, the ViT only up to its feature
  layer, logits at the last position only. FlopCounterMode counts the full (unmasked) attention matrix.

A connector holding blocks of the LM's own class is taken to run them as modality pre-fusion over [every projected
patch token of the image; the text tokens] (LLaVA-Mini); they are counted as an LM body of that many layers. A
connector taking high-resolution crops (LLaVA-Mini HD, `Connector.crop_grid` k > 1) sees k^2 + 1 views of the image:
the vision encoder runs on each, and pre-fusion reads every view's tokens and the compressed ones before the text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlbridge.bench.token_budget import CLIP_L_336, LM_PRESETS, kv_bytes
from vlbridge.config import ConnectorConfig, ImageProcessorConfig, LMConfig, ModelConfig, VisionConfig
from vlbridge.connectors import CONNECTORS
from vlbridge.dtypes import resolve_dtype
from vlbridge.errors import ConfigError
from vlbridge.lm.decoder import DecoderLM
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.vision.vit import ViT

PARTS = ("vision_encoder", "connector", "prefusion", "language_model")
CONVENTIONS = ("paper", "executed")
WEIGHT_OPS = frozenset({"mm", "addmm", "convolution", "_convolution"})
"""Products of activations with weights; every other counted op (bmm, attention) multiplies two activations."""

PAPER_TEXT_TOKENS = 43
"""Text tokens in LLaVA-Mini's Table 14 setting: (8.177 T and 38.623 T) / 13.21 GFLOPs per token = 576 + 43 and
2880 + 43 prompt tokens for LLaVA-v1.5 at 336 and 672 px (about the vicuna_v1 system prompt and a short question)."""

PAPER_TABLE14: dict[str, dict[str, float]] = {
    "llava-v1.5-7b": {"vision_encoder": 0.349e12, "connector": 0.024e12, "prefusion": 0.0, "language_model": 8.177e12},
    # the connector column sums the paper's projection (0.024 T) and compression (0.001 T)
    "llava-mini-7b": {
        "vision_encoder": 0.349e12,
        "connector": 0.025e12,
        "prefusion": 0.125e12,
        "language_model": 1.460e12,
    },
}
"""LLaVA-Mini paper, Table 14 (336 px), in FLOPs."""

_LLAVA_V15_7B = ModelConfig(
    language_model=replace(LM_PRESETS["vicuna-7b"], rms_norm_eps=1e-5),
    vision=CLIP_L_336,
    image_processor=ImageProcessorConfig(size=336, crop_size=336, pad_to_square=True),
    template="vicuna_v1",
)
PRESETS: dict[str, ModelConfig] = {
    "llava-v1.5-7b": replace(_LLAVA_V15_7B, connector=ConnectorConfig(name="mlp", depth=2, hidden_act="gelu")),
    "llava-mini-7b": replace(
        _LLAVA_V15_7B, connector=ConnectorConfig(name="mini", options={"grid": 1, "prefusion_layers": 4})
    ),
}
"""Built-in model configs (no weights): LLaVA-v1.5-7B (CLIP ViT-L/14-336 + mlp2x_gelu + Vicuna-7B) and LLaVA-Mini
(the same vision tower and LM, one compressed token, 4 pre-fusion layers)."""


@dataclass(frozen=True)
class PartFlops:
    """FLOPs of one part in both conventions."""

    paper: int
    executed: int

    def get(self, convention: str) -> int:
        """The figure in `convention` ("paper" or "executed")."""
        if convention not in CONVENTIONS:
            raise ConfigError(f"unknown FLOPs convention {convention!r}; use one of {', '.join(CONVENTIONS)}")
        return self.paper if convention == "paper" else self.executed


@dataclass(frozen=True)
class FlopsProfile:
    """FLOPs and token counts per image of one model for a prompt of `text_tokens` text tokens."""

    name: str
    connector: str
    visual_tokens: int
    text_tokens: int
    prefusion_layers: int
    prefusion_tokens: int
    parts: dict[str, PartFlops]
    kv_bytes_per_image: int
    prefusion_kv_bytes_per_image: int
    media_bytes_per_image: int
    kv_dtype: str
    notes: list[str] = field(default_factory=list)

    def total(self, convention: str) -> int:
        """Sum of the parts in `convention`."""
        return sum(part.get(convention) for part in self.parts.values())

    @property
    def decode_state_bytes_per_image(self) -> int:
        """All one image holds while generating: the LM's and pre-fusion KV caches and cross-attention media."""
        return self.kv_bytes_per_image + self.prefusion_kv_bytes_per_image + self.media_bytes_per_image

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready facts."""
        out = {k: v for k, v in self.__dict__.items() if k != "parts"}
        out["flops"] = {name: {"paper": p.paper, "executed": p.executed} for name, p in self.parts.items()}
        out["flops_total"] = {c: self.total(c) for c in CONVENTIONS}
        return out


def count_flops(fn: Callable[[], object]) -> tuple[int, int]:
    """(weight FLOPs, activation FLOPs) of running `fn`: products with weights (mm, addmm, convolution) apart from
    products of two activations (bmm, scaled dot-product attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    weight = activation = 0
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        if str(op).split(".")[-1] in WEIGHT_OPS:
            weight += int(flops)
        else:
            activation += int(flops)
    return weight, activation


def _compressor_flops(queries: int, keys: int, width: int) -> tuple[int, int]:
    """LLaVA-Mini's query compression as the `mini` connector builds it: `queries` learnable queries attend to
    `keys` projected tokens in one cross-attention layer of `width` (q/k/v/o projections, scores, weighted sum)."""
    weight = 2 * (2 * queries + 2 * keys) * width * width
    return weight, 2 * 2 * queries * keys * width


def _meta_model(config: ModelConfig) -> tuple[VisionLanguageModel, bool]:
    """The model on the meta device, and whether its connector is stood in for (`mini` not registered yet: the mlp
    projector is built and the compression and pre-fusion are added analytically)."""
    stand_in = config.connector.name == "mini" and "mini" not in CONNECTORS
    if stand_in:
        config = replace(config, connector=replace(config.connector, name="mlp", options={}))
    with torch.device("meta"):
        return VisionLanguageModel(config), stand_in


def _stack(count: Callable[[int], tuple[int, int]], layers: int) -> tuple[int, int]:
    """Exact (weight, activation) FLOPs of a model with `layers` identical layers from builds of 1 and 2 layers:
    f(L) = f(1) + (L - 1) * (f(2) - f(1)). Counting 2 layers instead of 32 keeps meta-device counting fast."""
    (w1, a1), (w2, a2) = count(1), count(2)
    return w1 + (layers - 1) * (w2 - w1), a1 + (layers - 1) * (a2 - a1)


def _lm_flops(config: LMConfig, tokens: int, head: bool) -> PartFlops:
    """Prefill FLOPs of a `config` LM over `tokens` input embeddings; `head` False runs the body only (pre-fusion),
    True adds logits (paper: every position, executed: the last)."""
    x = torch.empty(1, tokens, config.hidden_size, device="meta")

    def count(keep: int) -> Callable[[int], tuple[int, int]]:
        def run(layers: int) -> tuple[int, int]:
            with torch.device("meta"):
                lm = DecoderLM(replace(config, num_hidden_layers=layers))
            return count_flops(lambda: lm(inputs_embeds=x, logits_to_keep=keep, return_hidden=not head))

        return run

    paper_w, _ = _stack(count(0), config.num_hidden_layers)
    exec_w, exec_a = _stack(count(1), config.num_hidden_layers)
    return PartFlops(paper=paper_w, executed=exec_w + exec_a)


def _hook_flops(lm: DecoderLM, tokens: int, make_hooks: Callable[[], dict]) -> PartFlops:
    """FLOPs a connector adds inside the LM (gated cross-attention): making its hooks plus the LM prefill with them,
    minus the bare LM prefill. Zero without hooks."""
    if not make_hooks():
        return PartFlops(0, 0)
    x = torch.empty(1, tokens, lm.hidden_size, device="meta")

    def extra(keep: int) -> tuple[int, int]:
        with_w, with_a = count_flops(lambda: lm(inputs_embeds=x, logits_to_keep=keep, hooks=make_hooks()))
        bare_w, bare_a = count_flops(lambda: lm(inputs_embeds=x, logits_to_keep=keep))
        return with_w - bare_w, with_a - bare_a

    paper_w, _ = extra(0)
    exec_w, exec_a = extra(1)
    return PartFlops(paper=paper_w, executed=exec_w + exec_a)


def _vision_flops(vision: VisionConfig, size: int) -> PartFlops:
    """ViT FLOPs for one `size` px image: paper counts every layer, executed only up to the deepest feature layer."""
    pixels = torch.empty(1, vision.num_channels, size, size, device="meta")

    def run(layers: int) -> tuple[int, int]:
        with torch.device("meta"):
            vit = ViT(replace(vision, num_hidden_layers=layers, feature_layer=-1))
        return count_flops(lambda: vit.hidden_states(pixels))

    wanted = vision.feature_layer if isinstance(vision.feature_layer, list) else [vision.feature_layer]
    deepest = max(i % (vision.num_hidden_layers + 1) for i in wanted)
    paper_w, _ = _stack(run, vision.num_hidden_layers)
    exec_w, exec_a = _stack(run, deepest)
    return PartFlops(paper=paper_w, executed=exec_w + exec_a)


def analyze(
    config: ModelConfig, text_tokens: int = PAPER_TEXT_TOKENS, name: str = "model", kv_dtype: str = "float16"
) -> FlopsProfile:
    """FLOPs per image of `config` (one image at its processor's crop size, `text_tokens` text tokens), by part,
    and the bytes of decode state one image takes with `kv_dtype` elements (KV caches and cross-attention media)."""
    element_bytes = resolve_dtype(kv_dtype).itemsize
    if text_tokens < 1:
        raise ConfigError(f"text_tokens must be >= 1, got {text_tokens}")
    if config.vision is None:
        raise ConfigError(f"{name} is a text-only model (no vision config); profile a vision-language model")
    model, stand_in = _meta_model(config)
    vit, connector = model.vision_encoder, model.connector
    assert vit is not None and connector is not None
    notes: list[str] = []
    size = config.image_processor.crop_size
    patches = vit.num_patches(size, size)
    views = connector.crop_grid**2 + 1 if connector.crop_grid > 1 else 1  # LLaVA-Mini HD: k x k crops + whole
    features = torch.empty(1, views * patches, vit.hidden_size, device="meta")
    conn_w, conn_a = count_flops(lambda: connector(features))
    n_blocks = sum(isinstance(m, model.language_model.block_cls) for m in connector.modules())
    visual_tokens = connector.num_tokens(patches)
    if stand_in:
        options = config.connector.options
        grid, n_blocks = int(options.get("grid", 1)), int(options.get("prefusion_layers", 4))
        visual_tokens = grid * grid
        comp_w, comp_a = _compressor_flops(visual_tokens, patches, config.language_model.hidden_size)
        conn_w, conn_a = conn_w + comp_w, conn_a + comp_a
        notes.append("connector `mini` is not registered: its compression and pre-fusion are counted analytically")

    lm_tokens = visual_tokens + text_tokens
    image_mask = torch.zeros(1, lm_tokens, dtype=torch.bool)  # real: hooks may count the images in it
    image_mask[0, :visual_tokens] = True
    hooked = PartFlops(0, 0)
    try:
        hooked = _hook_flops(model.language_model, lm_tokens, lambda: connector.lm_hooks(features, image_mask))
    except (RuntimeError, NotImplementedError) as err:  # data-dependent Python control flow cannot run on meta
        notes.append(f"the connector's in-LM hooks could not be counted on the meta device ({err}); not included")
    read = views * patches + (visual_tokens if views > 1 else 0)  # HD pre-fusion also reads the compressed tokens
    prefusion_tokens = read + text_tokens if n_blocks else 0
    prefusion = PartFlops(0, 0)
    if n_blocks:
        prefusion = _lm_flops(replace(config.language_model, num_hidden_layers=n_blocks), prefusion_tokens, head=False)
    vision = _vision_flops(config.vision, size)
    parts = {
        "vision_encoder": PartFlops(paper=views * vision.paper, executed=views * vision.executed),
        "connector": PartFlops(paper=conn_w + hooked.paper, executed=conn_w + conn_a + hooked.executed),
        "prefusion": prefusion,
        "language_model": _lm_flops(config.language_model, lm_tokens, head=True),
    }
    return FlopsProfile(
        name=name,
        connector=config.connector.name,
        visual_tokens=visual_tokens,
        text_tokens=text_tokens,
        prefusion_layers=n_blocks,
        prefusion_tokens=prefusion_tokens,
        parts=parts,
        kv_bytes_per_image=kv_bytes(visual_tokens, config.language_model, element_bytes),
        prefusion_kv_bytes_per_image=kv_bytes(read, config.language_model, element_bytes, n_blocks) if n_blocks else 0,
        media_bytes_per_image=connector.held_media_elements(patches) * element_bytes,
        kv_dtype=kv_dtype,
        notes=notes,
    )


def _pct(ours: float, paper: float) -> str:
    """Relative difference, marked as agreeing within 3%."""
    if not paper:
        return "-"
    diff = (ours - paper) / paper
    return f"{100 * diff:+.1f}% ({'agrees' if abs(diff) <= 0.03 else 'differs'})"


def paper_comparison(profiles: Sequence[FlopsProfile]) -> list[str]:
    """Markdown lines: our paper-convention figures of the presets beside LLaVA-Mini's Table 14, and why they differ."""
    rows, notes = [], []
    for prof in profiles:
        paper = PAPER_TABLE14.get(prof.name)
        if paper is None:
            continue
        ours = {part: prof.parts[part].paper for part in PARTS}
        ours["prefusion + language_model"] = ours["prefusion"] + ours["language_model"]
        paper = {**paper, "prefusion + language_model": paper["prefusion"] + paper["language_model"]}
        ours["total"], paper["total"] = sum(ours[p] for p in PARTS), sum(paper[p] for p in PARTS)
        rows += [
            f"| {prof.name} | {k} | {v / 1e12:.3f} | {paper[k] / 1e12:.3f} | {_pct(v, paper[k])} |"
            for k, v in ours.items()
        ]
        if prof.prefusion_layers:
            per_layer = ours["prefusion"] / prof.prefusion_layers / 1e12
            notes += [
                f"- {prof.name}, LM vs pre-fusion: ours counts {prof.prefusion_layers} pre-fusion layers over "
                f"{prof.prefusion_tokens} tokens ({per_layer:.3f} T a layer) and the LM over "
                f"{prof.visual_tokens + prof.text_tokens} tokens; Table 14 splits them 0.125 / 1.460 T. The paper's "
                "own Table 6 supports our split: 0 pre-fusion layers cost 0.96 T in all and 4 layers 1.96 T, 0.25 T a "
                "layer, so Table 14 seems to book ~0.88 T of pre-fusion under the LLM; compare the sum row.",
                f"- {prof.name}, connector: ours {ours['connector'] / 1e12:.3f} T is the mlp projector over every "
                "patch plus query compression attending in the LM width; the paper's compression costs 2.42 GFLOPs "
                "(Table 8), which fits k/v projections in the vision width 1024 (2 x 2 x 576 x 1024^2), before the "
                "projector.",
            ]
    if not rows:
        return []
    return [
        f"## Against LLaVA-Mini Table 14 (336 px, paper convention, {profiles[0].text_tokens} text tokens; the "
        f"paper's setting is {PAPER_TEXT_TOKENS})",
        "",
        "| model | part | ours (T) | paper (T) | difference |",
        "|---|---|---:|---:|---:|",
        *rows,
        "",
        "- Vision encoder and projector: the paper counts the linear/conv layers of all 24 ViT layers over 577 tokens "
        "and no attention products (calflops), as this convention does; vlbridge runs only 23 layers (feature layer "
        "-2), see the executed table.",
        "- LM: weight products with logits at every position, 13.21 GFLOPs per Vicuna-7B token; the paper's 8.177 T "
        f"and 38.623 T (672 px) both fit {PAPER_TEXT_TOKENS} text tokens, hence the default --text-tokens.",
        *notes,
    ]
