"""Checkpoints hold what changed: a stage's checkpoints store its trained parameters and name the frozen base (its
source and SHA-256) instead of copying it; a changed base is a CheckpointError naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_run import align_stage, instruct_stage, recipe

import vlbridge
import vlbridge.train.trainer as trainer_module
from vlbridge.errors import CheckpointError
from vlbridge.train import recipe_from_dict, train
from vlbridge.train.checkpoint import TrainState, checkpoints, frozen_base, load_checkpoint, save_checkpoint
from vlbridge.train.schedule import build_scheduler


class _Killed(Exception):
    """Stands in for a kill right after the first checkpoint of a stage was written."""


def _half_frozen(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    module[0].requires_grad_(False)
    return module


def _opt(module: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=0.1)
    return opt, build_scheduler(opt, total=10, warmup=2)


def test_frozen_parameters_are_named_by_their_base_not_stored(tmp_path: Path) -> None:
    module = _half_frozen(0)
    base = frozen_base(module, "base-folder")
    assert base.keys == {"0.weight", "0.bias"}
    opt, sched = _opt(module)
    module(torch.randn(5, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, module, opt, sched, TrainState(stage="s", step=1), base=base)
    payload = torch.load(path, weights_only=True)
    assert set(payload["module"]) == {"1.weight", "1.bias"}
    assert payload["base"] == {"source": "base-folder", "digest": base.digest}

    again = _half_frozen(0)  # the same base, rebuilt: the trained layer comes from the checkpoint
    load_checkpoint(path, again, *_opt(again), base=frozen_base(again, "base-folder"))
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), module.state_dict().values(), strict=True)
    )

    changed = _half_frozen(1)
    with pytest.raises(CheckpointError, match=r"base-folder \(SHA-256 [0-9a-f]{12}\).*changed or replaced"):
        load_checkpoint(path, changed, *_opt(changed), base=frozen_base(changed, "base-folder"))
    with pytest.raises(CheckpointError, match="no frozen base"):
        load_checkpoint(path, again, *_opt(again))


def test_the_hash_sees_every_frozen_byte_and_dtype() -> None:
    module = _half_frozen(0)
    digest = frozen_base(module, "x").digest
    with torch.no_grad():
        module[0].bias[1] = torch.nextafter(module[0].bias[1], torch.tensor(1.0))
    changed = frozen_base(module, "x").digest
    assert changed != digest
    assert frozen_base(module.to(torch.bfloat16), "x").digest not in (digest, changed)


def _killed_at_first_checkpoint(run: dict, stage_name: str, monkeypatch) -> dict:
    """Run `run` until its stage `stage_name` writes its first checkpoint; return that checkpoint's payload."""
    real_save = trainer_module.save_checkpoint

    def save_then_die(stage_dir, module, optimizer, scheduler, state, keep, base):
        path = real_save(stage_dir, module, optimizer, scheduler, state, keep, base=base)
        if state.stage == stage_name:
            raise _Killed
        return path

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train(recipe_from_dict(run))
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    (ckpt,) = checkpoints(Path(run["run_dir"]) / stage_name)
    return torch.load(ckpt, weights_only=True)


def test_a_connector_stage_checkpoint_holds_no_lm_or_vision_tensor(
    tiny_data, tiny_tokenizer_dir, tmp_path, monkeypatch
) -> None:
    run = recipe(tmp_path / "run", tiny_data, tiny_tokenizer_dir, [align_stage(steps=4, save_every=2)])
    payload = _killed_at_first_checkpoint(run, "align", monkeypatch)
    assert payload["module"] and all(k.startswith("model.connector.") for k in payload["module"])
    assert payload["base"]["source"] == "the recipe's seeded initialisation"


def test_a_lora_stage_checkpoint_holds_the_adapters_and_names_the_previous_stage(
    tiny_data, tiny_tokenizer_dir, tmp_path, monkeypatch
) -> None:
    stages = [align_stage(steps=2), instruct_stage(lora=True, steps=4, save_every=2, max_length=200)]
    run = recipe(tmp_path / "run", tiny_data, tiny_tokenizer_dir, stages)
    payload = _killed_at_first_checkpoint(run, "instruct", monkeypatch)
    lm = [k for k in payload["module"] if k.startswith("model.language_model.")]
    assert lm and all("lora_" in k for k in lm)
    assert not any(k.startswith("model.vision_encoder.") for k in payload["module"])
    assert payload["base"]["source"] == str(tmp_path / "run" / "align" / "model")


def test_a_resume_on_a_changed_base_is_a_checkpoint_error_naming_it(
    tiny_data, tiny_tokenizer_dir, tmp_path, monkeypatch
) -> None:
    stages = [align_stage(steps=2), instruct_stage(steps=4, save_every=2, max_length=200)]
    run = recipe(tmp_path / "run", tiny_data, tiny_tokenizer_dir, stages)
    _killed_at_first_checkpoint(run, "instruct", monkeypatch)
    base = tmp_path / "run" / "align" / "model"
    model = vlbridge.load(base)[0]
    with torch.no_grad():  # the vision encoder: frozen in both stages
        next(model.vision_encoder.parameters()).add_(1.0)
    model.save_pretrained(base)
    with pytest.raises(CheckpointError, match=f"{base}.*changed or replaced"):
        train(recipe_from_dict(run), resume=True)
