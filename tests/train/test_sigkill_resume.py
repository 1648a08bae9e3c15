"""A run SIGKILLed mid-stage, after its last checkpoint and before the next, resumes to the weights of an
uninterrupted run, bitwise: the stage before it is a chained folder on the recipe's `init_from` (only what it trained,
loaded through the chain), the killed stage's checkpoint names that folder as its frozen base."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import align_stage, instruct_stage, recipe

from killed import SRC
from vlbridge.lm.tokenizer import Tokenizer
from vlbridge.train import recipe_from_dict, train

KILL_AT_STEP_3 = """
import json, os, signal, sys
import vlbridge.train.trainer as trainer
from vlbridge.train import recipe_from_dict, train
append = trainer.MetricsLog.append
def append_then_die(self, row):
    append(self, row)
    if row["stage"] == "instruct" and row["step"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
trainer.MetricsLog.append = append_then_die
train(recipe_from_dict(json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_equals_the_uninterrupted_run(
    tiny_model, tiny_tokenizer_dir, tiny_data, tmp_path
) -> None:
    base = tmp_path / "base"
    tiny_model.save_pretrained(base)
    Tokenizer.from_dir(tiny_tokenizer_dir).save(base)
    stages = [align_stage(steps=2), instruct_stage(lora=True, steps=5, save_every=2, max_length=200)]

    def run(name: str) -> dict:
        mapping = recipe(tmp_path / name, tiny_data, None, stages, init_from=str(base))
        del mapping["model"]
        return mapping

    train(recipe_from_dict(run("full")))
    cut = run("cut")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP_3, json.dumps(cut)], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert [p.name for p in (tmp_path / "cut" / "instruct").glob("ckpt-*.pt")] == ["ckpt-00000002.pt"]
    assert "base" in json.loads((tmp_path / "cut" / "align" / "model" / "config.json").read_text())

    train(recipe_from_dict(cut), resume=True)
    want, got = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "resumed weights differ from the uninterrupted run"
