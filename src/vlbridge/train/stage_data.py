"""A stage's dataset, built by the kind of data its objective reads: conversations, plain text, image-caption pairs
or region labels.

Every objective is registered with one `DataKind` (train/objectives), which names the data file layouts a stage may
give it (its `data_format` values) and builds the stage's dataset, collate function and data stats from the file,
read as the recipe's `data` section says (skip malformed records? absolute image paths allowed?) and, for image
data, augmented as the stage's `augment` says.
The pipeline asks the objective's kind, so it names no objective and no kind itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from vlbridge.data.collate import SupervisedDataset, collate, fixed_image_side, pad_id
from vlbridge.data.datasets import ImageTextDataset, TextDataset, collate_image_text
from vlbridge.data.files import nonempty, read_text
from vlbridge.data.hygiene.augment import Augmenter
from vlbridge.data.llava_json import Record, conversation_texts, load_llava
from vlbridge.data.regions import RegionDataset, collate_regions, load_regions
from vlbridge.data.videos import VideoSampling
from vlbridge.errors import ConfigError
from vlbridge.model.processor import Processor

if TYPE_CHECKING:  # the recipe validates stages against the objectives, which import this module
    from vlbridge.train.recipe import DataRecipe, StageRecipe

StageDataset = tuple[Dataset, Callable[[list[Any]], Any], dict[str, Any]]
"""(dataset, collate function, data stats) of one stage."""


@dataclass(frozen=True)
class DataKind:
    """What an objective reads: `name` (for messages), the data file layouts a stage may give it (`formats`, as
    `data_format` values) and `build(stage, root, processor, data)`, which makes the stage's dataset (`data`: the
    recipe's data section, how files are read)."""

    name: str
    formats: tuple[str, ...]
    build: Callable[[StageRecipe, Path, Processor, DataRecipe], StageDataset]
    augments: bool = False  # whether a stage's `augment` applies to its images


def stage_texts(stage: StageRecipe, root: Path, data: DataRecipe) -> list[str]:
    """The plain texts of a stage's data file: one per line (data_format text), or a LLaVA file's conversations."""
    path = root / stage.data
    if stage.data_format == "text":
        if not path.is_file():
            raise ConfigError(f"stage {stage.name!r}: data file {path} does not exist")
        return nonempty([line for line in read_text(path).splitlines() if line.strip()], path, "text lines")
    records = load_llava(
        path,
        root,
        skip_malformed=data.skip_malformed,
        check_images=False,
        allow_absolute_images=data.allow_absolute_images,
    )
    return conversation_texts(records.items)


def _llava_records(stage: StageRecipe, root: Path, data: DataRecipe) -> tuple[list[Record], dict[str, Any]]:
    """The records of the stage's LLaVA file and the stats of reading it."""
    loaded = load_llava(
        root / stage.data, root, skip_malformed=data.skip_malformed, allow_absolute_images=data.allow_absolute_images
    )
    return loaded.items, {"records": len(loaded.items), "skipped_malformed": loaded.n_skipped}


def _augmenter(stage: StageRecipe) -> Augmenter | None:
    """The stage's augmenter; None when its `augment` is absent or turns every transform off."""
    return Augmenter(stage.augment) if stage.augment is not None and stage.augment.active else None


def _conversations(stage: StageRecipe, root: Path, processor: Processor, data: DataRecipe) -> StageDataset:
    """Conversations rendered with the stage's template (else the model's, else plain), assistant turns supervised;
    videos sampled at the stage's video_fps up to video_max_frames."""
    records, stats = _llava_records(stage, root, data)
    template = stage.template or processor.template or "plain"
    video = VideoSampling(stage.video_fps, stage.video_max_frames)
    dataset = SupervisedDataset(records, root, processor, template, stage.max_length, _augmenter(stage), video)
    stats.update(samples=len(dataset), truncated=dataset.stats.truncated, dropped=dict(dataset.stats.dropped))
    return dataset, partial(collate, pad_token_id=pad_id(processor)), stats


def _text(stage: StageRecipe, root: Path, processor: Processor, data: DataRecipe) -> StageDataset:
    """The file's plain texts (`stage_texts`), tokenised and packed for the language model alone."""
    dataset = TextDataset(stage_texts(stage, root, data), processor.tokenizer, stage.max_length)
    return dataset, partial(collate, pad_token_id=pad_id(processor)), {"samples": len(dataset)}


def _pairs(stage: StageRecipe, root: Path, processor: Processor, data: DataRecipe) -> StageDataset:
    """Each one-image record's image, captioned by its replies."""
    records, stats = _llava_records(stage, root, data)
    pairs = ImageTextDataset(records, root, processor, stage.max_length, _augmenter(stage))
    stats.update(samples=len(pairs), truncated=pairs.n_truncated, without_one_image=pairs.n_skipped)
    return pairs, partial(collate_image_text, pad_token_id=pad_id(processor)), stats


def _regions(stage: StageRecipe, root: Path, processor: Processor, data: DataRecipe) -> StageDataset:
    """Images with their per-region attribute labels (vlbridge.data.regions)."""
    if processor.image_processor is None:
        raise ConfigError(f"stage {stage.name!r}: region labels train a vision encoder; build the model with vision")
    fixed_image_side(processor)  # images are stacked, so they must come out one size
    regions = load_regions(
        root / stage.data, root, skip_malformed=data.skip_malformed, allow_absolute_images=data.allow_absolute_images
    )
    labelled = RegionDataset(regions.items, root, processor.image_processor)
    stats = {"samples": len(labelled), "skipped_malformed": regions.n_skipped, "grid": labelled.vocab.grid}
    return labelled, collate_regions, {**stats, "classes": {k: len(v) for k, v in labelled.vocab.classes.items()}}


CONVERSATIONS = DataKind("conversations", ("llava",), _conversations, augments=True)
TEXT = DataKind("plain text", ("text", "llava"), _text)
PAIRS = DataKind("image-caption pairs", ("llava",), _pairs, augments=True)
REGIONS = DataKind("region labels", ("regions",), _regions)
