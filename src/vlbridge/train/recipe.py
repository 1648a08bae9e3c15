"""Training recipes: the typed, flat YAML schema that drives `vlbridge train` (SPEC section 4).

A recipe names the model (a ModelConfig, or `init_from` a checkpoint), the tokenizer (a folder, or one trained on the
stage data), the dataset folder (rendered from the synthetic world when empty) and an ordered list of stages. Each
stage is data: an objective, a data file, which parts are frozen / full / lora with a learning rate per trained part,
and the optimisation settings. Recipes are read with `vlbridge.config.from_dict`, so an unknown key, a value of the
wrong type, a float that is not finite or a number outside the range its field declares (`bounded`) raises ConfigError
naming the dotted key; `validate` adds the checks a type or range cannot express: names that must be registered
(objectives, templates, the connector and its options) and each stage's plan, so a recipe error is found when the
recipe is read, not after earlier stages trained. What a recipe names outside itself (folders, files, the device) is
checked by the pipeline before a run starts (vlbridge.train.pipeline.check_run).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlbridge.config import ModelConfig, apply_overrides, bounded, from_dict, load_yaml, to_dict
from vlbridge.connectors import CONNECTORS
from vlbridge.connectors.base import parse_options
from vlbridge.data.hygiene.augment import AugmentOptions
from vlbridge.data.synthetic import SynthOptions
from vlbridge.errors import ConfigError
from vlbridge.lm.templates import TEMPLATES
from vlbridge.train.objectives import OBJECTIVES, DistillOptions, data_formats, objectives_reading
from vlbridge.train.stages import plan_for

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class TokenizerRecipe:
    """A tokenizer folder (`path`), or train a byte-level BPE of `vocab_size` on the stage data with `template`.

    `add_bos` false trains one that starts sequences without BOS, as Qwen2's chatml tokenizer does. For a model
    trained from scratch this matters: a constant first token is a ready attention sink, and the LM learns to
    park its attention there before it learns to read the image tokens (see configs/default.yaml).
    """

    path: str | None = None
    vocab_size: int = field(default=1024, metadata=bounded(1))
    template: str = "chatml"
    add_bos: bool = True


@dataclass(frozen=True)
class DataRecipe:
    """Where stage data files live (stage `data` paths are relative to `root`)."""

    root: str = "runs/default/data"
    synth: SynthOptions | None = None  # render the synthetic world into `root` when that folder is empty or missing
    skip_malformed: bool = False  # skip and count malformed records instead of raising DataError
    allow_absolute_images: bool = False  # accept absolute image paths in data files (relative ones stay inside root)
    num_workers: int = field(default=0, metadata=bounded(0))  # DataLoader worker processes (0: in the training one)


@dataclass(frozen=True)
class LoraRecipe:
    """LoRA adapters (Hu et al., 2021) on the language model's linear layers, trained through `peft`."""

    r: int = field(default=16, metadata=bounded(1))
    alpha: int = field(default=32, metadata=bounded(1))
    dropout: float = field(default=0.0, metadata=bounded(0, 1, high_open=True))
    merge: bool = True  # merge into plain weights at the end of the stage; false keeps the base and saves the adapter
    #                     (a last stage's final model is then the base weights with adapter/ beside them)
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))


