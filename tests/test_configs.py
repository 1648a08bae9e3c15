"""The shipped recipes: configs/default.yaml, configs/quick.yaml and every configs/connectors/<name>.yaml load, validate
and build; the quick recipe is the default's in small and trains end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlbridge
from vlbridge.cli.main import main
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONNECTOR_CONFIGS = sorted((CONFIGS / "connectors").glob("*.yaml"))


def test_every_connector_has_a_config() -> None:
    names = {path.stem for path in CONNECTOR_CONFIGS} - {"common"}
    assert names == set(vlbridge.connectors.available())


@pytest.mark.parametrize(
    "path",
    [CONFIGS / "default.yaml", CONFIGS / "default_fp32.yaml", CONFIGS / "quick.yaml", *CONNECTOR_CONFIGS],
    ids=lambda p: p.stem,
)
def test_recipe_builds_its_model(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.model is not None and recipe.stages
    if path.parent.name == "connectors" and path.stem != "common":
        assert recipe.model.connector.name == path.stem
        default = load_recipe(CONFIGS / "default.yaml").model
        assert default is not None  # variants share the default's parts, so a trained default can start them all
        assert (recipe.model.vision, recipe.model.language_model) == (default.vision, default.language_model)
    with torch.device("meta"):
        model = VisionLanguageModel(recipe.model)
    side = recipe.model.image_processor.crop_size
    assert model.tokens_per_image(side, side) >= 1  # the connector accepts the default's patch grid


def test_quick_recipe_is_the_defaults_in_small() -> None:
    default, quick = load_recipe(CONFIGS / "default.yaml"), load_recipe(CONFIGS / "quick.yaml")
    assert quick.model == default.model and quick.tokenizer == default.tokenizer
    assert [(s.name, s.objective, s.data, s.parts) for s in quick.stages] == [
        (s.name, s.objective, s.data, s.parts) for s in default.stages
    ]
    assert quick.data.synth is not None and quick.data.synth.n <= 500  # a few hundred scenes
    assert all(s.steps is not None and s.steps <= 50 for s in quick.stages)  # tens of steps
    assert quick.run_dir != default.run_dir and quick.data.root != default.data.root  # never the default's run


def test_fp32_recipe_is_the_default_with_fewer_align_and_instruct_steps() -> None:
    """configs/default_fp32.yaml trains the default's model on its data through its stages, in fp32, with only the
    align and instruct stages shortened (what makes it fit 30 minutes where bf16 is not native)."""
    default, fp32 = load_recipe(CONFIGS / "default.yaml"), load_recipe(CONFIGS / "default_fp32.yaml")
    assert (fp32.model, fp32.tokenizer, fp32.data.synth) == (default.model, default.tokenizer, default.data.synth)
    same = ("name", "objective", "data", "data_format", "template", "parts", "lr", "batch_size", "max_length")
    for ours, theirs in zip(fp32.stages, default.stages, strict=True):
        assert [getattr(ours, f) for f in same] == [getattr(theirs, f) for f in same]
        assert not ours.bf16 and theirs.bf16
        assert ours.steps < theirs.steps if ours.name in ("align", "instruct") else ours.steps == theirs.steps
    assert fp32.run_dir != default.run_dir and fp32.data.root != default.data.root


@pytest.mark.slow
def test_quick_recipe_trains_end_to_end_then_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The quick recipe as a user runs it, each stage cut to 2 steps (its own tens of steps are checked above and
    cost the suite ~45 s more on 2 cores)."""
    run, data = tmp_path / "run", tmp_path / "data"
    argv = ["train", "--config", str(CONFIGS / "quick.yaml"), "--run-dir", str(run), "--set", f"data.root={data}"]
    for i in range(len(load_recipe(CONFIGS / "quick.yaml").stages)):
        argv += ["--set", f"stages.{i}.steps=2"]
    assert main(argv) == 0
    for stage in load_recipe(CONFIGS / "quick.yaml").stages:
        assert (run / stage.name / "done.json").is_file() and (run / stage.name / "loss.png").is_file()
    capsys.readouterr()
    assert main(["eval", "--model", str(run), "--data", str(data), "--limit", "18", "--out", str(tmp_path / "e")]) == 0
    assert "overall" in capsys.readouterr().out


def test_smollm2_recipes_load_and_agree() -> None:
    from vlbridge.eval.retention import load_qa
    from vlbridge.model.io import default_model_dir
    from vlbridge.model.parts import read_tower_config

    recipes = {name: load_recipe(CONFIGS / "recipes" / f"{name}.yaml") for name in ("smollm2", "smollm2_quick")}
    full = load_recipe(CONFIGS / "recipes" / "smollm2_full.yaml")
    lora = recipes["smollm2"]
    for recipe in recipes.values():  # the LLM's tokenizer, the embedded default's tower, a new mlp connector
        assert recipe.init_from is not None and recipe.tokenizer.path is None
        assert CONFIGS.parent / recipe.vision_from == default_model_dir()
        assert recipe.model is not None and recipe.model.vision is None and recipe.model.connector.name == "mlp"
        assert [(s.name, s.parts) for s in recipe.stages] == [
            ("align", {"connector": "full"}),
            ("instruct", {"connector": "full", "language_model": "lora"}),
        ]
    assert all(s.steps is not None and s.steps <= 20 for s in recipes["smollm2_quick"].stages)
    assert full.init_from == f"{lora.run_dir}/align/model" and full.vision_from is None and full.model is None
    assert [(s.name, s.parts) for s in full.stages] == [("instruct", {"connector": "full", "language_model": "full"})]
    vision, processor = read_tower_config(default_model_dir())
    assert (vision.family, vision.image_size, processor.crop_size) == ("siglip", 96, 96)
    assert lora.data.synth is not None and lora.data.synth.image_size == vision.image_size
    data = CONFIGS.parent / "data" / "retention"
    assert (data / "held_out.txt").stat().st_size < 200_000 and len(load_qa(data / "text_qa.jsonl")) == 50
