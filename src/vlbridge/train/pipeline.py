"""A whole training run: data, tokenizer and model prepared once, then the recipe's stages in order.

`train(recipe, resume)` is what `vlbridge train` runs. The run directory holds:

    recipe.yaml                the resolved recipe (what was asked, overrides applied)
    tokenizer/                 the tokenizer (trained on the stage data when the recipe names none)
    <stage>/                   per stage: ckpt-<step>.pt (mid-stage), metrics.jsonl, loss.png, adapter/ (LoRA),
                               model/ (the model after the stage: what it changed, chained on its base, outputs.py)
                               and done.json
    config.json, model.safetensors, tokenizer files   the final model, whole: `vlbridge.load(run_dir)`

Before any work and before any file is written, `check_run` checks what the recipe names outside itself: the run
folder, the data files (or what the synthetic world will render), the tokenizer and checkpoint folders, and the model
the first stage starts from (built on the meta device, so every architecture option is checked at no cost).

Resume first deletes the temporary files of writes a kill interrupted, skips finished stages (those with done.json),
reloads the last finished stage's model, and continues an unfinished stage from its newest checkpoint. Every stage
starts from a seed derived from the recipe's, so a stage behaves the same whether the run reached it in one go or after
a restart. A new run refuses a run directory that holds a run's results (a finished stage, a checkpoint or a final
model), so they are never overwritten by accident; one that failed before any result starts over in it, tokenizer
included, so the same command runs once the cause is fixed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch
import yaml

from vlbridge.atomic import remove_stale, write_text
from vlbridge.config import ModelConfig, load_yaml
from vlbridge.data.synthetic import synthesize
from vlbridge.data.synthetic.writer import output_files
from vlbridge.devices import resolve_device
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model import io, parts
from vlbridge.model.processor import processor_for
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.checkpoint import checkpoints
from vlbridge.train.distributed import World, init_world
from vlbridge.train.objectives import OBJECTIVES
from vlbridge.train.outputs import MODEL_DIR, save_final_model, save_stage_model, stage_bases
from vlbridge.train.recipe import DataRecipe, Recipe, StageRecipe, recipe_to_dict
from vlbridge.train.stage_data import StageDataset, stage_texts
from vlbridge.train.trainer import ADAPTER_DIR, StageTrainer, seed_everything

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.yaml"
TOKENIZER_DIR = "tokenizer"
DONE_FILE = "done.json"


def _renders(recipe: Recipe) -> bool:
    """Whether the run renders the synthetic world: the recipe has `data.synth` and its data root is empty or absent."""
    root = Path(recipe.data.root)
    return recipe.data.synth is not None and (not root.is_dir() or not any(root.iterdir()))


def prepare_data(recipe: Recipe, world: World) -> Path:
    """The data root; rendered from the synthetic world first when the recipe asks and the folder is empty."""
    root = Path(recipe.data.root)
    synth = recipe.data.synth
    render = _renders(recipe)
    world.barrier()  # every rank has looked before rank 0 writes (else a late rank could skip the barrier below)
    if render and synth is not None:
        if world.is_main:
            log.info("rendering %d synthetic scenes into %s", synth.n, root)
            synthesize(root, synth)
        world.barrier()
    return root


def _given_tokenizer(recipe: Recipe) -> Tokenizer | None:
    """The recipe's tokenizer folder, else the init checkpoint's tokenizer; None when the run trains one. When the
    recipe adds vision to a text LLM, the image placeholder is added to it if missing (a text LLM's tokenizer lacks
    it); a whole model's tokenizer is taken as it is."""
    path = recipe.tokenizer.path or recipe.init_from
    if path is None:
        return None
    tokenizer = Tokenizer.from_dir(path)
    wanted = recipe.model or ModelConfig()
    adds_vision = recipe.vision_from is not None or (recipe.model is not None and recipe.model.vision is not None)
    if adds_vision and recipe.init_from is not None and io.read_config(Path(recipe.init_from))[0].vision is None:
        parts.add_image_token(tokenizer, wanted.image_token)
    return tokenizer


