"""What a training run writes as models: each stage's model folder (chained on what the stage started from) and the
final model (whole), so that disk use grows with what the stages trained, not with the size of the model.

A stage's `<stage>/model/` is a chained folder (`vlbridge.model.chain`): it stores the tensors the stage changed (for a
LoRA stage whose adapter is merged, the adapter instead of the merged weights) and names its base with the SHA-256 of
its files: the previous stage's model, or for the first stage the recipe's `init_from` (and `vision_from`'s tower).
`vlbridge.load` of it follows the chain and gives the weights the stage ended with, bitwise; a base inside the run
directory (an earlier stage's model) is named relative to the folder too, so a run directory moved whole still loads.
A first stage that starts from the recipe's seeded initialisation has no base on disk, so its model is written whole.

The final model is written once, whole, into the run directory, where `vlbridge.load(run_dir)` finds it: a shipped
model must not depend on the run's intermediate folders. A LoRA stage's `lora.merge` says which form it takes: merged
into plain weights (true), or the base weights with the adapter beside them in `<run_dir>/adapter/` (false, when it is
the last stage). Tensors nothing trained keep the dtype their source file stores them in (a bf16 base stays bf16).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from vlbridge.atomic import atomic_path
from vlbridge.model import chain
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.recipe import Recipe
from vlbridge.train.trainer import ADAPTER_DIR

log = logging.getLogger(__name__)

MODEL_DIR = "model"


def stage_bases(recipe: Recipe, index: int) -> list[chain.BaseRef]:
    """The folders stage `index` starts from: the previous stage's model, else `init_from` (and `vision_from`)."""
    if index:
        return [chain.BaseRef(Path(recipe.run_dir) / recipe.stages[index - 1].name / MODEL_DIR)]
    if recipe.init_from is None:
        return []
    bases = [chain.BaseRef(Path(recipe.init_from))]
    if recipe.vision_from is not None:
        bases.append(chain.BaseRef(Path(recipe.vision_from), "vision_tower"))
    return bases


def save_stage_model(recipe: Recipe, index: int, model: VisionLanguageModel) -> Path:
    """Write stage `index`'s model as a chained folder on the stage's bases; returns the folder."""
    stage = recipe.stages[index]
    stage_dir = Path(recipe.run_dir) / stage.name
    merged = stage.lora is not None and stage.lora.merge
    adapter = stage_dir / ADAPTER_DIR if merged else None
    folder = stage_dir / MODEL_DIR
    bases = stage_bases(recipe, index)
    state, config, processor = model.state_dict(), model.config, model.processor
    stored = chain.save_chained(folder, state, config, processor, bases, adapter, root=Path(recipe.run_dir))
    log.info("stage %s: model saved in %s (%d tensors, %d elements stored)", stage.name, folder, *stored.values())
    return folder


def save_final_model(recipe: Recipe, model: VisionLanguageModel) -> Path:
    """Write the final model whole into the run directory (and the last stage's unmerged adapter beside it)."""
    run_dir = Path(recipe.run_dir)
    last = recipe.stages[-1]
    chain.save_whole(run_dir, model.state_dict(), model.config, model.processor, run_dir / last.name / MODEL_DIR)
    if last.lora is not None and not last.lora.merge:
        for file in sorted((run_dir / last.name / ADAPTER_DIR).iterdir()):
            with atomic_path(run_dir / ADAPTER_DIR / file.name) as tmp:
                shutil.copyfile(file, tmp)
    return run_dir
