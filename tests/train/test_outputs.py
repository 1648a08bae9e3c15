"""What a run writes as models: each stage's model stores only what the stage trained (a LoRA stage: its adapter) on
a reference to its base, and loads to bitwise the weights a whole copy holds; the final model is whole, merged or as
base + adapter by `lora.merge`, and a bf16 base's untouched tensors stay bf16 in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_run import align_stage, instruct_stage, recipe

import vlbridge
import vlbridge.train.pipeline as pipeline
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.train import recipe_from_dict, train


def _stored(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not iterable)


def _equal(a: Path, b: Path) -> None:
    want, got = vlbridge.load(a)[0].state_dict(), vlbridge.load(b)[0].state_dict()
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


@pytest.mark.parametrize("merge", [True, False])
def test_stage_models_store_what_they_trained_and_the_final_model_is_whole(
    tiny_model, tiny_tokenizer_dir, tiny_data, tmp_path, monkeypatch, merge: bool
) -> None:
    base = tmp_path / "base"
    tiny_model.to(torch.bfloat16).save_pretrained(base)
    Tokenizer.from_dir(tiny_tokenizer_dir).save(base)
    instruct = instruct_stage(lora=True, steps=2, max_length=200)
    instruct["lora"]["merge"] = merge
    run = recipe(tmp_path / "run", tiny_data, None, [align_stage(steps=2), instruct], init_from=str(base))
    del run["model"]
    real_save = pipeline.save_stage_model

    def also_whole(recipe, index, model):  # what every stage wrote before: a whole copy, to compare with
        model.save_pretrained(tmp_path / "whole" / recipe.stages[index].name)
        return real_save(recipe, index, model)

    monkeypatch.setattr(pipeline, "save_stage_model", also_whole)
    train(recipe_from_dict(run))

    for name in ("align", "instruct"):  # the connector trained; the LoRA merge is recomputed, not stored
        folder = tmp_path / "run" / name / "model"
        assert _stored(folder) and all(key.startswith("connector.") for key in _stored(folder)), name
        _equal(tmp_path / "whole" / name, folder)
    assert (tmp_path / "run" / "instruct" / "model" / "adapter_model.safetensors").is_file() == merge
    final = _stored(tmp_path / "run")
    assert {t.dtype for k, t in final.items() if k.startswith("vision_encoder.")} == {torch.bfloat16}
    assert {t.dtype for k, t in final.items() if k.startswith("connector.")} == {torch.float32}
    lm = {t.dtype for k, t in final.items() if k.endswith("q_proj.weight")}
    assert torch.float32 in lm if merge else lm == {torch.bfloat16}  # merged LoRA weights, or the base's
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file() != merge
    _equal(tmp_path / "whole" / "instruct", tmp_path / "run")


def test_a_run_directory_moved_whole_still_loads_its_stage_models(tiny_tokenizer_dir, tiny_data, tmp_path) -> None:
    run = recipe(tmp_path / "run", tiny_data, tiny_tokenizer_dir, [align_stage(steps=1), instruct_stage(steps=1)])
    train(recipe_from_dict(run))
    before = {name: vlbridge.load(tmp_path / "run" / name / "model")[0].state_dict() for name in ("align", "instruct")}
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = tmp_path / "moved" / "instruct" / "model"
    assert json.loads((moved / "config.json").read_text())["base"][0]["relative"] == "../../align/model"
    for name, state in before.items():
        loaded = vlbridge.load(tmp_path / "moved" / name / "model")[0].state_dict()
        assert loaded.keys() == state.keys()
        assert all(loaded[k].dtype == t.dtype and torch.equal(loaded[k], t) for k, t in state.items()), name