def prepare_tokenizer(recipe: Recipe, root: Path, run_dir: Path, world: World, reuse: bool) -> Tokenizer:
    """The recipe's tokenizer folder, the init checkpoint's tokenizer, or a BPE trained on the stage data (saved).

    A tokenizer saved by an earlier attempt in `run_dir` is used only when `reuse` (a resumed run): a new run trains
    its own, as its recipe may ask for another one."""
    given = _given_tokenizer(recipe)
    if given is not None:
        return given
    saved = run_dir / TOKENIZER_DIR
    missing = not reuse or not (saved / "tokenizer.json").is_file()
    world.barrier()  # every rank has looked before rank 0 writes
    if missing:
        if world.is_main:
            from vlbridge.lm.tokenizer_train import train_tokenizer

            # The stages' plain texts, not their template renderings: trained on renderings, the default recipe's
            # instruction samples were 27% shorter (role names and system prompt as single tokens) but its held-out
            # position accuracy fell to 0.45 and 0.29 from 0.84 and 0.84 (two pairs of runs; configs/default.yaml).
            text_stages = [s for s in recipe.stages if s.data_format != "regions"]
            texts = [t for s in text_stages for t in stage_texts(s, root, recipe.data)]
            spec = recipe.tokenizer
            log.info("training a %d-token BPE tokenizer on %d texts", spec.vocab_size, len(texts))
            train_tokenizer(texts, spec.vocab_size, template=spec.template, add_bos=spec.add_bos).save(saved)
        world.barrier()
    return Tokenizer.from_dir(saved)