@dataclass(frozen=True)
class StageRecipe:
    """One training stage: objective, data, the plan (parts + learning rates) and optimisation settings."""

    name: str
    objective: str = "causal_lm"  # a registered objective (vlbridge.train.objectives.OBJECTIVES)
    data: str = "captions.json"  # relative to data.root
    data_format: str = "llava"  # llava (conversation JSON/JSONL) | text (one document per line) | regions (region
    #                             labels, vlbridge.data.regions); which ones an objective reads is its data kind's
    template: str | None = None  # conversation template override (default: the model's)
    parts: dict[str, str] = field(default_factory=dict)  # part -> frozen | full | lora; unnamed parts are frozen
    # part -> learning rate, one per trained part; with weight_decay <= 1 too, AdamW's decay factor 1 - lr * wd >= 0
    lr: dict[str, float] = field(default_factory=dict, metadata=bounded(0, 1, low_open=True))
    steps: int | None = field(default=None, metadata=bounded(1))  # optimiser steps; or
    epochs: int | None = field(default=None, metadata=bounded(1))  # passes over the data
    batch_size: int = field(default=16, metadata=bounded(1))
    grad_accum: int = field(default=1, metadata=bounded(1))
    group_by_length: bool = False  # batch samples of similar token length together: less padding, same data
    max_length: int = field(default=256, metadata=bounded(1))
    video_fps: float = field(default=1.0, metadata=bounded(0, low_open=True))  # video records: frames sampled a second
    video_max_frames: int | None = field(default=32, metadata=bounded(1))  # most frames a video keeps (None: all)
    warmup_ratio: float = field(default=0.05, metadata=bounded(0, 1))
    min_lr_ratio: float = field(default=0.0, metadata=bounded(0, 1))  # the cosine decays to this share of each peak
    weight_decay: float = field(default=0.0, metadata=bounded(0, 1))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=bounded(0, 1, high_open=True))
    clip_grad: float | None = field(default=1.0, metadata=bounded(0, low_open=True))  # None: no clipping
    bf16: bool = False  # bf16 autocast where the hardware runs bf16 natively; elsewhere fp32, with a warning
    grad_checkpointing: bool = False
    lora: LoraRecipe | None = None
    distill: DistillOptions | None = None  # the distill objective's teacher, temperature and loss weights
    augment: AugmentOptions | None = None  # crop / rotation / color_jitter of training images (never eval's)
    save_every: int = field(default=100, metadata=bounded(0))  # checkpoint every this many optimiser steps (0: never)
    keep_checkpoints: int = field(default=2, metadata=bounded(1))  # the newest this many mid-stage checkpoints are kept
    log_every: int = field(default=10, metadata=bounded(1))


@dataclass(frozen=True)
class DistributedRecipe:
    """How a run launched by torchrun (WORLD_SIZE > 1) spreads over its processes; ignored in a single process.

    `ddp` replicates the model on every process and averages gradients (DistributedDataParallel); `fsdp` shards
    parameters, gradients and optimiser state across processes (FSDP2 `fully_shard`). Either way a stage's
    `batch_size` is per process: one optimiser step sees batch_size * world_size * grad_accum samples, and on W
    processes it computes the update one process computes with grad_accum * W (train/distributed.py).
    """

    strategy: str = "ddp"  # ddp | fsdp


