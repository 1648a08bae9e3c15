"""The `contrastive` objective: CLIP-style pre-training of the ViT on image-caption pairs.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021): a symmetric InfoNCE
loss over the batch with a learnable temperature (CLIP's logit scale, initialised to 1/0.07 and clamped at 100).

Text embeddings: a causal LM has no CLS token, so a caption is embedded as the mean of the LM's final (normed) hidden
states over its real tokens; every position then contributes, not only the last one, which in a small LM trained
from scratch sees the caption least reliably. Image embeddings are the ViT's pooled output (CLIP: the post-LN CLS
token). Both go through a small linear projection into a shared space before L2 normalising, as CLIP does: the
projections (and the temperature) belong to the objective, not to the VLM, so contrastive training never reshapes
the LM's hidden space to fit the ViT's width; they are discarded with the stage. With the LM frozen, the ViT learns
to map images next to the LM's own reading of their captions.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from vlbridge.errors import ConfigError
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.objectives.base import Batch, Objective, ObjectiveOutput


class ContrastiveHead(nn.Module):
    """The contrastive objective's own parameters: both projections and the learnable temperature."""

    def __init__(self, vision_size: int, text_size: int, embed_size: int, init_temperature: float) -> None:
        super().__init__()
        self.image_proj = nn.Linear(vision_size, embed_size, bias=False)
        self.text_proj = nn.Linear(text_size, embed_size, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / init_temperature)]))  # 1-D: FSDP shards it


class ContrastiveObjective(Objective):
    """Symmetric InfoNCE between ViT pooled image embeddings and mean-pooled LM caption embeddings."""

    max_logit_scale = math.log(100.0)

    def __init__(self, vision_size: int, text_size: int, embed_size: int = 256, init_temperature: float = 0.07) -> None:
        super().__init__()
        self.head = ContrastiveHead(vision_size, text_size, embed_size, init_temperature)

    def parts(self) -> dict[str, nn.Module]:
        return {"contrastive_head": self.head}

    @property
    def temperature(self) -> float:
        """The current softmax temperature, 1 / exp(logit_scale)."""
        return float(torch.exp(-self.head.logit_scale.detach()))

    def embed_images(self, model: VisionLanguageModel, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (B, E)."""
        if model.vision_encoder is None:
            raise ConfigError("the contrastive objective needs a vision encoder; build the model with vision")
        return F.normalize(self.head.image_proj(model.vision_encoder.pooled(pixel_values)), dim=-1)

    def embed_texts(self, model: VisionLanguageModel, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm caption embeddings (B, E): the masked mean of the LM's final hidden states, projected."""
        hidden = model.language_model(input_ids=input_ids, attention_mask=mask, return_hidden=True)  # (B, T, D)
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, D)
        return F.normalize(self.head.text_proj(pooled), dim=-1)

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(ids))
        images = self.embed_images(model, batch["pixel_values"]).float()
        texts = self.embed_texts(model, ids, mask).float()
        scale = self.head.logit_scale.clamp(max=self.max_logit_scale).exp()
        logits = scale * images @ texts.t()  # (B, B): image i against caption j
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        return ObjectiveOutput(loss, int(mask.sum()))


def build_contrastive(model: VisionLanguageModel, dataset: Dataset | None) -> ContrastiveObjective:
    """The contrastive objective sized for `model`'s ViT and LM widths."""
    if model.vision_encoder is None:
        raise ConfigError("the contrastive objective needs a vision encoder; build the model with vision")
    return ContrastiveObjective(model.vision_encoder.config.hidden_size, model.language_model.hidden_size)
