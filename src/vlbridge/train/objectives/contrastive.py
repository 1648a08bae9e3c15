"""The `contrastive` objective: CLIP-style pre-training of the ViT on image-caption pairs.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021): a symmetric InfoNCE
loss over the batch with a learnable temperature (CLIP's logit scale, initialised to 1/0.07 and clamped at 100).

The embeddings (vlbridge.model.contrastive): a caption is the mean of the LM's final (normed) hidden states over its
real tokens (a causal LM has no CLS token; every position contributes, not only the last one, which in a small LM
trained from scratch sees the caption least reliably); an image is the ViT's pooled output. Both go through a small
linear projection into a shared space before L2 normalising, as CLIP does: the projections (and the temperature)
belong to the objective's head, not to the VLM, so contrastive training never reshapes the LM's hidden space to fit
the ViT's width. With the LM frozen, the ViT learns to map images next to the LM's own reading of their captions. The
head is not part of the model after the stage; the trainer saves it beside the stage's model
(`contrastive_head.safetensors`), where `vlbridge data filter` finds it to score image-caption pairs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from vlbridge.errors import ConfigError
from vlbridge.model.contrastive import HEAD_FILE, ContrastiveHead
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.objectives.base import Batch, Objective, ObjectiveOutput


class ContrastiveObjective(Objective):
    """Symmetric InfoNCE between ViT pooled image embeddings and mean-pooled LM caption embeddings."""

    def __init__(self, vision_size: int, text_size: int, embed_size: int = 256, init_temperature: float = 0.07) -> None:
        super().__init__()
        self.head = ContrastiveHead(vision_size, text_size, embed_size, init_temperature)

    def parts(self) -> dict[str, nn.Module]:
        return {"contrastive_head": self.head}

    def save(self, folder: Path) -> None:
        self.head.save(folder / HEAD_FILE)

    @property
    def temperature(self) -> float:
        """The current softmax temperature, 1 / exp(logit_scale)."""
        return float(torch.exp(-self.head.logit_scale.detach()))

    def embed_images(self, model: VisionLanguageModel, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (B, E)."""
        return self.head.embed_images(model, pixel_values)

    def embed_texts(self, model: VisionLanguageModel, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm caption embeddings (B, E)."""
        return self.head.embed_texts(model, input_ids, mask)

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(ids))
        images = self.embed_images(model, batch["pixel_values"]).float()
        texts = self.embed_texts(model, ids, mask).float()
        logits = self.head.scale() * images @ texts.t()  # (B, B): image i against caption j
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        return ObjectiveOutput(loss, int(mask.sum()))


def build_contrastive(model: VisionLanguageModel, dataset: Dataset | None) -> ContrastiveObjective:
    """The contrastive objective sized for `model`'s ViT and LM widths."""
    if model.vision_encoder is None:
        raise ConfigError("the contrastive objective needs a vision encoder; build the model with vision")
    return ContrastiveObjective(model.vision_encoder.config.hidden_size, model.language_model.hidden_size)