def fit_config(config: ModelConfig, tokenizer: Tokenizer, template: str) -> ModelConfig:
    """`config` with the tokenizer's vocabulary size and special-token ids (they override the recipe's), and a
    conversation template (the model's own, else `template`)."""
    lm = replace(
        config.language_model,
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_id = tokenizer.token_to_id(config.image_token)
    if config.vision is not None and image_id is None:
        raise ConfigError(
            f"the tokenizer has no {config.image_token!r} token; add it as a special token or train the tokenizer "
            "with it (vlbridge's own tokenizer training does)"
        )
    return replace(
        config,
        language_model=lm,
        image_token_id=config.image_token_id if image_id is None else image_id,
        template=config.template or template,
    )


StartConfig = tuple[ModelConfig, tuple[tuple[str, str], ...] | None, tuple[str, ...]]
"""(config, the checkpoint's weight-name rules, prefixes of the parts initialised fresh) of the first stage's model."""


def start_config(recipe: Recipe, tokenizer: Tokenizer) -> StartConfig:
    """The config of the model the first stage starts from, read without any weights: `model` fitted to the
    tokenizer, or `init_from`'s config with the parts `model` brings.

    `init_from` a text-only checkpoint plus a `model` with vision adds a freshly initialised vision encoder and
    connector (from `model`'s vision, connector and image_processor sections) to the checkpoint's language model,
    its vocabulary grown by the image placeholder (model/parts.py). With `vision_from`, the vision encoder and image
    processor are that tower directory's (pretrained) instead, and `model`, if given, brings the connector (and, with a
    `vision` section, the feature layer and strategy; without one, the tower's own).
    `init_from` a whole model plus a `model` with the same vision sections keeps its vision encoder and language
    model and puts a fresh connector of `model`'s kind between them (how connectors are compared on equal parts); its
    image_processor may add or change AnyRes pinpoints (the views are the encoder's either way), with a fresh row-end
    token when the checkpoint had none.
    """
    template = recipe.tokenizer.template
    if recipe.init_from is None:
        assert recipe.model is not None, "validate() requires model or init_from"
        return fit_config(recipe.model, tokenizer, template), None, ()
    path = Path(recipe.init_from)
    base, rules = parts.lm_start_config(path) if recipe.vision_from is not None else io.read_config(path)
    config, fresh = base, ()
    if recipe.model is not None and base.vision is not None:
        processor = recipe.model.image_processor
        same_views = replace(processor, image_grid_pinpoints=base.image_processor.image_grid_pinpoints)
        if (recipe.model.vision, same_views) != (base.vision, base.image_processor):
            raise ConfigError(
                f"init_from {path} already describes a whole model; remove `model:` from the recipe, or give it the "
                "checkpoint's own vision and image_processor sections (AnyRes pinpoints may differ) to swap in a new "
                "connector only"
            )
        config = replace(base, connector=recipe.model.connector, image_processor=processor)
        new_newline = base.image_processor.image_grid_pinpoints is None and processor.image_grid_pinpoints is not None
        fresh = ("connector.", "image_newline") if new_newline else ("connector.",)
    elif recipe.vision_from is not None:
        tower = parts.read_tower_config(recipe.vision_from)
        config = parts.with_parts(base, tokenizer, recipe.model or ModelConfig(vision=None), tower, template)
        fresh = ("connector.",)
    elif recipe.model is not None and recipe.model.vision is not None:
        config = parts.with_parts(base, tokenizer, recipe.model, None, template)
        fresh = io.VISION_PREFIXES
    elif recipe.model is not None:
        config = replace(base, template=base.template or template)
    return config, rules, fresh


def initial_model(recipe: Recipe, tokenizer: Tokenizer) -> VisionLanguageModel:
    """The model the first stage starts from (`start_config`): a seeded init of `model`, or `init_from`'s weights
    loaded as `vlbridge.load` loads them (built on the meta device, each weight written once) with only the parts
    `model` brings initialised, after the load (so parts built from the LM, as LLaVA-Mini's pre-fusion, see it).
    Loaded weights keep the dtype their file stores them in (a stage trains its parts in float32 and leaves the frozen
    ones so: train/precision.py); fresh parts are float32."""
    config, rules, fresh = start_config(recipe, tokenizer)
    if recipe.init_from is None:
        return VisionLanguageModel(config)
    path = Path(recipe.init_from)
    if fresh:
        new = ", ".join(prefix.rstrip(".") for prefix in fresh)
        log.info("starting from %s with a new %s (connector %s)", recipe.init_from, new, config.connector.name)
    if config.vision is not None and io.read_config(path)[0].vision is None:  # a text LLM gets vision
        model = io.build_empty(config)  # load_parts fills the LM (vocabulary grown) and initialises the new parts
        parts.load_parts(model, path, rules, recipe.vision_from, stored=True)
        return model
    model = io.build_empty(config)
    io.load_weights(model, path, rules, fresh=fresh, stored=True)
    if fresh:
        model.build_vision(encoder="vision_encoder." in fresh)
    return model


def build_dataset(
    stage: StageRecipe, root: Path, model: VisionLanguageModel, tokenizer: Tokenizer, data: DataRecipe
) -> StageDataset:
    """(dataset, collate function, data stats) for a stage: built by the data kind its objective is registered with."""
    kind = OBJECTIVES.get(stage.objective).data
    return kind.build(stage, root, processor_for(model, tokenizer), data)


def check_run(recipe: Recipe, resume: bool = False) -> None:
    """Check what `recipe` names outside itself before any work and before any file is written: the run folder, the
    data files, the tokenizer and checkpoint folders, and the first stage's model. Raises ConfigError (CheckpointError
    for a checkpoint) naming the key and the fix."""
    _check_run_dir(recipe, Path(recipe.run_dir), resume)
    _check_data(recipe)
    _check_model(recipe)


def _holds_results(run_dir: Path) -> bool:
    """Whether `run_dir` holds what a new run would overwrite: a finished stage, a checkpoint or a final model."""
    if not run_dir.is_dir():
        return False
    stages = [path for path in run_dir.iterdir() if path.is_dir()]
    return (run_dir / "config.json").is_file() or any((s / DONE_FILE).is_file() or checkpoints(s) for s in stages)


def _check_run_dir(recipe: Recipe, run_dir: Path, resume: bool) -> None:
    """The run folder can be made (no file in its place) and holds no results unless the run resumes."""
    existing = next(path for path in (run_dir, *run_dir.parents) if path.exists())  # `.` at least
    if not existing.is_dir():
        raise ConfigError(f"run_dir {run_dir}: {existing} is a file; choose another --run-dir (or run_dir)")
    if not resume and _holds_results(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --run-dir")
    saved = run_dir / RECIPE_FILE
    if resume and saved.is_file() and load_yaml(saved) != recipe_to_dict(recipe):
        log.warning("the recipe differs from the one %s was started with; resuming with the new one", run_dir)


def remove_partial_writes(recipe: Recipe, run_dir: Path) -> list[Path]:
    """Delete the temporary files of writes a kill interrupted (a model save, a checkpoint, metrics) in the folders
    the run writes, and only those files; returns them. A resumed run rewrites whatever they were."""
    folders = [run_dir, run_dir / TOKENIZER_DIR, run_dir / ADAPTER_DIR]
    for stage in recipe.stages:
        folders += [run_dir / stage.name, run_dir / stage.name / MODEL_DIR, run_dir / stage.name / ADAPTER_DIR]
    removed = [path for folder in folders for path in remove_stale(folder)]
    if removed:
        log.info("removed %d partial file(s) of interrupted writes: %s", len(removed), ", ".join(map(str, removed)))
    return removed


def _check_data(recipe: Recipe) -> None:
    """Every stage's data file exists under the data root, or is among those the synthetic world will render there."""
    root, synth = Path(recipe.data.root), recipe.data.synth
    if _renders(recipe) and synth is not None:
        rendered = output_files(synth)
        for stage in recipe.stages:
            if stage.data not in rendered:
                raise ConfigError(
                    f"stage {stage.name!r} reads {stage.data}, which data.synth does not render into the empty "
                    f"{root} (it writes {', '.join(rendered)}); name one of those"
                )
        return
    if not root.is_dir():
        raise ConfigError(f"data root {root} does not exist; create it or set data.synth to render the synthetic world")
    for stage in recipe.stages:
        if not (root / stage.data).is_file():
            raise ConfigError(f"stage {stage.name!r}: data file {root / stage.data} does not exist; check its `data`")


def _check_model(recipe: Recipe) -> None:
    """The tokenizer and checkpoint folders exist, the first stage's model builds (on the meta device: no memory, no
    weights read) and each stage's max_length fits its context window. Without a tokenizer yet, the model is the
    recipe's `model` and the vocabulary size the tokenizer will be trained to is checked."""
    if recipe.tokenizer.path is not None and not Path(recipe.tokenizer.path).is_dir():
        raise ConfigError(
            f"tokenizer.path {recipe.tokenizer.path} does not exist; give a tokenizer folder (tokenizer.json), or "
            "remove it to train one on the stage data"
        )
    if recipe.init_from is not None and not Path(recipe.init_from).is_dir():
        raise CheckpointError(
            f"init_from {recipe.init_from} does not exist; give a vlbridge or HF llava checkpoint folder"
        )
    if recipe.vision_from is not None and not Path(recipe.vision_from).is_dir():
        raise CheckpointError(
            f"vision_from {recipe.vision_from} does not exist; give an HF CLIP or SigLIP (vision) model folder, or a "
            "vision-language checkpoint (its vision encoder is taken)"
        )
    for stage in recipe.stages:
        teacher = stage.distill.teacher if stage.distill is not None else None
        if teacher is not None and not Path(teacher).is_dir():
            raise CheckpointError(
                f"stage {stage.name!r}: distill.teacher {teacher} does not exist; give a vlbridge or HF llava "
                "checkpoint folder, or leave it out to distil from the embedded default"
            )
    tokenizer = _given_tokenizer(recipe)
    if tokenizer is None:
        from vlbridge.lm.tokenizer_train import check_vocab_size

        check_vocab_size(recipe.tokenizer.vocab_size, recipe.tokenizer.template)
        assert recipe.model is not None, "validate() requires model or init_from"
        config = recipe.model
    else:
        config = start_config(recipe, tokenizer)[0]
    with torch.device("meta"):
        VisionLanguageModel(config)
    limit = config.language_model.max_position_embeddings
    for stage in recipe.stages:
        if stage.max_length > limit:
            raise ConfigError(
                f"stage {stage.name!r}: max_length {stage.max_length} exceeds the model's context window {limit}; "
                "lower it"
            )


def train(recipe: Recipe, resume: bool = False, world: World | None = None) -> Path:
    """Run (or resume) every stage of `recipe`; returns the run directory, which holds the final model.

    Without `world`, a process launched by torchrun joins its process group here (and leaves it at the end).
    """
    device = resolve_device(recipe.device)
    if world is not None:
        return _train(recipe, resume, world, world.place(device))
    world = init_world(device, recipe.distributed.strategy)
    try:
        return _train(recipe, resume, world, world.place(device))
    finally:
        world.close()


def _train(recipe: Recipe, resume: bool, world: World, device: torch.device) -> Path:
    run_dir = Path(recipe.run_dir)
    check_run(recipe, resume)
    if resume and world.is_main:
        remove_partial_writes(recipe, run_dir)
    world.barrier()  # every rank has checked the run directory before rank 0 writes into it
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / RECIPE_FILE, yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    root = prepare_data(recipe, world)
    tokenizer = prepare_tokenizer(recipe, root, run_dir, world, reuse=resume)
    done = [(run_dir / s.name / DONE_FILE).is_file() for s in recipe.stages]
    start = done.index(False) if False in done else len(done)
    if start == 0:
        seed_everything(recipe.seed)
        model = initial_model(recipe, tokenizer)
    else:
        model, _ = io.load(run_dir / recipe.stages[start - 1].name / MODEL_DIR, dtype=io.STORED)
        log.info(
            "stages %s already finished; continuing from their model", ", ".join(s.name for s in recipe.stages[:start])
        )
    model.to(device)
    for index in range(start, len(recipe.stages)):
        run_stage(recipe, index, model, tokenizer, root, world, device, resume)
    model.processor = processor_for(model, tokenizer)
    if world.is_main:
        save_final_model(recipe, model)
    world.barrier()
    return run_dir


def run_stage(
    recipe: Recipe,
    index: int,
    model: VisionLanguageModel,
    tokenizer: Tokenizer,
    root: Path,
    world: World,
    device: torch.device,
    resume: bool,
) -> None:
    """Train stage `index` in place, then save its model and mark it done."""
    stage = recipe.stages[index]
    stage_dir = Path(recipe.run_dir) / stage.name
    seed_everything(recipe.seed + 1 + index)
    dataset, collate_fn, stats = build_dataset(stage, root, model, tokenizer, recipe.data)
    log.info("stage %s (%s): %s", stage.name, stage.objective, json.dumps(stats))
    bases = stage_bases(recipe, index)  # where the stage's frozen weights come from, named in its checkpoints
    base = " + ".join(str(ref.path) for ref in bases) or "the recipe's seeded initialisation"
    trainer = StageTrainer(
        stage, model, dataset, collate_fn, stage_dir, recipe.seed + index, world, device, recipe.data.num_workers, base
    )
    result = trainer.run(resume=resume)
    if world.is_main:
        model.processor = processor_for(model, tokenizer)
        save_stage_model(recipe, index, model)
        write_text(stage_dir / DONE_FILE, json.dumps({**asdict(result), "data": stats}, indent=2) + "\n")
        for ckpt in checkpoints(stage_dir):
            ckpt.unlink()
    world.barrier()
