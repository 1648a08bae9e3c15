"""Staged training (SPEC section 4): recipes as data, per-part plans, objectives, LoRA, checkpoints and resume.

from vlbridge.train import load_recipe, train
run_dir = train(load_recipe("configs/default.yaml"), resume=False)   # then vlbridge.load(run_dir)
"""

from vlbridge.train.pipeline import train
from vlbridge.train.recipe import Recipe, StageRecipe, load_recipe, recipe_from_dict

__all__ = ["Recipe", "StageRecipe", "load_recipe", "recipe_from_dict", "train"]
