"""What a training objective is: a module that turns one batch into a loss, and the step a distributed wrapper wraps.

Every objective is an nn.Module called as `objective(model, batch) -> ObjectiveOutput`; it may own trainable parts
of its own (heads, projections), which train with the stage and are discarded after it. `TrainStep` bundles model
and objective into the one module a distributed wrapper (DDP/FSDP) can wrap, so gradient sync covers both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import Dataset

from vlbridge.model.vlm import VisionLanguageModel

if TYPE_CHECKING:  # the recipe validates stages against the objectives, which import this module
    from vlbridge.train.recipe import StageRecipe

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

    def save(self, folder: Path) -> None:
        """Write what outlives the stage into the stage's folder (nothing by default; the contrastive head, which
        scores image-caption pairs for `vlbridge data filter`)."""

    def forward(self, model: VisionLanguageModel, batch: Batch) -> ObjectiveOutput:
        raise NotImplementedError


ObjectiveFactory = Callable[[VisionLanguageModel, Dataset | None, "StageRecipe | None"], Objective]
"""Builds an objective sized for the model and, where its heads depend on the labels, for the stage's dataset; the
stage (None outside a run: its defaults) carries the options of objectives that take some (`distill:`)."""


class TrainStep(nn.Module):
    """Model + objective as one module: `forward(batch)` is one micro-batch's loss (what DDP/FSDP would wrap)."""

    def __init__(self, model: VisionLanguageModel, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return self.objective(self.model, batch)
