"""The objective registry is the one source of truth: recipe validation, dataset building and objective building all
go through it, so an objective registered here (and nowhere else) trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_run import TINY_MODEL, recipe, stage

from vlbridge.errors import ConfigError
from vlbridge.train import recipe_from_dict, train
from vlbridge.train.objectives import (
    OBJECTIVES,
    ObjectiveEntry,
    TextLMObjective,
    build_objective,
    data_formats,
    objectives_reading,
)
from vlbridge.train.stage_data import CONVERSATIONS, PAIRS, REGIONS, TEXT, DataKind


def test_each_objective_is_registered_with_the_data_it_reads() -> None:
    kinds = {name: OBJECTIVES.get(name).data for name in OBJECTIVES.names()}
    assert kinds == {
        "causal_lm": CONVERSATIONS,
        "text_lm": TEXT,
        "contrastive": PAIRS,
        "regions": REGIONS,
        "qformer": PAIRS,
        "distill": CONVERSATIONS,
    }
    assert data_formats() == ["llava", "text", "regions"]
    assert objectives_reading("text") == ["text_lm"] and objectives_reading("regions") == ["regions"]


def test_unknown_objective_lists_the_registered_ones(tiny_model) -> None:
    with pytest.raises(ConfigError, match="unknown objective 'dpo'; known objectives: causal_lm, contrastive, distill"):
        build_objective("dpo", tiny_model)


def test_an_objective_registered_only_in_the_registry_validates_builds_its_data_and_trains(
    tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: dict[str, object] = {}

    def probe_data(stage, root, processor, data):
        built["dataset"], collate_fn, stats = TEXT.build(stage, root, processor, data)
        return built["dataset"], collate_fn, {**stats, "kind": "probe"}

    def probe_objective(model, dataset, stage):
        built["objective_saw"] = dataset
        return TextLMObjective()

    entry = ObjectiveEntry(probe_objective, DataKind("probe text", ("text",), probe_data))
    monkeypatch.setitem(OBJECTIVES._items, "probe", entry)  # registered for this test only

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.txt").write_text("a red circle\nthe blue square is left of it\n" * 20)
    probe = stage("probe", "probe", "corpus.txt", {"language_model": "full"}, {"language_model": 1e-2}, steps=1)
    spec = recipe(tmp_path / "run", tmp_path / "data", tiny_tokenizer_dir, [{**probe, "data_format": "text"}])
    spec["model"] = {**TINY_MODEL, "vision": None}
    with pytest.raises(ConfigError, match=r"the probe objective reads probe text \(data_format: text\)"):
        recipe_from_dict({**spec, "stages": [probe]})  # data_format llava
    run = train(recipe_from_dict(spec))
    assert built["objective_saw"] is built["dataset"]
    assert json.loads((run / "probe" / "done.json").read_text())["data"]["kind"] == "probe"
