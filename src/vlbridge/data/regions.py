"""Region labels for supervised vision pre-training: per image, one class label per region of a grid x grid layout.

The original ViT was pre-trained on labelled images before any language (Dosovitskiy et al., "An Image is Worth
16x16 Words", 2021). This is its per-region form, the `regions` objective's data: it tells a from-scratch encoder
what is where directly, which the LM's caption loss teaches it slowly (experiments/shape_perception.py). The
synthetic writer makes `regions.jsonl`; any dataset can be written the same way, one JSON object per line:

    {"image": "images/train_000000.png", "grid": 3,
     "labels": {"kind": ["object", "empty", ...], "shape": ["circle", null, ...], "word": [null, "CAT", ...]}}

`image` is relative to the image root and must stay inside it (`vlbridge.data.files.ImageFolder`). Each attribute
lists grid * grid labels in row-major order; null means no label there (the loss skips it). Every line has the same
grid. An attribute's classes are the sorted labels it takes over the file, so the file alone fixes the objective's
heads. Malformed lines raise DataError with file and line, or are skipped and counted (`skip_malformed`), as for
LLaVA files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vlbridge.data.files import ImageFolder
from vlbridge.data.llava_json import Loaded, check_image_files, image_folder, load_items
from vlbridge.errors import DataError, ImageError
from vlbridge.vision.processor import ImageProcessor

UNLABELLED = -1
"""Class index of a region without a label for an attribute (cross-entropy's ignore_index)."""


@dataclass(frozen=True)
class RegionItem:
    """One image's region labels as written: attribute -> grid * grid labels (None: unlabelled)."""

    image: str
    grid: int
    labels: dict[str, tuple[str | None, ...]]
    source: Path | None = None
    line: int | None = None


def parse_region_item(data: Any, line: int, images: ImageFolder | None = None) -> RegionItem:
    """Validate one line (DataError without a location on any problem) and return it as a RegionItem."""
    if not isinstance(data, dict):
        raise DataError(f"a region record must be a JSON object, got {type(data).__name__}")
    image, grid, labels = data.get("image"), data.get("grid"), data.get("labels")
    if not isinstance(image, str) or not image:
        raise DataError("'image' must be an image path (relative to the dataset folder)")
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
        raise DataError(f"'grid' must be a positive integer (regions per side), got {grid!r}")
    if not isinstance(labels, dict) or not labels:
        raise DataError("'labels' must be a non-empty object mapping attribute names to per-region label lists")
    regions = grid * grid
    for name, values in labels.items():
        if not isinstance(values, list) or len(values) != regions:
            raise DataError(f"labels.{name} must list {regions} labels (grid {grid} x {grid}, row-major)")
        if not all(v is None or (isinstance(v, str) and v) for v in values):
            raise DataError(f"labels.{name} holds a label that is neither a non-empty string nor null")
    check_image_files([image], images, "the record")
    return RegionItem(image, grid, {name: tuple(values) for name, values in labels.items()}, line=line)


def load_regions(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    skip_malformed: bool = False,
    check_images: bool = True,
    allow_absolute_images: bool = False,
) -> Loaded[RegionItem]:
    """Read a region-label JSONL file; image paths are relative to `image_root` (default: the file's folder), as
    `load_llava` reads them.

    A record whose grid differs from the first record's raises DataError, skipping or not (batches stack one grid).
    """
    images = image_folder(path, image_root, check_images, allow_absolute_images)
    loaded = load_items(path, parse_region_item, images, skip_malformed)
    grid = loaded.items[0].grid  # load_items gives at least one
    for item in loaded.items:
        if item.grid != grid:
            raise DataError(f"grid {item.grid} differs from the first record's grid {grid}", path, item.line)
    return loaded


@dataclass(frozen=True)
class RegionVocab:
    """The grid and every attribute's classes (sorted), which size the objective's heads."""

    grid: int
    classes: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, items: Sequence[RegionItem]) -> RegionVocab:
        """The vocabulary the items' labels span; attributes sorted by name."""
        if not items:
            raise DataError("a region-label dataset needs at least one record")
        names = sorted({name for item in items for name in item.labels})
        seen: dict[str, set[str]] = {name: set() for name in names}
        for item in items:
            for name, values in item.labels.items():
                seen[name].update(v for v in values if v is not None)
        return cls(items[0].grid, {name: tuple(sorted(seen[name])) for name in names})

    @cached_property
    def _index(self) -> dict[str, dict[str, int]]:
        return {name: {c: i for i, c in enumerate(classes)} for name, classes in self.classes.items()}

    def encode(self, item: RegionItem) -> torch.Tensor:
        """(attributes, grid * grid) class indices of one item; UNLABELLED where it has no label."""
        unlabelled = (None,) * self.grid**2
        rows = [
            [UNLABELLED if v is None else index[v] for v in item.labels.get(name, unlabelled)]
            for name, index in self._index.items()
        ]
        return torch.tensor(rows, dtype=torch.long)


class RegionDataset(Dataset):
    """Region-labelled images -> {"pixel_values" (3, H, W), "region_labels" (attributes, grid * grid)}."""

    def __init__(self, items: Sequence[RegionItem], image_root: str | Path, image_processor: ImageProcessor) -> None:
        self.vocab = RegionVocab.of(items)
        self.items = list(items)
        self.image_root = Path(image_root)
        self.image_processor = image_processor
        self._labels = [self.vocab.encode(item) for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.items[index]
        try:
            pixel_values = self.image_processor.preprocess_one(self.image_root / item.image)
        except ImageError as err:
            raise DataError(str(err), item.source, item.line) from None
        return {"pixel_values": pixel_values, "region_labels": self._labels[index]}


def collate_regions(batch: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """pixel_values (B, 3, H, W) and region_labels (B, attributes, grid * grid)."""
    if not batch:
        raise DataError("cannot collate an empty batch")
    return {key: torch.stack([sample[key] for sample in batch]) for key in ("pixel_values", "region_labels")}
