"""Training objectives: what a batch is turned into a loss with, one small module per stage objective.

- `causal_lm`: the VLM's next-token loss on supervised (assistant) tokens, images spliced in (LLaVA stages 1 and 2).
- `text_lm`: causal-LM pre-training of the text model alone on plain text (stage 0 for a from-scratch LM).
- `contrastive`: CLIP-style contrastive pre-training of the ViT on image-caption pairs (Radford et al., "Learning
  Transferable Visual Models From Natural Language Supervision", 2021): a symmetric InfoNCE loss over the batch with
  a learnable temperature (CLIP's logit scale, initialised to 1/0.07 and clamped at 100).
- `regions`: supervised pre-training of the ViT on region labels (`vlbridge.data.regions`), as the original ViT was
  pre-trained on labels before any language: the patch features the connector reads are averaged per region and a
  linear head per attribute classifies each region (summed cross-entropies; unlabelled regions are skipped). The
  heads belong to the objective and go with the stage. It is the direct signal the LM's losses pass back weakly: a
  from-scratch ViT trained only through them tells shapes apart poorly (benchmarks/shape_perception.py).

Text embeddings for `contrastive`: a causal LM has no CLS token, so a caption is embedded as the mean of the LM's
final (normed) hidden states over its real tokens; every position then contributes, not only the last one, which
in a small LM trained from scratch sees the caption least reliably. Image embeddings are the ViT's pooled output
(CLIP: the post-LN CLS token). Both go through a small linear projection into a shared space before L2 normalising,
as CLIP does: the projections (and the temperature) belong to the objective, not to the VLM, so contrastive
training never reshapes the LM's hidden space to fit the ViT's width; they are discarded with the stage. With the
LM frozen, the ViT learns to map images next to the LM's own reading of their captions.

Every objective is an nn.Module called as `objective(model, batch) -> ObjectiveOutput`; `TrainStep` bundles model
and objective into the one module a distributed wrapper (DDP/FSDP) can wrap, so gradient sync covers both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from vlbridge.data.regions import UNLABELLED, RegionDataset, RegionVocab
from vlbridge.errors import ConfigError
from vlbridge.lm.loss import IGNORE_INDEX, causal_lm_loss
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.registry import Registry

Batch = dict[str, torch.Tensor]


@dataclass
class ObjectiveOutput:
    """The micro-batch's mean loss and how many tokens it trained on (for tokens/s)."""

    loss: torch.Tensor
    tokens: int


class Objective(nn.Module):
    """Computes the loss of one batch on the model; may own trainable parts of its own (`parts`)."""

    def parts(self) -> dict[str, nn.Module]:
        """Trainable modules the objective adds, by part name (none by default)."""
        return {}

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        raise NotImplementedError


class CausalLMObjective(Objective):
    """Next-token loss of the VLM on the batch's labels (-100: not supervised)."""

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        loss = model.loss(
            input_ids=batch["input_ids"],
            labels=batch["labels"],
            attention_mask=batch.get("attention_mask"),
            pixel_values=batch.get("pixel_values"),
        )
        return ObjectiveOutput(loss, int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0)


class TextLMObjective(Objective):
    """Next-token loss of the language model alone on text; labels default to the ids with padding ignored."""

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        labels = batch.get("labels")
        if labels is None:
            labels = ids if mask is None else ids.masked_fill(mask == 0, IGNORE_INDEX)
        hidden = model.language_model(input_ids=ids, attention_mask=mask, return_hidden=True)  # (B, T, D)
        loss = causal_lm_loss(hidden, labels, model.language_model.head)
        return ObjectiveOutput(loss, int(ids.numel() if mask is None else mask.sum()))


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


def region_pool(features: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, S*S, D) patch features -> (B, grid*grid, D): each region's patches averaged, row-major.

    The patch grid's side S must be a multiple of `grid`, so that every region covers whole patches."""
    n, patches, width = features.shape
    side = math.isqrt(patches)
    if side * side != patches or side % grid:
        raise ConfigError(
            f"{patches} patch features do not tile a {grid}x{grid} region grid; the region labels need a square "
            f"patch grid whose side is a multiple of {grid} (choose image_size / patch_size accordingly)"
        )
    maps = features.transpose(1, 2).reshape(n, width, side, side)
    return F.avg_pool2d(maps, side // grid).flatten(2).transpose(1, 2)


class RegionObjective(Objective):
    """Per-region classification of the ViT's features, one linear head per labelled attribute."""

    def __init__(self, vision_size: int, vocab: RegionVocab) -> None:
        super().__init__()
        self.vocab = vocab
        self.heads = nn.ModuleDict({name: nn.Linear(vision_size, len(c)) for name, c in vocab.classes.items()})

    def parts(self) -> dict[str, nn.Module]:
        return {"region_heads": self.heads}

    def logits(self, model: VisionLanguageModel, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per attribute, (B, grid*grid, classes) region logits."""
        assert model.vision_encoder is not None, "the regions factory refuses a model without vision"
        regions = region_pool(model.vision_encoder(pixel_values), self.vocab.grid)
        return {name: head(regions) for name, head in self.heads.items()}

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        labels = batch["region_labels"]  # (B, attributes, grid*grid)
        logits = self.logits(model, batch["pixel_values"])
        loss = sum(
            F.cross_entropy(out.float().flatten(0, 1), labels[:, i].flatten(), ignore_index=UNLABELLED)
            for i, out in enumerate(logits.values())
        )
        return ObjectiveOutput(loss, int((labels != UNLABELLED).sum()))


def _contrastive(model: VisionLanguageModel, dataset: Dataset | None) -> Objective:
    if model.vision_encoder is None:
        raise ConfigError("the contrastive objective needs a vision encoder; build the model with vision")
    return ContrastiveObjective(model.vision_encoder.config.hidden_size, model.language_model.hidden_size)


def _regions(model: VisionLanguageModel, dataset: Dataset | None) -> Objective:
    if model.vision_encoder is None:
        raise ConfigError("the regions objective trains a vision encoder; build the model with vision")
    if not isinstance(dataset, RegionDataset):
        raise ConfigError("the regions objective learns from region labels; give the stage `data_format: regions`")
    return RegionObjective(model.vision_encoder.hidden_size, dataset.vocab)


ObjectiveFactory = Callable[[VisionLanguageModel, Dataset | None], Objective]
OBJECTIVES: Registry[ObjectiveFactory] = Registry("objective")
OBJECTIVES.register("causal_lm")(lambda model, dataset: CausalLMObjective())
OBJECTIVES.register("text_lm")(lambda model, dataset: TextLMObjective())
OBJECTIVES.register("contrastive")(_contrastive)
OBJECTIVES.register("regions")(_regions)


def build_objective(name: str, model: VisionLanguageModel, dataset: Dataset | None = None) -> Objective:
    """The objective registered as `name` (causal_lm | text_lm | contrastive | regions | qformer), sized for
    `model` and, where its heads depend on the labels, for the stage's `dataset`."""
    return OBJECTIVES.get(name)(model, dataset)


class TrainStep(nn.Module):
    """Model + objective as one module: `forward(batch)` is one micro-batch's loss (what DDP/FSDP would wrap)."""

    def __init__(self, model: VisionLanguageModel, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return self.objective(self.model, batch)
