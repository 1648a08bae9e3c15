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
        (_base(batch_size=0), "stages[0].batch_size is 0; set it to a number >= 1"),
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


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_base(lr={"connector": float("nan")}), "stages[0].lr.connector is nan; set it to a finite number"),
        (_base(lr={"connector": float("inf")}), "stages[0].lr.connector is inf; set it to a finite number"),
        (_base(lr={"connector": 0}), "stages[0].lr.connector is 0; set it to a number in (0, 1]"),
        (_base(lr={"connector": 3}), "stages[0].lr.connector is 3; set it to a number in (0, 1]"),
        (_base(weight_decay=float("inf")), "stages[0].weight_decay is inf; set it to a finite number"),
        (_base(weight_decay=-0.1), "stages[0].weight_decay is -0.1; set it to a number in [0, 1]"),
        (_base(warmup_ratio=float("nan")), "stages[0].warmup_ratio is nan; set it to a finite number"),
        (_base(betas=[0.9, float("nan")]), "stages[0].betas[1] is nan; set it to a finite number"),
        (_base(betas=[0.9, 1.0]), "stages[0].betas[1] is 1.0; set it to a number in [0, 1)"),
        (_base(clip_grad=float("inf")), "stages[0].clip_grad is inf; set it to a finite number"),
        (_base(clip_grad=0), "stages[0].clip_grad is 0.0; set it to a number > 0"),
        (_base(steps=0), "stages[0].steps is 0; set it to a number >= 1"),
        (_base(steps=None, epochs=-1), "stages[0].epochs is -1; set it to a number >= 1"),
        (_base(grad_accum=0), "stages[0].grad_accum is 0; set it to a number >= 1"),
        (_base(max_length=-5), "stages[0].max_length is -5; set it to a number >= 1"),
        (_base(save_every=-1), "stages[0].save_every is -1; set it to a number >= 0"),
        (_base(keep_checkpoints=0), "stages[0].keep_checkpoints is 0; set it to a number >= 1"),
        (_base(log_every=0), "stages[0].log_every is 0; set it to a number >= 1"),
        (_base(lora={"r": 0}), "stages[0].lora.r is 0; set it to a number >= 1"),
        (_base(lora={"alpha": 0}), "stages[0].lora.alpha is 0; set it to a number >= 1"),
        (_base(lora={"dropout": 1.0}), "stages[0].lora.dropout is 1.0; set it to a number in [0, 1)"),
        ({**_base(), "data": {"num_workers": -1}}, "data.num_workers is -1; set it to a number >= 0"),
        ({**_base(), "tokenizer": {"vocab_size": 0}}, "tokenizer.vocab_size is 0; set it to a number >= 1"),
        ({**_base(), "model": {"language_model": {"num_hidden_layers": 0}}}, "model.language_model.num_hidden_layers"),
    ],
)
def test_every_number_in_a_recipe_is_finite_and_in_its_range(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        recipe_from_dict(data)
    assert str(err.value).startswith(message)


def test_nan_and_inf_written_in_yaml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_base()))
    for value in (".nan", ".inf", "-.inf", ".NaN"):
        with pytest.raises(ConfigError, match=r"lr\.connector is (nan|-?inf); set it to a finite number"):
            load_recipe(path, [f"stages.0.lr.connector={value}"])
