"""Training stages as data: which part is frozen, fully trained or LoRA-tuned, and a learning rate per part.

LLaVA's recipe (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023) is two such plans: feature
alignment trains only the connector, instruction tuning trains connector + language model (fully, or with LoRA). A
plan is a plain mapping `{vision_encoder: frozen, connector: full, language_model: lora}` plus `{connector: 1e-3,
...}`; `apply_plan` sets `requires_grad` accordingly, LOGS what it froze and what it trains, and returns optimiser
param groups (one pair per trained part: with and without weight decay). Frozen parameters never reach the optimiser,
so they stay bitwise unchanged. Objectives may bring parts of their own (the contrastive heads); they train by
default at the stage's largest learning rate.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from vlbridge.errors import ConfigError

if TYPE_CHECKING:  # the recipe checks every stage's plan, so it imports this module
    from vlbridge.train.recipe import StageRecipe

log = logging.getLogger(__name__)

PARTS = ("vision_encoder", "connector", "language_model")
MODES = ("frozen", "full", "lora")
LORA_MARKER = "lora_"
"""Substring of every LoRA adapter parameter name (peft's `lora_A` / `lora_B`)."""


@dataclass(frozen=True)
class StagePlan:
    """Every part's mode and every trained part's learning rate, resolved and checked."""

    stage: str
    parts: dict[str, str]
    lr: dict[str, float]

    @property
    def trained(self) -> list[str]:
        """Parts that receive updates, in plan order."""
        return [p for p, mode in self.parts.items() if mode != "frozen"]


def plan_for(stage: StageRecipe, extra_parts: Sequence[str] = ()) -> StagePlan:
    """Resolve a stage's `parts` and `lr`: unnamed model parts are frozen, objective parts train; checks names."""
    where = f"stage {stage.name!r}"
    known = (*PARTS, *extra_parts)
    for key, table in (("parts", stage.parts), ("lr", stage.lr)):
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown part(s) {', '.join(unknown)} in `{key}`; parts are {', '.join(known)}")
    bad = {p: m for p, m in stage.parts.items() if m not in MODES}
    if bad:
        raise ConfigError(f"{where}: mode(s) {bad} not understood; each part is one of {', '.join(MODES)}")
    parts = {p: stage.parts.get(p, "frozen") for p in PARTS}
    parts.update({p: stage.parts.get(p, "full") for p in extra_parts})
    lora_parts = [p for p, m in parts.items() if m == "lora"]
    if any(p != "language_model" for p in lora_parts):
        raise ConfigError(f"{where}: LoRA is supported on the language_model only, not {', '.join(lora_parts)}")
    if lora_parts and stage.lora is None:
        raise ConfigError(f"{where}: language_model is `lora` but the stage has no `lora:` settings (r, alpha, ...)")
    if stage.lora is not None and not lora_parts:
        raise ConfigError(f"{where}: `lora:` settings are given but no part is `lora`; set language_model: lora")
    trained = [p for p, m in parts.items() if m != "frozen"]
    if not trained:
        raise ConfigError(f"{where}: every part is frozen, so nothing would train; set a part to full or lora")
    frozen_with_lr = sorted(p for p in stage.lr if parts[p] == "frozen")
    if frozen_with_lr:
        raise ConfigError(
            f"{where}: {', '.join(frozen_with_lr)} is frozen but has a learning rate; remove it or train it"
        )
    missing = [p for p in trained if p in PARTS and p not in stage.lr]
    if missing:
        raise ConfigError(f"{where}: no learning rate for trained part(s) {', '.join(missing)}; add them under `lr:`")
    peak = max(stage.lr.values(), default=None)
    lr = {p: stage.lr.get(p, peak) for p in trained}
    if any(v is None for v in lr.values()):
        raise ConfigError(f"{where}: give a learning rate under `lr:` for {', '.join(trained)}")
    return StagePlan(stage=stage.name, parts=parts, lr=lr)


def _count(params: Sequence[nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def apply_plan(
    plan: StagePlan, modules: Mapping[str, nn.Module | None], weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Freeze / unfreeze each part per `plan`, log it, and return the optimiser's param groups.

    `modules` maps part names to modules (None: the model lacks that part, fine only when it is frozen). A `lora`
    part must already carry adapters (vlbridge.train.lora.apply_lora): only their parameters train. Weight decay
    applies to matrices only, never to biases and norm scales.
    """
    groups: list[dict[str, Any]] = []
    frozen: list[str] = []
    for part, mode in plan.parts.items():
        module = modules.get(part)
        if module is None:
            if mode != "frozen":
                raise ConfigError(
                    f"stage {plan.stage!r} trains {part} ({mode}) but the model has none; add it to the model config "
                    "or freeze it"
                )
            continue
        named = list(module.named_parameters())
        if mode == "lora":
            trainable = [p for n, p in named if LORA_MARKER in n]
            if not trainable:
                raise ConfigError(f"stage {plan.stage!r}: {part} is `lora` but carries no adapters; apply LoRA first")
        else:
            trainable = [p for _, p in named] if mode == "full" else []
        trainable_ids = {id(p) for p in trainable}
        for _, p in named:
            p.requires_grad_(id(p) in trainable_ids)
        if mode == "frozen":
            frozen.append(f"{part} ({_count([p for _, p in named]):,} params)")
            continue
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        lr = plan.lr[part]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": lr, "weight_decay": wd, "name": part})
        log.info(
            "stage %s: training %s [%s] %s of %s params at lr %g",
            plan.stage,
            part,
            mode,
            f"{_count(trainable):,}",
            f"{_count([p for _, p in named]):,}",
            lr,
        )
    log.info("stage %s: froze %s", plan.stage, ", ".join(frozen) if frozen else "nothing")
    return groups
