"""The run around the stages: the model fitted to the tokenizer, the saved recipe and tokenizer, the stage and
final outputs, and progressive upgrade (a text-only checkpoint gains vision; its LM stays bitwise as it was)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_run import TINY_MODEL, align_stage, instruct_stage, recipe, stage

import vlbridge
from vlbridge.config import ModelConfig, from_dict
from vlbridge.errors import CheckpointError, ConfigError, DataError
from vlbridge.train import recipe_from_dict, train
from vlbridge.train.pipeline import fit_config


def test_fit_config_takes_vocabulary_and_special_ids_from_the_tokenizer(tiny_tokenizer) -> None:
    config = fit_config(from_dict(ModelConfig, TINY_MODEL), tiny_tokenizer, "chatml")
    lm = config.language_model
    assert lm.vocab_size == tiny_tokenizer.vocab_size == 320
    assert (lm.bos_token_id, lm.eos_token_id, lm.pad_token_id) == (
        tiny_tokenizer.bos_token_id,
        tiny_tokenizer.eos_token_id,
        tiny_tokenizer.pad_token_id,
    )
    assert config.image_token_id == tiny_tokenizer.token_to_id("<image>") and config.template == "chatml"


def _text_stage(**kw) -> dict:
    return stage("text", "text_lm", "instruct.json", {"language_model": "full"}, {"language_model": 1e-2}, **kw)


@pytest.mark.parametrize("add_bos", [True, False])
def test_run_renders_data_trains_a_tokenizer_and_writes_every_output(tmp_path: Path, add_bos: bool) -> None:
    spec = recipe(tmp_path / "run", tmp_path / "data", None, [_text_stage(steps=2)])
    spec["data"]["synth"] = {"n": 12, "seed": 0, "image_size": 48, "focus": ["relation"], "spatial": 1.0, "drills": 2}
    spec["data"]["synth"] |= {"test_fraction": 0.2, "val_fraction": 0.0}
    spec["tokenizer"]["add_bos"] = add_bos
    run = train(recipe_from_dict(spec))
    assert (tmp_path / "data" / "captions.json").is_file()  # rendered because the root was empty
    instruct = json.loads((tmp_path / "data" / "instruct.json").read_text())
    questions = [t["value"] for r in instruct for t in r["conversations"]]
    assert len(json.loads((tmp_path / "data" / "drills.json").read_text())) == 2
    assert (
        sum("Is the object in the " in q for q in questions) >= 5
    )  # the recipe's focus, spatial and drills reach the writer
    held_out = [len((tmp_path / "data" / f"{split}.jsonl").read_text().splitlines()) for split in ("test", "val")]
    assert held_out == [2, 0]  # and so do its held-out fractions (defaults: 1 and 1 of 12)
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert yaml.safe_load((run / "recipe.yaml").read_text())["stages"][0]["name"] == "text"
    assert {"done.json", "metrics.jsonl", "loss.png", "model"} <= {p.name for p in (run / "text").iterdir()}
    model, processor = vlbridge.load(run)
    assert processor.tokenizer.vocab_size == 320 and model.has_vision
    bos = processor.tokenizer.bos_token_id
    assert (processor.tokenizer.encode("a red star")[0] == bos) is add_bos
    stage_model = load_file(run / "text" / "model" / "model.safetensors")
    final = load_file(run / "model.safetensors")
    assert all(torch.equal(stage_model[k], final[k]) for k in final)


def test_progressive_upgrade_then_connector_swap_keep_the_trained_parts_bitwise(
    tiny_data, tiny_tokenizer_dir, tmp_path
) -> None:
    text_only = {**TINY_MODEL, "vision": None}
    base = recipe(tmp_path / "llm", tiny_data, tiny_tokenizer_dir, [_text_stage(steps=2)], model=text_only)
    llm_dir = train(recipe_from_dict(base))
    llm, _ = vlbridge.load(llm_dir)
    assert not llm.has_vision
    grown = recipe(tmp_path / "vlm", tiny_data, None, [align_stage(steps=2)], init_from=str(llm_dir))
    del grown["tokenizer"]  # the checkpoint's own tokenizer is used
    vlm_dir = train(recipe_from_dict(grown))
    vlm, _ = vlbridge.load(vlm_dir)
    assert vlm.has_vision
    want, got = llm.language_model.state_dict(), vlm.language_model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want), "the frozen LLM changed"
    other_vision = {**TINY_MODEL, "vision": {**TINY_MODEL["vision"], "num_hidden_layers": 1}}
    again = recipe(tmp_path / "bad", tiny_data, None, [align_stage(steps=1)], init_from=str(vlm_dir))
    with pytest.raises(ConfigError, match="already describes a whole model"):
        train(recipe_from_dict({**again, "model": other_vision}))

    swapped = recipe(tmp_path / "pool", tiny_data, None, [align_stage(steps=1)], init_from=str(vlm_dir))
    swapped["model"] = {**TINY_MODEL, "connector": {"name": "pool", "options": {"kernel": 2}}}
    del swapped["tokenizer"]
    pooled, _ = vlbridge.load(train(recipe_from_dict(swapped)))
    assert pooled.config.connector.name == "pool"
    for part in ("vision_encoder", "language_model"):  # frozen in align: carried over from vlm_dir bitwise
        want, got = getattr(vlm, part).state_dict(), getattr(pooled, part).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), part


def test_text_lm_reads_plain_text_files(tiny_tokenizer_dir, tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.txt").write_text("a red circle\n\nthe blue square is left of it\n" * 20)
    text = stage("text", "text_lm", "corpus.txt", {"language_model": "full"}, {"language_model": 1e-2})
    spec = recipe(tmp_path / "run", tmp_path / "data", tiny_tokenizer_dir, [{**text, "data_format": "text"}])
    run = train(recipe_from_dict({**spec, "model": {**TINY_MODEL, "vision": None}}))
    model, _ = vlbridge.load(run)
    assert not model.has_vision and (run / "text" / "done.json").is_file()


def test_regions_stage_trains_the_vision_encoder_alone_and_leaves_its_heads_behind(
    tiny_data, tiny_tokenizer_dir, tmp_path
) -> None:
    start = train(recipe_from_dict(recipe(tmp_path / "start", tiny_data, tiny_tokenizer_dir, [align_stage(steps=1)])))
    vision = stage("vision", "regions", "regions.jsonl", {"vision_encoder": "full"}, {"vision_encoder": 1e-2})
    spec = recipe(tmp_path / "run", tiny_data, None, [{**vision, "data_format": "regions"}], init_from=str(start))
    del spec["model"], spec["tokenizer"]
    run = train(recipe_from_dict(spec))
    before, after = load_file(start / "model.safetensors"), load_file(run / "model.safetensors")
    assert before.keys() == after.keys()  # the region heads went with the stage
    frozen = [k for k in before if not k.startswith("vision_encoder.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("vision_encoder."))
    data = json.loads((run / "vision" / "done.json").read_text())["data"]
    rows = [json.loads(line) for line in (tiny_data / "scenes.jsonl").read_text().splitlines()]
    words = len({r["scene"]["text"] for r in rows if r["split"] == "train"})  # 24 images do not show all 12
    assert data["grid"] == 3 and data["classes"] == {
        "colour": 8,
        "kind": 3,
        "position": 9,
        "shape": 6,
        "size": 2,
        "word": words,
    }


def _model(**sections) -> dict:
    return {**TINY_MODEL, **{name: {**TINY_MODEL.get(name, {}), **value} for name, value in sections.items()}}


def _two_stages(**second) -> list[dict]:
    return [align_stage(steps=1), {**instruct_stage(steps=1), **second}]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"model": _model(connector={"name": "mlpp"})}, ConfigError, "unknown connector 'mlpp'; known connectors:"),
        (
            {"model": _model(connector={"name": "pool", "options": {"kernal": 2}})},
            ConfigError,
            "connector 'pool' has no option(s) kernal",
        ),
        ({"model": _model(connector={"name": "pool", "options": {"kernel": 0}})}, ConfigError, "kernel must be >= 1"),
        ({"model": _model(language_model={"hidden_act": "gelux"})}, ConfigError, "unknown activation 'gelux'"),
        ({"model": _model(language_model={"num_key_value_heads": 3})}, ConfigError, "must be a multiple of"),
        ({"model": {**TINY_MODEL, "template": "chatmll"}}, ConfigError, "model.template is 'chatmll'"),
        ({"stages": _two_stages(template="chatmll")}, ConfigError, "stages[1] (instruct).template is 'chatmll'"),
        ({"tokenizer": {"template": "vicuna"}}, ConfigError, "tokenizer.template is 'vicuna'"),
        ({"tokenizer": {"vocab_size": 100}}, ConfigError, "vocab_size 100 is too small"),
        ({"stages": _two_stages(parts={"language_model": "lora"})}, ConfigError, "stage 'instruct': language_model"),
        ({"stages": _two_stages(lr={"conector": 1e-3})}, ConfigError, "unknown part(s) conector"),
        ({"stages": _two_stages(max_length=1000)}, ConfigError, "max_length 1000 exceeds the model's context window"),
        ({"stages": _two_stages(data="instructions.json")}, ConfigError, "instructions.json does not exist"),
        ({"data": {"root": "{tmp}/nowhere"}}, ConfigError, "nowhere does not exist"),
        ({"tokenizer": {"path": "{tmp}/no_tokenizer"}}, ConfigError, "tokenizer.path"),
        ({"init_from": "{tmp}/no_checkpoint"}, CheckpointError, "no_checkpoint does not exist"),
        ({"device": "cuda:7"}, ConfigError, "device 'cuda:7' is not on this machine"),
    ],
)
def test_a_recipe_error_is_reported_before_any_work_and_before_any_file_is_written(
    tiny_data, tmp_path, change: dict, error: type, message: str
) -> None:
    """The tokenizer is trained by the run, so before, most of these were found only after that, with the run folder
    (recipe.yaml, tokenizer/) already written and blocking the rerun."""
    spec = recipe(tmp_path / "run", tiny_data, None, _two_stages())
    spec.update(json.loads(json.dumps(change).replace("{tmp}", str(tmp_path))))
    with pytest.raises(error) as err:
        train(recipe_from_dict(spec))
    assert message in str(err.value)
    assert sorted(tmp_path.iterdir()) == []  # no run folder, nothing rendered or written


def test_a_recipe_error_in_the_synthetic_data_it_would_render_is_reported_before_rendering(tmp_path) -> None:
    spec = recipe(tmp_path / "run", tmp_path / "data", None, _two_stages(data="drills.json"))
    spec["data"]["synth"] = {"n": 12, "image_size": 48}  # renders no drills.json without `drills`
    with pytest.raises(ConfigError, match=r"drills\.json, which data\.synth does not render"):
        train(recipe_from_dict(spec))
    assert sorted(tmp_path.iterdir()) == []


def test_a_run_dir_that_is_a_file_is_refused(tiny_data, tiny_tokenizer_dir, tmp_path) -> None:
    (tmp_path / "taken").write_text("notes")
    for run_dir in (tmp_path / "taken", tmp_path / "taken" / "run"):
        spec = recipe(run_dir, tiny_data, tiny_tokenizer_dir, [align_stage(steps=1)])
        with pytest.raises(ConfigError, match=f"run_dir {run_dir}: {tmp_path / 'taken'} is a file"):
            train(recipe_from_dict(spec))
    assert (tmp_path / "taken").read_text() == "notes"


def test_a_failed_run_leaves_nothing_that_blocks_the_same_command_once_fixed(tiny_data, tmp_path) -> None:
    data = shutil.copytree(tiny_data, tmp_path / "data")
    images = {path: path.read_bytes() for path in (data / "images").glob("train_*.png")}
    for path in images:
        path.write_bytes(b"not a png")
    spec = recipe(tmp_path / "run", data, None, [align_stage(steps=1)])
    # found by the stage, after the tokenizer
    with pytest.raises(DataError, match="is not an image in a supported format"):
        train(recipe_from_dict(spec))
    assert (tmp_path / "run" / "recipe.yaml").is_file() and (tmp_path / "run" / "tokenizer").is_dir()
    for path, raw in images.items():
        path.write_bytes(raw)
    spec["tokenizer"]["vocab_size"] = 300  # and the rerun trains the tokenizer its recipe asks for
    run = train(recipe_from_dict(spec))
    model, processor = vlbridge.load(run)
    assert processor.tokenizer.vocab_size == model.config.language_model.vocab_size == 300
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):  # a finished one is kept
        train(recipe_from_dict(spec))
