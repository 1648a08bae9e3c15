"""Training objectives: what a stage turns a batch into a loss with, registered once with the data they read.

- `causal_lm`: the VLM's next-token loss on supervised (assistant) tokens, images spliced in; reads conversations.
- `text_lm`: causal-LM pre-training of the language model alone; reads plain text (or a LLaVA file's conversations).
- `contrastive`: CLIP-style contrastive pre-training of the ViT; reads image-caption pairs.
- `regions`: supervised pre-training of the ViT on per-region attribute labels; reads region labels.
- `qformer`: BLIP-2 stage 1 (ITC + ITM + ITG) for the Q-Former connector; reads image-caption pairs.
- `distill`: knowledge distillation from a frozen teacher checkpoint (KL at temperature T mixed with the next-token
  loss on the supervised tokens); reads conversations, with the stage's `distill:` options.

`OBJECTIVES` is the one place an objective is named. Each entry carries the factory that sizes the objective for the
model (and the stage's data and options), the `DataKind` its stages read (train/stage_data.py) and the names of the
parts it trains: recipe validation lists the registered names, checks a stage's `data_format` against the kind and
its plan against the parts, the pipeline builds the stage's dataset through the kind, and the trainer builds the
objective through the factory. Adding an objective is one module and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.registry import Registry
from vlbridge.train.objectives.base import Batch, Objective, ObjectiveFactory, ObjectiveOutput, TrainStep
from vlbridge.train.objectives.contrastive import ContrastiveObjective, build_contrastive
from vlbridge.train.objectives.distill import DistillObjective, DistillOptions, build_distill, distill_loss
from vlbridge.train.objectives.language import CausalLMObjective, TextLMObjective
from vlbridge.train.objectives.qformer import QFormerObjective, build_qformer_objective
from vlbridge.train.objectives.regions import RegionObjective, build_regions, region_pool
from vlbridge.train.stage_data import CONVERSATIONS, PAIRS, REGIONS, TEXT, DataKind

if TYPE_CHECKING:
    from vlbridge.train.recipe import StageRecipe


@dataclass(frozen=True)
class ObjectiveEntry:
    """A registered objective: `build(model, dataset)` makes it; `data` is the kind of data its stages read; `parts`
    names the trainable parts it brings (`Objective.parts`), so a recipe's plans are checked before any model is
    built."""

    build: ObjectiveFactory
    data: DataKind
    parts: tuple[str, ...] = ()


OBJECTIVES: Registry[ObjectiveEntry] = Registry("objective")
OBJECTIVES.register("causal_lm")(ObjectiveEntry(lambda model, dataset, stage: CausalLMObjective(), CONVERSATIONS))
OBJECTIVES.register("text_lm")(ObjectiveEntry(lambda model, dataset, stage: TextLMObjective(), TEXT))
OBJECTIVES.register("contrastive")(
    ObjectiveEntry(lambda model, dataset, stage: build_contrastive(model, dataset), PAIRS, ("contrastive_head",))
)
OBJECTIVES.register("regions")(
    ObjectiveEntry(lambda model, dataset, stage: build_regions(model, dataset), REGIONS, ("region_heads",))
)
OBJECTIVES.register("qformer")(
    ObjectiveEntry(
        lambda model, dataset, stage: build_qformer_objective(model, dataset), PAIRS, ("qformer_text", "qformer_heads")
    )
)
OBJECTIVES.register("distill")(ObjectiveEntry(build_distill, CONVERSATIONS))


def build_objective(
    name: str, model: VisionLanguageModel, dataset: Dataset | None = None, stage: StageRecipe | None = None
) -> Objective:
    """The objective registered as `name`, sized for `model` and, where its heads depend on the labels, for the
    stage's `dataset`, with the `stage`'s options (None: the objective's defaults); an unknown name raises
    ConfigError listing the registered ones."""
    return OBJECTIVES.get(name).build(model, dataset, stage)


def data_formats() -> list[str]:
    """Every `data_format` some registered objective reads, in registration order."""
    return list(dict.fromkeys(f for name in OBJECTIVES.names() for f in OBJECTIVES.get(name).data.formats))


def objectives_reading(data_format: str) -> list[str]:
    """The registered objectives whose data kind reads `data_format` files, in registration order."""
    return [name for name in OBJECTIVES.names() if data_format in OBJECTIVES.get(name).data.formats]


__all__ = [
    "OBJECTIVES",
    "Batch",
    "CausalLMObjective",
    "ContrastiveObjective",
    "DistillObjective",
    "DistillOptions",
    "Objective",
    "ObjectiveEntry",
    "ObjectiveOutput",
    "QFormerObjective",
    "RegionObjective",
    "TextLMObjective",
    "TrainStep",
    "build_objective",
    "data_formats",
    "distill_loss",
    "objectives_reading",
    "region_pool",
]
