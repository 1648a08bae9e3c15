"""Checkpoints: RNG capture, atomic files and pruning, strict restore, and in-process resume equal to an
uninterrupted run. Tolerance: none; on CPU the resumed run's final weights equal the uninterrupted run's bitwise."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_run import instruct_stage, recipe, stage

import vlbridge.train.trainer as trainer_module
from killed import killed_mid_write
from vlbridge.errors import CheckpointError, ConfigError
from vlbridge.train import recipe_from_dict, train
from vlbridge.train.checkpoint import (
    TrainState,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vlbridge.train.schedule import build_scheduler


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_rng_state_round_trip() -> None:
    state = rng_state()
    first = _draws()
    set_rng_state(state)
    second = _draws()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


def _opt(module: torch.nn.Module):
    opt = torch.optim.AdamW(module.parameters(), lr=0.1)
    return opt, build_scheduler(opt, total=10, warmup=2)


def test_save_is_atomic_pruned_and_restores_strictly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    opt, sched = _opt(module)
    for step in (2, 4, 6):
        module(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
        save_checkpoint(tmp_path, module, opt, sched, TrainState(stage="s", step=step, epoch=1, batch=3), keep=2)
    killed_mid_write(tmp_path / "ckpt-00000008.pt")  # a torn temporary file is no checkpoint
    assert [p.name for p in checkpoints(tmp_path)] == ["ckpt-00000004.pt", "ckpt-00000006.pt"]
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-00000006.pt"
    fresh = torch.nn.Linear(3, 2)
    opt2, sched2 = _opt(fresh)
    state = load_checkpoint(tmp_path / "ckpt-00000006.pt", fresh, opt2, sched2)
    assert (state.step, state.epoch, state.batch) == (6, 1, 3)
    assert torch.equal(fresh.weight, module.weight)
    assert sched2.last_epoch == sched.last_epoch
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    with pytest.raises(CheckpointError, match="does not fit"):
        other = torch.nn.Linear(3, 2, bias=False)
        load_checkpoint(tmp_path / "ckpt-00000006.pt", other, *_opt(other))
    (tmp_path / "ckpt-00000009.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "ckpt-00000009.pt", fresh, opt2, sched2)


class _Killed(Exception):
    """Stands in for a kill right after a checkpoint was written."""


def _stages() -> list[dict]:
    clip = stage("clip", "contrastive", "captions.json", {"vision_encoder": "full"}, {"vision_encoder": 1e-2})
    clip.update(steps=4, batch_size=6, max_length=48, save_every=2)
    tune = instruct_stage(lora=True, steps=6, batch_size=2, grad_accum=2, max_length=200, save_every=2)
    return [clip, tune]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def _losses(path: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in map(json.loads, path.read_text().splitlines())]


@pytest.mark.parametrize(("kill_stage", "kill_step"), [("clip", 2), ("instruct", 4)])
def test_resume_equals_uninterrupted_run(
    tiny_data, tiny_tokenizer_dir, tmp_path, monkeypatch, kill_stage: str, kill_step: int
) -> None:
    train(recipe_from_dict(recipe(tmp_path / "full", tiny_data, tiny_tokenizer_dir, _stages())))
    real_save = trainer_module.save_checkpoint

    def save_then_die(stage_dir, module, optimizer, scheduler, state, keep, base):
        path = real_save(stage_dir, module, optimizer, scheduler, state, keep, base=base)
        if state.stage == kill_stage and state.step == kill_step:
            raise _Killed
        return path

    cut = recipe_from_dict(recipe(tmp_path / "cut", tiny_data, tiny_tokenizer_dir, _stages()))
    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train(cut)
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    assert not (tmp_path / "cut" / kill_stage / "done.json").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train(cut)  # a new run refuses to overwrite the interrupted one
    train(cut, resume=True)
    want, got = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed weights differ from the uninterrupted run"
    for name in ("clip", "instruct"):  # each logged step once, with the same losses
        assert _losses(tmp_path / "cut" / name / "metrics.jsonl") == _losses(tmp_path / "full" / name / "metrics.jsonl")
        assert not checkpoints(tmp_path / "cut" / name)  # finished stages drop their mid-stage checkpoints


def test_resume_of_a_finished_run_changes_nothing(tiny_data, tiny_tokenizer_dir, tmp_path) -> None:
    one = [stage("text", "text_lm", "captions.json", {"language_model": "full"}, {"language_model": 1e-2})]
    run = recipe_from_dict(recipe(tmp_path / "run", tiny_data, tiny_tokenizer_dir, one))
    train(run)
    before = _weights(tmp_path / "run")
    stamp = (tmp_path / "run" / "text" / "done.json").stat().st_mtime_ns
    train(run, resume=True)
    after = _weights(tmp_path / "run")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "run" / "text" / "done.json").stat().st_mtime_ns == stamp


def test_resume_removes_the_partial_files_of_killed_saves_and_nothing_else(
    tiny_data, tiny_tokenizer_dir, tmp_path
) -> None:
    one = [stage("text", "text_lm", "captions.json", {"language_model": "full"}, {"language_model": 1e-2})]
    run = recipe_from_dict(recipe(tmp_path / "run", tiny_data, tiny_tokenizer_dir, one))
    train(run)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    killed_mid_write(tmp_path / "run" / "model.safetensors")  # the final save
    killed_mid_write(tmp_path / "run" / "text" / "model" / "model.safetensors")  # the stage model's save
    killed_mid_write(tmp_path / "run" / "text" / "ckpt-00000002.pt")  # a mid-stage checkpoint
    users = [tmp_path / "run" / ".notes.tmp", tmp_path / "run" / "text" / "model" / ".model.safetensors.x.tmp"]
    for path in users:
        path.write_text("the user's")
    train(run, resume=True)
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    assert after == sorted(before + [p.relative_to(tmp_path) for p in users])
