"""Recipes: typed reading (unknown keys and wrong types name the key), cross-field checks, YAML + overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlbridge.data.synthetic import SynthOptions
from vlbridge.errors import ConfigError
from vlbridge.train.recipe import Recipe, load_recipe, recipe_from_dict, recipe_to_dict


def _base(**stage) -> dict:
    one = {"name": "align", "parts": {"connector": "full"}, "lr": {"connector": 1e-3}, "steps": 3, **stage}
    return {"model": {}, "stages": [one]}


def test_reads_nested_sections() -> None:
    data = _base(lora=None, betas=[0.9, 0.95])
    data["data"] = {"root": "d", "synth": {"n": 10}}
    recipe = recipe_from_dict(data)
    assert isinstance(recipe, Recipe)
    assert recipe.data.synth is not None and recipe.data.synth.n == 10 and recipe.data.synth.image_size == 96
    assert recipe.stages[0].parts == {"connector": "full"} and recipe.stages[0].lr == {"connector": 1e-3}
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**_base(), "sed": 1}, "sed"),
        (_base(stepz=3), "stages[0].stepz"),
        (_base(batch_size="big"), "stages[0].batch_size"),
        (_base(lr={"connector": "fast"}), "stages[0] (align).lr.connector must be a number"),
        (_base(parts={"connector": 1}), "parts.connector"),
        (_base(epochs=2), "exactly one of `steps` or `epochs`"),
        (
            _base(objective="dpo"),
            "stages[0] (align).objective is 'dpo'; choose one of causal_lm, text_lm, contrastive, regions, qformer",
        ),
        (_base(data_format="csv"), "data_format is 'csv'; choose one of llava, text, regions"),
        (
            _base(data_format="text"),
            "the causal_lm objective reads conversations (data_format: llava); data_format text is for text_lm",
        ),
        (_base(data_format="regions"), "causal_lm objective reads conversations (data_format: llava)"),
        (
            _base(objective="regions"),
            "the regions objective reads region labels (data_format: regions); "
            "data_format llava is for causal_lm, text_lm, contrastive, qformer",
        ),
        (_base(objective="qformer", data_format="text"), "the qformer objective reads image-caption pairs"),
        (_base(batch_size=0), "batch_size must be positive"),
        (_base(warmup_ratio=1.5), "warmup_ratio"),
        (_base(lora={"r": 4, "targets": ["qkv"]}), "lora.targets"),
        ({"stages": _base()["stages"]}, "`model` config or `init_from"),
        ({"model": {}, "stages": []}, "no stages"),
        ({"model": {}, "stages": _base()["stages"] * 2}, "unique"),
    ],
)
def test_bad_recipes_raise_config_error(data: dict, message: str | None) -> None:
    with pytest.raises(ConfigError) as err:
        recipe = recipe_from_dict(data)
        from vlbridge.train.stages import plan_for

        plan_for(recipe.stages[0])
    if message is not None:
        assert message in str(err.value)


def test_load_yaml_with_overrides_and_run_dir(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_base()))
    recipe = load_recipe(path, ["seed=7", "data.synth.n=5"], run_dir=str(tmp_path / "run"))
    assert recipe.seed == 7 and recipe.data.synth is not None and recipe.data.synth.n == 5
    assert recipe.run_dir == str(tmp_path / "run")
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("synth", "message"),
    [
        ({"colour": "red"}, "unknown config key(s) data.synth.colour"),
        ({"n": "many"}, "data.synth.n: expected int"),
        ({"turns": [2, "five"]}, "data.synth.turns[1]: expected int"),
        ({"spatial": 2}, "data.synth.spatial must be a probability in [0, 1]"),
        ({"n": 2, "test_fraction": 0.5, "val_fraction": 0.4}, "data.synth.n=2 leaves no training images"),
    ],
)
def test_the_synth_section_is_the_writers_options_checked_at_load(synth: dict, message: str) -> None:
    recipe = recipe_from_dict({**_base(), "data": {"synth": {"n": 10, "focus": ["relation"]}}})
    assert recipe.data.synth == SynthOptions(n=10, focus=["relation"])
    with pytest.raises(ConfigError) as err:
        recipe_from_dict({**_base(), "data": {"synth": synth}})
    assert message in str(err.value)
