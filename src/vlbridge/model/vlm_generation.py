"""Generation for VisionLanguageModel: its settings, `generate` and `stream`, and `VisionStep`, the Generator's view of
the model (prefill places the images and lets the connector fuse the prompt; decode steps are text, fused by the
connector too where its prefill left decode state). Kept apart from vlm.py, which holds the model's forward passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from vlbridge.connectors import LayerHook
from vlbridge.connectors.base import FusionCache
from vlbridge.errors import ConfigError
from vlbridge.lm.kv_cache import KVCache
from vlbridge.lm.templates import TEMPLATES
from vlbridge.model.generate import GenerationConfig, Generator

if TYPE_CHECKING:
    from vlbridge.model.vlm import VisionLanguageModel


class GenerationMixin:
    """`generation_config`, `generate` and `stream` of a VisionLanguageModel (mixed into it)."""

    def generation_config(self: VisionLanguageModel, **overrides: Any) -> GenerationConfig:
        """Generation settings with this model's EOS and pad ids filled in, its template's stop text (a reply that
        `plain` or `qa` taught to end with a newline ends there) and, for a VLM, its image token suppressed (a reply
        holding it could not be fed back as text; an id outside the vocabulary is never generated anyway), all from
        the model's config; `overrides` as `GenerationConfig.with_overrides` takes them (unknown or ill-typed settings
        raise ConfigError)."""
        lm = self.config.language_model
        stop = TEMPLATES.get(self.config.template).stop if self.config.template else ""
        image_token = self.config.image_token_id
        suppress = (image_token,) if self.config.vision is not None and image_token < lm.vocab_size else ()
        base = GenerationConfig().with_overrides(
            eos_token_id=lm.eos_token_id, stop_strings=stop or None, suppress_tokens=suppress
        )
        pad = lm.pad_token_id if lm.pad_token_id is not None else next(iter(base.eos_token_id), 0)
        return base.with_overrides(**{"pad_token_id": pad, **overrides})

    def _run(
        self: VisionLanguageModel,
        mode: str,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        image_sizes: torch.Tensor | None,
        generation: dict[str, Any],
        video_frames: torch.Tensor | None = None,
    ) -> Any:
        input_ids = input_ids.to(self.device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device)
        config = self.generation_config(**generation)
        if config.stop_strings and self.processor is None:
            raise ConfigError(
                f"stop strings {list(config.stop_strings)} (template {self.config.template!r} ends replies with them) "
                "need the model's tokenizer to read the generated text: build the model with "
                "VisionLanguageModel(config, tokenizer=...), or pass stop_strings=() to generate without them"
            )
        detokenize = self.processor.decode if self.processor is not None else None
        generator = Generator(VisionStep(self), detokenize=detokenize)
        run = generator.generate if mode == "generate" else generator.stream
        videos = {} if video_frames is None else {"video_frames": video_frames.to(self.device)}
        return run(
            mask, config, input_ids, input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes, **videos
        )

    def generate(
        self: VisionLanguageModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        video_frames: torch.Tensor | None = None,
        **generation: Any,
    ) -> torch.Tensor:
        """(B, T + new) ids: the prompt followed by generated tokens (greedy, or sampling with temperature/top-k/
        top-p), finished rows padded; keyword arguments are GenerationConfig fields."""
        return self._run("generate", input_ids, attention_mask, pixel_values, image_sizes, generation, video_frames)

    def stream(
        self: VisionLanguageModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        video_frames: torch.Tensor | None = None,
        **generation: Any,
    ) -> Iterator[torch.Tensor]:
        """Yields the new token of each row, (B,), step by step, as `generate` would produce them."""
        return self._run("stream", input_ids, attention_mask, pixel_values, image_sizes, generation, video_frames)


class VisionStep:
    """The Generator's StepModel view of a VLM for one generate call: prefill places the images and lets the connector
    fuse the prompt; decode steps are text, fused by the connector too when its prefill left decode state.

    The serving engine builds one from the `hooks` and `fusion` state of a prompt it embedded itself, to decode a
    request of such a connector (gated_xattn, mini) alone."""

    def __init__(
        self, model: VisionLanguageModel, hooks: dict[int, LayerHook] | None = None, fusion: FusionCache | None = None
    ) -> None:
        self.model = model
        self.hooks: dict[int, LayerHook] = hooks or {}
        self.fusion = fusion if fusion is not None else FusionCache(max_length=0)

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        self.fusion = FusionCache(max_length=max_length)
        return self.model.language_model.new_cache(batch_size, max_length)

    def prefill(
        self,
        cache: KVCache,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_sizes: torch.Tensor | None,
        video_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeds, self.hooks = self.model.embed(
            input_ids, pixel_values, attention_mask, self.fusion, image_sizes, video_frames
        )
        return self.model.language_model.prefill(cache, attention_mask, inputs_embeds=embeds, hooks=self.hooks)

    def decode_step(self, cache: KVCache, token_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lm, connector = self.model.language_model, self.model.connector
        if self.fusion.state is None or connector is None:
            return lm.decode_step(cache, token_ids, attention_mask, hooks=self.hooks)
        embeds = connector.fuse_step(lm.embed(token_ids), attention_mask, self.fusion)  # (B, 1, D)
        logits = lm(
            inputs_embeds=embeds, attention_mask=attention_mask, kv_cache=cache, hooks=self.hooks, logits_to_keep=1
        )
        return logits[:, -1]