@dataclass(frozen=True)
class Recipe:
    """A whole training run: model, tokenizer, data and ordered stages."""

    run_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    model: ModelConfig | None = None
    init_from: str | None = None  # a vlbridge / HF llava checkpoint, or an HF Llama/Mistral/Qwen2 LLM
    vision_from: str | None = None  # for init_from's text LLM: an HF CLIP/Siglip[Vision]Model dir
    #                                 or a vision-language checkpoint (vlbridge / HF llava): its vision encoder
    tokenizer: TokenizerRecipe = field(default_factory=TokenizerRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    stages: list[StageRecipe] = field(default_factory=list)
    distributed: DistributedRecipe = field(default_factory=DistributedRecipe)


def _check_tables(stage: StageRecipe, where: str) -> StageRecipe:
    """Part modes must be strings and learning rates numbers (the generic reader leaves mapping values unchecked)."""
    for part, mode in stage.parts.items():
        if not isinstance(mode, str):
            raise ConfigError(f"{where}.parts.{part} must be frozen, full or lora, got {mode!r}")
    for part, lr in stage.lr.items():
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise ConfigError(f"{where}.lr.{part} must be a number, got {lr!r}")
    return replace(stage, lr={part: float(lr) for part, lr in stage.lr.items()})


def _check_objective(stage: StageRecipe, where: str) -> None:
    """The stage's objective is registered and its data kind reads the stage's data_format."""
    if stage.objective not in OBJECTIVES:
        raise ConfigError(f"{where}.objective is {stage.objective!r}; choose one of {', '.join(OBJECTIVES.names())}")
    formats = data_formats()
    if stage.data_format not in formats:
        raise ConfigError(f"{where}.data_format is {stage.data_format!r}; choose one of {', '.join(formats)}")
    kind = OBJECTIVES.get(stage.objective).data
    if stage.augment is not None and not kind.augments:
        raise ConfigError(
            f"{where}.augment: the {stage.objective} objective reads {kind.name}, which augmentation does not apply to "
            "(no images, or labels tied to where things are); remove augment from this stage"
        )
    if stage.data_format not in kind.formats:
        raise ConfigError(
            f"{where}: the {stage.objective} objective reads {kind.name} (data_format: {' or '.join(kind.formats)}); "
            f"data_format {stage.data_format} is for {', '.join(objectives_reading(stage.data_format))}"
        )
    if (stage.objective == "distill") != (stage.distill is not None):
        raise ConfigError(
            f"{where}: a `distill:` section (teacher, temperature, alpha, teacher_dtype) goes with objective: distill "
            f"and only with it; the stage's objective is {stage.objective}"
        )
    if stage.distill is not None:
        stage.distill.validate(f"{where}.distill")


def _check_template(name: str | None, where: str) -> None:
    """A conversation template, if named, is a built-in one."""
    if name is not None and name not in TEMPLATES:
        raise ConfigError(f"{where} is {name!r}; choose one of {', '.join(TEMPLATES.names())}")


def _check_model(model: ModelConfig, adds_vision: bool) -> None:
    """The model's template is built in and, with vision (its own or `vision_from`'s), its connector is registered and
    takes its options (read into the connector's own options dataclass, range checks included)."""
    _check_template(model.template, "model.template")
    if model.vision is not None or adds_vision:
        connector = model.connector
        parse_options(connector.name, CONNECTORS.get(connector.name).Options, connector.options)


def validate(recipe: Recipe) -> Recipe:
    """Cross-field checks; raises ConfigError naming the stage and key. Returns the recipe, learning rates as floats."""
    if recipe.model is None and recipe.init_from is None:
        raise ConfigError("the recipe needs a `model` config or `init_from: PATH` (a checkpoint to start from)")
    if recipe.vision_from is not None and recipe.init_from is None:
        raise ConfigError("vision_from (a vision tower) needs init_from: the text LLM directory the tower is added to")
    if recipe.model is not None:
        _check_model(recipe.model, adds_vision=recipe.vision_from is not None)
    _check_template(recipe.tokenizer.template, "tokenizer.template")
    if not recipe.stages:
        raise ConfigError("the recipe has no stages; add at least one under `stages:`")
    if recipe.distributed.strategy not in STRATEGIES:
        raise ConfigError(
            f"distributed.strategy is {recipe.distributed.strategy!r}; choose one of {', '.join(STRATEGIES)}"
        )
    if recipe.data.synth is not None:
        recipe.data.synth.validate("data.synth")
    names = [s.name for s in recipe.stages]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"stage names must be unique (they name the output folders); repeated: {', '.join(dupes)}")
    for i, stage in enumerate(recipe.stages):
        where = f"stages[{i}] ({stage.name})"
        if not stage.name or "/" in stage.name or stage.name.startswith("."):
            raise ConfigError(f"{where}: name {stage.name!r} must be a plain folder name")
        _check_objective(stage, where)
        _check_template(stage.template, f"{where}.template")
        if (stage.steps is None) == (stage.epochs is None):
            raise ConfigError(f"{where}: set exactly one of `steps` or `epochs`")
        if len(stage.betas) != 2:
            raise ConfigError(f"{where}.betas must be two numbers in [0, 1) (AdamW's beta1, beta2), got {stage.betas}")
        if stage.lora is not None:
            unknown = sorted(set(stage.lora.targets) - set(LORA_TARGETS))
            if unknown or not stage.lora.targets:
                raise ConfigError(
                    f"{where}.lora.targets {stage.lora.targets} must be a non-empty subset of {', '.join(LORA_TARGETS)}"
                )
    stages = [_check_tables(stage, f"stages[{i}] ({stage.name})") for i, stage in enumerate(recipe.stages)]
    for stage in stages:
        plan_for(stage, OBJECTIVES.get(stage.objective).parts)
    return replace(recipe, stages=stages)


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """A validated Recipe from a plain mapping (unknown keys and wrong types raise ConfigError)."""
    return validate(from_dict(Recipe, data))


def load_recipe(path: str | Path, overrides: list[str] | None = None, run_dir: str | None = None) -> Recipe:
    """Read a YAML recipe, apply `a.b=c` overrides (and a run-dir override), and validate it."""
    data = apply_overrides(load_yaml(path), list(overrides or []))
    if run_dir is not None:
        data["run_dir"] = run_dir
    return recipe_from_dict(data)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a plain mapping (saved beside the run so it can be reproduced)."""
    return to_dict(recipe)
