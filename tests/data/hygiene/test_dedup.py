"""Deduplication: planted exact copies and near duplicates (resized, re-encoded, slightly brightened) are removed,
distinct synthetic scenes are all kept, the same image file asked about twice is not a duplicate, identical
conversations are removed; the CLI writes the kept records and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from PIL import ImageEnhance

from vlbridge.cli.main import main
from vlbridge.data.files import ImageFolder
from vlbridge.data.hygiene.dedup import Match, dedup_records, match_images
from vlbridge.data.hygiene.output import write_records
from vlbridge.data.llava_json import Record, load_llava
from vlbridge.data.synthetic import SynthOptions, synthesize
from vlbridge.errors import ConfigError


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 distinct synthetic scenes (96 px) plus planted duplicates of the first three."""
    root = tmp_path_factory.mktemp("data")
    synthesize(root, SynthOptions(n=30, seed=0, image_size=96, test_fraction=0.0, val_fraction=0.0))
    images = root / "images"
    shutil.copy(images / "train_000000.png", images / "copy.png")
    with PIL.Image.open(images / "train_000001.png") as image:
        image.convert("RGB").resize((120, 120), PIL.Image.BICUBIC).save(images / "resized.jpg", quality=90)
    with PIL.Image.open(images / "train_000002.png") as image:
        ImageEnhance.Brightness(image.convert("RGB")).enhance(1.05).save(images / "brighter.png")
    return root


def _record(rid: str, image: str | None, answer: str = "a caption") -> Record:
    question = "<image>\nDescribe it." if image else "Say something."
    turns = ({"from": "human", "value": question}, {"from": "gpt", "value": answer})
    return Record(rid, (image,) if image else (), turns)


def test_planted_duplicates_are_found_and_distinct_scenes_kept(data) -> None:
    scenes = [f"images/{p.name}" for p in sorted((data / "images").glob("train_*.png"))]
    planted = ["images/copy.png", "images/resized.jpg", "images/brighter.png"]
    matches = match_images([*scenes, *planted], ImageFolder(data))
    assert set(matches) == set(planted)  # no two of the 30 scenes match
    assert matches["images/copy.png"] == Match("images/train_000000.png", 0, exact=True)
    assert matches["images/resized.jpg"].original == "images/train_000001.png"
    assert matches["images/resized.jpg"].distance <= 4 and not matches["images/resized.jpg"].exact
    assert matches["images/brighter.png"].original == "images/train_000002.png"
    strict = match_images([*scenes, *planted], ImageFolder(data), max_distance=0)
    assert "images/copy.png" in strict and len(strict) <= len(matches)
    with pytest.raises(ConfigError, match="unknown image hash"):
        match_images(scenes, ImageFolder(data), hash_name="md5")


def test_records_with_duplicate_images_and_identical_conversations_are_removed(data) -> None:
    records = [
        _record("a", "images/train_000000.png"),
        _record("b", "images/train_000000.png", "another question about the same file"),  # kept: same file
        _record("c", "images/copy.png"),  # exact copy of a's image
        _record("d", "images/train_000001.png"),
        _record("e", "images/resized.jpg", "different text"),  # near duplicate of d's image
        _record("f", "images/train_000001.png"),  # the same conversation about the same image as d
        _record("g", None),
        _record("h", None),  # the same text-only conversation as g
        _record("i", None, "something else"),
    ]
    kept, removed = dedup_records(records, ImageFolder(data))
    assert [r.id for r in kept] == ["a", "b", "d", "g", "i"]
    why = {r.id: r for r in removed}
    assert set(why) == {"c", "e", "f", "h"}
    assert why["c"].distance == 0 and "exact copy" in why["c"].reason
    assert why["e"].duplicate_of == "images/train_000001.png" and "near duplicate" in why["e"].reason
    assert why["f"].duplicate_of == "d" and why["h"].duplicate_of == "g"


def test_cli_dedup_writes_kept_records_and_report(data, tmp_path) -> None:
    records = [_record("a", "images/train_000003.png"), _record("b", "images/brighter.png")]
    records.append(_record("c", "images/train_000002.png"))
    source = data / "dup.json"
    write_records(source, records)
    out = tmp_path / "kept.json"
    assert main(["data", "dedup", str(source), "--out", str(out), "--images", str(data)]) == 0
    assert [r.id for r in load_llava(out, data).items] == ["a", "b"]  # b came first; c duplicates it
    (row,) = [json.loads(line) for line in (tmp_path / "kept.removed.jsonl").read_text().splitlines()]
    assert row["id"] == "c" and row["duplicate_of"] == "images/brighter.png" and row["distance"] <= 4
    assert np.isfinite(row["distance"])
