"""The `regions` objective: supervised pre-training of the ViT on region labels (`vlbridge.data.regions`).

As the original ViT was pre-trained on labels before any language: the patch features the connector reads are
averaged per region and a linear head per attribute classifies each region (summed cross-entropies; unlabelled
regions are skipped). The heads belong to the objective and go with the stage. It is the direct signal the LM's
losses pass back weakly: a from-scratch ViT trained only through them tells shapes apart poorly
(experiments/shape_perception.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from vlbridge.data.regions import UNLABELLED, RegionDataset, RegionVocab
from vlbridge.errors import ConfigError
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.objectives.base import Batch, Objective, ObjectiveOutput


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


def build_regions(model: VisionLanguageModel, dataset: Dataset | None) -> RegionObjective:
    """The regions objective with one head per attribute of the stage's region labels (`dataset`'s vocabulary)."""
    if model.vision_encoder is None:
        raise ConfigError("the regions objective trains a vision encoder; build the model with vision")
    if not isinstance(dataset, RegionDataset):
        raise ConfigError("the regions objective learns from region labels; give the stage `data_format: regions`")
    return RegionObjective(model.vision_encoder.hidden_size, dataset.vocab)
