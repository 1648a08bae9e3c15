"""Region-label files: read and validated line by line, class vocabularies from the data, batches of labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlbridge.config import ImageProcessorConfig
from vlbridge.data.regions import UNLABELLED, RegionDataset, RegionVocab, collate_regions, load_regions
from vlbridge.errors import DataError
from vlbridge.vision.processor import ImageProcessor


def _write(root: Path, rows: list) -> Path:
    (root / "images").mkdir(exist_ok=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(root / "images" / "a.png")
    path = root / "regions.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _row(**labels) -> dict:
    return {"image": "images/a.png", "grid": 2, "labels": labels}


def test_vocab_is_the_sorted_labels_per_attribute_and_encodes_unlabelled_regions(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            _row(shape=["star", None, "circle", None], kind=["object", "empty", "object", "text"]),
            _row(kind=["empty", "empty", "empty", "empty"]),  # no shape attribute at all: all unlabelled
        ],
    )
    items = load_regions(path).items
    vocab = RegionVocab.of(items)
    assert vocab.grid == 2
    assert vocab.classes == {"kind": ("empty", "object", "text"), "shape": ("circle", "star")}
    assert vocab.encode(items[0]).tolist() == [[1, 0, 1, 2], [1, UNLABELLED, 0, UNLABELLED]]
    assert vocab.encode(items[1]).tolist() == [[0, 0, 0, 0], [UNLABELLED] * 4]


def test_dataset_batches_images_with_their_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, [_row(kind=["object", "empty", "empty", "text"])] * 3)
    processor = ImageProcessor(ImageProcessorConfig(size=32, crop_size=32))
    dataset = RegionDataset(load_regions(path).items, tmp_path, processor)
    batch = collate_regions([dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert torch.equal(batch["region_labels"], torch.tensor([[[1, 0, 0, 2]]] * 3))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"grid": 2, "labels": {"kind": ["a"] * 4}}, "'image' must be an image path"),
        (_row(kind=["a"] * 3), "labels.kind must list 4 labels"),
        (_row(kind=["a", 3, None, "b"]), "neither a non-empty string nor null"),
        ({**_row(kind=["a"] * 4), "grid": 0}, "'grid' must be a positive integer"),
        ({**_row(kind=["a"] * 4), "labels": {}}, "'labels' must be a non-empty object"),
        ({**_row(kind=["a"] * 4), "image": "images/missing.png"}, "does not exist"),
        ({"image": "images/a.png", "grid": 1, "labels": {"kind": ["a"]}}, "differs from the first record's grid 2"),
    ],
)
def test_malformed_lines_name_file_line_and_problem(tmp_path: Path, bad, message: str) -> None:
    path = _write(tmp_path, [_row(kind=["a"] * 4), bad])
    with pytest.raises(DataError, match=message) as err:
        load_regions(path)
    assert err.value.path == path and err.value.line == 2


def test_skip_malformed_counts_what_it_left_out(tmp_path: Path) -> None:
    path = _write(tmp_path, [_row(kind=["a"] * 4), "{not json", _row(kind=["a"] * 3)])
    loaded = load_regions(path, skip_malformed=True)
    assert len(loaded.items) == 1 and [s.line for s in loaded.skipped] == [2, 3]
