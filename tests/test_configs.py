"""The shipped recipes: configs/default.yaml and every configs/connectors/<name>.yaml load, validate and build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vlbridge
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONNECTOR_CONFIGS = sorted((CONFIGS / "connectors").glob("*.yaml"))


def test_every_connector_has_a_config() -> None:
    names = {path.stem for path in CONNECTOR_CONFIGS} - {"common"}
    assert names == set(vlbridge.connectors.available())


@pytest.mark.parametrize("path", [CONFIGS / "default.yaml", *CONNECTOR_CONFIGS], ids=lambda p: p.stem)
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
