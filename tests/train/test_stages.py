"""Stage plans: resolution and checks, logged freezing, and frozen parts bitwise unchanged by a real stage."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tiny_run import align_stage, instruct_stage

from vlbridge.config import from_dict
from vlbridge.errors import ConfigError
from vlbridge.train.pipeline import build_dataset
from vlbridge.train.recipe import DataRecipe, StageRecipe
from vlbridge.train.stages import apply_plan, plan_for
from vlbridge.train.trainer import StageTrainer


def _stage(**kw) -> StageRecipe:
    return from_dict(StageRecipe, {"name": "s", "steps": 1, **kw})


def _parts(model) -> dict:
    parts = ("vision_encoder", "connector", "language_model")
    return {name: getattr(model, name) for name in parts}


def test_plan_defaults_unnamed_parts_to_frozen_and_objective_parts_to_peak_lr() -> None:
    plan = plan_for(_stage(parts={"connector": "full"}, lr={"connector": 1e-3}))
    assert plan.parts == {"vision_encoder": "frozen", "connector": "full", "language_model": "frozen"}
    assert plan.trained == ["connector"] and plan.lr == {"connector": 1e-3}
    stage = _stage(parts={"vision_encoder": "full"}, lr={"vision_encoder": 2e-3})
    plan = plan_for(stage, ["contrastive_head"])
    assert plan.parts["contrastive_head"] == "full" and plan.lr["contrastive_head"] == 2e-3


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"parts": {"connector": "full"}}, "no learning rate for trained part(s) connector"),
        ({"parts": {"connector": "half"}, "lr": {"connector": 1.0}}, "not understood"),
        ({"parts": {"conector": "full"}}, "unknown part(s) conector"),
        ({"parts": {}, "lr": {}}, "every part is frozen"),
        ({"parts": {"connector": "full"}, "lr": {"connector": 1.0, "language_model": 1.0}}, "is frozen but has a"),
        ({"parts": {"language_model": "lora"}, "lr": {"language_model": 1.0}}, "has no `lora:` settings"),
        ({"parts": {"connector": "lora"}, "lr": {"connector": 1.0}, "lora": {}}, "language_model only"),
        ({"parts": {"connector": "full"}, "lr": {"connector": 1.0}, "lora": {}}, "no part is `lora`"),
        (
            {"parts": {"connector": "full"}, "lr": {"connector": -1.0}},
            "lr.connector is -1.0; set it to a number in (0, 1]",
        ),
    ],
)
def test_plan_errors(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        plan_for(_stage(**kw))
    assert message in str(err.value)


def test_apply_plan_logs_what_it_froze_and_groups_trained_params(tiny_model, caplog) -> None:
    plan = plan_for(_stage(parts={"connector": "full"}, lr={"connector": 1e-3}))
    with caplog.at_level(logging.INFO, logger="vlbridge.train.stages"):
        groups = apply_plan(plan, _parts(tiny_model), weight_decay=0.1)
    text = caplog.text
    assert "froze vision_encoder" in text and "language_model" in text.split("froze", 1)[1]
    assert "training connector [full]" in text
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in tiny_model.connector.parameters()}
    assert all(not p.requires_grad for p in tiny_model.language_model.parameters())
    assert all(not p.requires_grad for p in tiny_model.vision_encoder.parameters())
    for group in groups:  # decay on matrices only
        assert group["weight_decay"] == (0.1 if all(p.ndim >= 2 for p in group["params"]) else 0.0)
        assert group["lr"] == 1e-3 and group["name"] == "connector"


def test_apply_plan_refuses_to_train_a_missing_part(tiny_model) -> None:
    plan = plan_for(_stage(parts={"vision_encoder": "full"}, lr={"vision_encoder": 1e-3}))
    with pytest.raises(ConfigError, match="model has none"):
        apply_plan(plan, {**_parts(tiny_model), "vision_encoder": None})


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _run(stage_dict: dict, model, tokenizer, data: Path, out: Path) -> None:
    stage = from_dict(StageRecipe, stage_dict)
    dataset, collate_fn, _ = build_dataset(stage, data, model, tokenizer, DataRecipe())
    StageTrainer(stage, model, dataset, collate_fn, out, seed=0).run()


def _assert_same(before: dict, module: torch.nn.Module) -> None:
    after = module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen part changed"


def _assert_changed(before: dict, module: torch.nn.Module) -> None:
    after = module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "a trained part did not change"


def test_align_stage_changes_only_the_connector(tiny_model, tiny_tokenizer, tiny_data, tmp_path) -> None:
    vision, connector, lm = (_snapshot(m) for m in _parts(tiny_model).values())
    _run(align_stage(steps=3, weight_decay=0.1), tiny_model, tiny_tokenizer, tiny_data, tmp_path)
    _assert_same(vision, tiny_model.vision_encoder)
    _assert_same(lm, tiny_model.language_model)
    _assert_changed(connector, tiny_model.connector)


def test_lora_stage_keeps_vision_and_base_lm_bitwise(tiny_model, tiny_tokenizer, tiny_data, tmp_path) -> None:
    vision, connector, lm = (_snapshot(m) for m in _parts(tiny_model).values())
    stage = instruct_stage(lora=True, steps=3, max_length=200)
    stage["lora"]["merge"] = False  # keep the base: the adapter is saved beside it
    _run(stage, tiny_model, tiny_tokenizer, tiny_data, tmp_path)
    _assert_same(vision, tiny_model.vision_encoder)
    _assert_same(lm, tiny_model.language_model)  # adapters unloaded, base weights untouched, keys as before
    _assert_changed(connector, tiny_model.connector)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_full_stage_with_merge_changes_the_lm(tiny_model, tiny_tokenizer, tiny_data, tmp_path) -> None:
    vision, lm = _snapshot(tiny_model.vision_encoder), _snapshot(tiny_model.language_model)
    _run(instruct_stage(lora=True, steps=3, max_length=200), tiny_model, tiny_tokenizer, tiny_data, tmp_path)
    _assert_same(vision, tiny_model.vision_encoder)
    _assert_changed(lm, tiny_model.language_model)  # the merged adapters moved the weights
    assert tiny_model.language_model.state_dict().keys() == lm.keys()  # ... under the original keys
