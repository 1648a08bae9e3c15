"""A run from `init_from` loads the checkpoint as `vlbridge.load` does and initialises only the parts it adds."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_run import TINY_MODEL, align_stage, recipe

from init_ops import InitialisingOps
from vlbridge.config import ModelConfig, from_dict
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train import recipe_from_dict
from vlbridge.train.pipeline import fit_config, initial_model


def test_a_new_connector_is_the_only_part_initialised(tiny_data, tiny_tokenizer_dir, tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_dir(tiny_tokenizer_dir)
    torch.manual_seed(0)
    saved = VisionLanguageModel(
        fit_config(from_dict(ModelConfig, TINY_MODEL), tokenizer, "chatml"), tokenizer=tokenizer
    )
    saved.save_pretrained(tmp_path / "base")
    spec = recipe(tmp_path / "run", tiny_data, None, [align_stage()], init_from=str(tmp_path / "base"))
    spec["model"] = {**TINY_MODEL, "connector": {"name": "pool", "options": {"kernel": 2}}}
    del spec["tokenizer"]
    with InitialisingOps() as ops:
        model = initial_model(recipe_from_dict(spec), tokenizer)
    connector = sum(p.numel() for p in model.connector.parameters())
    assert 0 < ops.elements <= 2 * connector, "more was initialised than the new connector (each tensor at most twice)"
    for part in ("vision_encoder", "language_model"):
        want, got = getattr(saved, part).state_dict(), getattr(model, part).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), part
    assert not any(t.is_meta for t in model.state_dict().values())


def test_a_whole_model_gains_anyres_tiles_or_mini_hd_crops_with_its_trained_parts_kept(
    tiny_data, tiny_tokenizer_dir, tmp_path: Path
) -> None:
    tokenizer = Tokenizer.from_dir(tiny_tokenizer_dir)
    torch.manual_seed(0)
    saved = VisionLanguageModel(
        fit_config(from_dict(ModelConfig, TINY_MODEL), tokenizer, "chatml"), tokenizer=tokenizer
    )
    saved.save_pretrained(tmp_path / "base")
    anyres = {**TINY_MODEL["image_processor"], "image_grid_pinpoints": [[96, 96]]}
    hd = {"name": "mini", "options": {"grid": 1, "hd_grid": 2, "prefusion_layers": 1}}
    for model_section in ({**TINY_MODEL, "image_processor": anyres}, {**TINY_MODEL, "connector": hd}):
        spec = recipe(tmp_path / "run", tiny_data, None, [align_stage()], init_from=str(tmp_path / "base"))
        spec["model"] = model_section
        del spec["tokenizer"]
        model = initial_model(recipe_from_dict(spec), tokenizer)
        assert not any(t.is_meta for t in model.state_dict().values())
        tiled = model.config.image_processor.image_grid_pinpoints is not None
        assert ("image_newline" in model.state_dict()) is tiled  # AnyRes: a fresh row-end token
        for part in ("vision_encoder", "language_model"):
            want, got = getattr(saved, part).state_dict(), getattr(model, part).state_dict()
            assert all(torch.equal(want[k], got[k]) for k in want), part
    assert model.config.connector.options["hd_grid"] == 2
