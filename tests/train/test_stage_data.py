"""A stage's data file is read as the recipe's data section says: image paths inside data.root unless
`data.allow_absolute_images`, and a file without records named instead of a stage that fails without saying why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlbridge.config import from_dict
from vlbridge.errors import DataError
from vlbridge.train.pipeline import build_dataset
from vlbridge.train.recipe import DataRecipe, StageRecipe


def _stage(data: str, objective: str = "causal_lm") -> StageRecipe:
    parts = {"connector": "full"}
    return from_dict(StageRecipe, {"name": "s", "steps": 1, "objective": objective, "data": data, "parts": parts})


def _absolute_record(tiny_data: Path, root: Path) -> Path:
    """A copy of the first instruction record, its image named by absolute path, in a data root of its own."""
    record = json.loads((tiny_data / "instruct.json").read_text())[0]
    record["image"] = str((tiny_data / record["image"]).resolve())
    path = root / "abs.json"
    path.write_text(json.dumps([record]))
    return path


@pytest.mark.parametrize("objective", ["causal_lm", "contrastive"])
def test_absolute_image_paths_need_the_recipe_opt_in(
    tiny_data: Path, tiny_model, tiny_tokenizer, tmp_path: Path, objective: str
) -> None:
    path = _absolute_record(tiny_data, tmp_path)
    stage = _stage(path.name, objective)
    with pytest.raises(DataError, match=r"record 'train_000000': image path .* is absolute") as err:
        build_dataset(stage, tmp_path, tiny_model, tiny_tokenizer, DataRecipe())
    assert (err.value.path, err.value.line) == (path, 1)
    assert "data.allow_absolute_images: true" in str(err.value)
    opted_in = from_dict(DataRecipe, {"allow_absolute_images": True})
    dataset, _, _ = build_dataset(stage, tmp_path, tiny_model, tiny_tokenizer, opted_in)
    assert dataset[0]["pixel_values"].shape[-2:] == (48, 48)


def test_a_stage_file_without_records_is_named(tiny_model, tiny_tokenizer, tmp_path: Path) -> None:
    (tmp_path / "captions.json").write_text("[]\n")
    with pytest.raises(DataError, match=r"captions\.json: holds no records"):
        build_dataset(_stage("captions.json"), tmp_path, tiny_model, tiny_tokenizer, DataRecipe())
