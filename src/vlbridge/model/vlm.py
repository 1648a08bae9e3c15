"""VisionLanguageModel: vision encoder + connector + language model as one module (LLaVA's "trinity").

Liu et al., "Visual Instruction Tuning" (2023). The vision encoder and connector are a plug-in: built without them
(`vision=False`) the same class is a plain text LLM whose logits equal the full model's on text-only input.
The connector decides what the LM reads (`Connector.fuse`): usually the text embeddings with visual tokens spliced in;
LLaVA-Mini's also rewrites the text by modality pre-fusion, and fuses each generated token too (`fuse_step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from vlbridge.config import ModelConfig
from vlbridge.connectors import Connector, ConnectorContext, LayerHook, build_connector
from vlbridge.connectors.base import FusionCache
from vlbridge.connectors.splice import image_token_mask, splice
from vlbridge.errors import ConfigError, ModalityError, PromptError
from vlbridge.highres import anyres
from vlbridge.lm.decoder import DecoderLM
from vlbridge.lm.loss import causal_lm_loss, supervised_logits
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.processor import Processor, processor_for
from vlbridge.model.save import save_checkpoint
from vlbridge.model.vlm_generation import GenerationMixin
from vlbridge.vision.vit import ViT


@dataclass
class VLMOutput:
    """Forward result: logits (B, T, V) and, when labels were given, the mean next-token loss."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class VisionLanguageModel(GenerationMixin, nn.Module):
    """Vision encoder -> connector -> visual tokens spliced at `<image>` -> Llama-family LM."""

    def __init__(self, config: ModelConfig, vision: bool = True, tokenizer: Tokenizer | None = None) -> None:
        """`vision=False` builds no vision encoder or connector (a text LLM); with a `tokenizer` the model also gets
        its processor, so it decodes its own stop strings and `save_pretrained` writes a loadable checkpoint."""
        super().__init__()
        self.config = config
        self.language_model = DecoderLM(config.language_model)
        self.vision_encoder: ViT | None = None
        self.connector: Connector | None = None
        if vision and config.vision is not None:
            self.build_vision(encoder=True)
        self.processor: Processor | None = processor_for(self, tokenizer) if tokenizer is not None else None

    def build_vision(self, encoder: bool) -> None:
        """Build and initialise the connector (from the LM where it copies LM layers), and the vision encoder too
        when `encoder`: the parts a training run adds to a loaded model, the only parts it initialises."""
        assert self.config.vision is not None, "a config without vision has no vision parts to build"
        if encoder or self.vision_encoder is None:
            self.vision_encoder = ViT(self.config.vision)
        context = ConnectorContext(
            vision_hidden_size=self.vision_encoder.hidden_size,
            lm_config=self.config.language_model,
            block_cls=self.language_model.block_cls,
        )
        self.connector = build_connector(self.config.connector, context)
        if self.connector.crop_grid > 1 and self.pinpoints is not None:
            raise ConfigError(
                "image_processor.image_grid_pinpoints (AnyRes) and the connector's high-resolution crops (hd_grid) "
                "both tile the image; drop one of them"
            )
        self.connector.init_from_language_model(self.language_model)
        newline = getattr(self, "image_newline", None)  # LLaVA-NeXT's row-end token; kept when a checkpoint filled it
        if self.pinpoints is not None and self.connector.spatial and (newline is None or newline.is_meta):
            hidden = self.config.language_model.hidden_size
            self.image_newline = nn.Parameter(torch.randn(hidden) / hidden**0.5)

    @property
    def has_vision(self) -> bool:
        """Whether the vision plug-in is loaded."""
        return self.vision_encoder is not None

    @property
    def pinpoints(self) -> list[tuple[int, int]] | None:
        """AnyRes grids (height, width) when the model tiles high-resolution images (LLaVA-NeXT), else None."""
        points, tile = self.config.image_processor.image_grid_pinpoints, self.config.image_processor.crop_size
        return None if points is None else anyres.check_pinpoints(points, tile)

    def tokens_per_image(self, height: int, width: int) -> int:
        """Visual tokens one image takes in the LM sequence: for AnyRes, given the image's own size (its tiling
        depends on it); otherwise given its preprocessed size."""
        if self.vision_encoder is None or self.connector is None:
            raise ModalityError("this model has no vision plug-in loaded; load it with vision=True")
        pinpoints, tile = self.pinpoints, self.config.image_processor.crop_size
        if pinpoints is None:
            return self.connector.num_tokens(self.vision_encoder.num_patches(height, width))
        per_view = self.connector.num_tokens(self.vision_encoder.num_patches(tile, tile))
        if self.connector.spatial:
            return anyres.num_tokens((height, width), pinpoints, tile, math.isqrt(per_view))
        return anyres.num_tiles((height, width), pinpoints, tile) * per_view

    def tokens_per_video(self, n_frames: int, height: int, width: int) -> int:
        """Visual tokens a video of `n_frames` preprocessed frames of height x width takes in the LM sequence."""
        if self.vision_encoder is None or self.connector is None:
            raise ModalityError("this model has no vision plug-in loaded; load it with vision=True")
        return self.connector.video_tokens(n_frames, self.vision_encoder.num_patches(height, width))

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        fusion: FusionCache | None = None,
        image_sizes: torch.Tensor | None = None,
        video_frames: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[int, LayerHook]]:
        """The LM input embeddings (visual tokens in place, text as the connector fuses it) and any LM hooks the
        connector needs; `fusion` collects the connector's decode state when generating. AnyRes inputs are
        pixel_values (B, views, 3, H, W) with image_sizes (B, 2); video inputs are every video's frames
        pixel_values (N_frames, 3, H, W) with video_frames (N_videos,), the frames of each video in order."""
        self._check_ids(input_ids)
        if self.config.vision is None:  # a text LLM: no id is an image token, whatever image_token_id says
            if pixel_values is not None:
                raise ModalityError("this is a text-only model (its checkpoint has no vision encoder)")
            return self.language_model.embed(input_ids), {}
        mask = image_token_mask(input_ids, self.config.image_token_id)
        has_image_tokens = bool(mask.any())
        if not self.has_vision and (pixel_values is not None or has_image_tokens):
            raise ModalityError(
                "this model was loaded text-only (vision=False) and cannot take images: "
                "load it with vision=True, or drop the images and <image> placeholders from the prompt"
            )
        embeds = self.language_model.embed(input_ids.masked_fill(mask, 0))  # (B, T, D)
        if pixel_values is None:
            if has_image_tokens:
                raise ModalityError("the prompt has image tokens but no pixel_values were given; pass the images")
            return embeds, {}
        assert self.vision_encoder is not None and self.connector is not None
        if video_frames is not None:
            return self._embed_videos(embeds, mask, pixel_values, video_frames, attention_mask, fusion), {}
        pinpoints = self.pinpoints
        if pinpoints is not None:
            if image_sizes is None or pixel_values.dim() != 5:
                raise ModalityError(
                    "this AnyRes model takes pixel_values (images, views, 3, H, W) with image_sizes (images, 2); "
                    "build the inputs with its processor"
                )
            pixel_values, views = anyres.real_views(
                pixel_values, image_sizes, pinpoints, self.config.image_processor.crop_size
            )
        crops = self.connector.crop_grid
        if crops > 1:  # LLaVA-Mini HD: each image's views go to the connector as one run of features
            if pixel_values.dim() != 5 or pixel_values.shape[1] != crops * crops + 1:
                raise ModalityError(
                    f"this model takes pixel_values (images, {crops * crops + 1}, 3, H, W): {crops} x {crops} crops "
                    f"and the whole image; got {tuple(pixel_values.shape)}; build the inputs with its processor"
                )
            n_images = pixel_values.shape[0]
            features = self.vision_encoder(pixel_values.flatten(0, 1).to(embeds.dtype))  # (N * views, P, Dv)
            features = features.reshape(n_images, -1, features.shape[-1])  # (N, views * P, Dv)
        else:
            features = self.vision_encoder(pixel_values.to(embeds.dtype))  # (N, P, Dv)
        if pinpoints is not None and self.connector.spatial:
            tokens = self.connector(features).split(views)  # per image (views, K, D)
            tile = self.config.image_processor.crop_size
            sizes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
            packed = [
                anyres.pack(t, size, pinpoints, tile, self.image_newline) for t, size in zip(tokens, sizes, strict=True)
            ]
            return splice(embeds, mask, torch.cat(packed)[None]), {}  # (B, T, D)
        embeds = self.connector.fuse(embeds, mask, features, attention_mask, fusion)  # (B, T, D)
        return embeds, self.connector.lm_hooks(features, mask)

    def _embed_videos(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        frames: torch.Tensor,
        video_frames: torch.Tensor,
        attention_mask: torch.Tensor | None,
        fusion: FusionCache | None,
    ) -> torch.Tensor:
        """Encode the frames (N_frames, 3, H, W) `video_chunk_frames` at a time (the ViT's activations stay bounded
        for long videos) and let the connector place each video's tokens and fuse the text."""
        assert self.vision_encoder is not None and self.connector is not None
        counts = [int(n) for n in video_frames.tolist()]
        if frames.dim() != 4 or sum(counts) != frames.shape[0] or min(counts, default=1) < 1:
            raise ModalityError(
                f"video inputs are pixel_values (frames, 3, H, W) with video_frames giving each video's frame count; "
                f"got pixel_values {tuple(frames.shape)} and video_frames {counts}: build the inputs with the processor"
            )
        chunk = self.config.video_chunk_frames
        features = torch.cat([self.vision_encoder(part.to(embeds.dtype)) for part in frames.split(chunk)])  # (N, P, Dv)
        return self.connector.fuse_video(embeds, mask, list(features.split(counts)), chunk, attention_mask, fusion)

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        """PromptError for text ids the embedding table has no row for (the processor never makes them; hand-built ids
        can), instead of an IndexError from deep inside the embedding. Image placeholders may lie outside it (llava
        checkpoints put `<image>` at the vocabulary's end): they are replaced by visual tokens, never embedded."""
        vocab = self.config.language_model.vocab_size
        ids = input_ids if self.config.vision is None else input_ids[input_ids != self.config.image_token_id]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            bad = sorted({int(i) for i in ids.flatten() if not 0 <= int(i) < vocab})
            raise PromptError(
                f"input_ids hold id(s) {bad[:8]} outside the vocabulary of {vocab}; use ids in [0, {vocab})"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        video_frames: torch.Tensor | None = None,
    ) -> VLMOutput:
        """Logits for every position; with `labels` (-100 ignored) also the next-token loss."""
        logits = self._decode(input_ids, attention_mask, pixel_values, position_ids, False, image_sizes, video_frames)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return VLMOutput(logits=logits, loss=loss)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, **inputs: torch.Tensor | None) -> torch.Tensor:
        """`forward(..., labels=labels).loss`, with logits computed at the supervised positions only (training);
        `inputs`: attention_mask, pixel_values, image_sizes, video_frames, as `supervised_logits` takes them."""
        logits, targets = self.supervised_logits(input_ids, labels, **inputs)
        return F.cross_entropy(logits.float(), targets)

    def supervised_logits(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        video_frames: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, V), targets (N,)) at the N supervised positions (labels != -100, shifted by one), the LM head
        run on those positions only: what `loss` takes the cross-entropy of (distillation compares them too)."""
        hidden = self._decode(input_ids, attention_mask, pixel_values, None, True, image_sizes, video_frames)
        return supervised_logits(hidden, labels, self.language_model.head)

    def _decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        return_hidden: bool = False,
        image_sizes: torch.Tensor | None = None,
        video_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The LM over the spliced prompt: logits (B, T, V), or final hidden states (B, T, D) if `return_hidden`."""
        embeds, hooks = self.embed(
            input_ids, pixel_values, attention_mask, image_sizes=image_sizes, video_frames=video_frames
        )
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            hooks=hooks,
            return_hidden=return_hidden,
        )

    @property
    def device(self) -> torch.device:
        """Where the weights are; generate/stream move their inputs here."""
        return self.language_model.model.embed_tokens.weight.device

    def save_pretrained(self, path: str | Path) -> None:
        """Write config, weights (safetensors) and, if attached, the processor's files; atomically per file."""
        save_checkpoint(path, self.state_dict(), self.config, self.processor)
