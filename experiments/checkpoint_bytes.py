"""Bytes a two-stage run writes: mid-stage checkpoints, each stage's model, and the final model.

The run starts from the embedded default model (`init_from`, 5.5M parameters) on a small rendered synthetic world:
stage `align` trains the connector only, stage `instruct` the connector and LoRA adapters on the LM, 20 steps each,
a checkpoint every 5 steps (the last 2 kept). Every checkpoint write is counted, including those pruned later.
Run it from the repository root on two commits to compare them (it uses only what both have):

    python experiments/checkpoint_bytes.py --run-dir /tmp/ckpt-bytes
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import vlbridge.train.trainer as trainer_module
from vlbridge.model.io import default_model_dir
from vlbridge.train import recipe_from_dict, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args()
    shutil.rmtree(args.run_dir, ignore_errors=True)
    stage = {"objective": "causal_lm", "steps": 20, "batch_size": 4, "max_length": 256, "save_every": 5}
    stages = [
        {**stage, "name": "align", "data": "captions.json", "parts": {"connector": "full"}, "lr": {"connector": 1e-3}},
        {
            **stage,
            "name": "instruct",
            "data": "instruct.json",
            "parts": {"connector": "full", "language_model": "lora"},
            "lr": {"connector": 1e-4, "language_model": 1e-4},
            "lora": {"r": 8, "alpha": 16},
        },
    ]
    recipe = {
        "run_dir": str(args.run_dir / "run"),
        "seed": 0,
        "device": "cpu",
        "init_from": str(default_model_dir()),
        "data": {"root": str(args.run_dir / "data"), "synth": {"n": 200, "seed": 0, "image_size": 96}},
        "stages": stages,
    }
    written: list[int] = []
    real_save = trainer_module.save_checkpoint

    def counted(*args, **kwargs):
        path = real_save(*args, **kwargs)
        written.append(path.stat().st_size)
        return path

    trainer_module.save_checkpoint = counted
    run = train(recipe_from_dict(recipe))
    stage_models = sum(p.stat().st_size for s in stages for p in (run / s["name"] / "model").iterdir())
    final = sum(p.stat().st_size for p in run.iterdir() if p.is_file())
    mb = 2**20
    print(f"checkpoints: {len(written)} written, {sum(written) / mb:.1f} MB ({max(written) / mb:.2f} MB the largest)")
    print(f"stage models: {stage_models / mb:.1f} MB; final model and run files: {final / mb:.1f} MB")
    print(f"total written: {(sum(written) + stage_models + final) / mb:.1f} MB")


if __name__ == "__main__":
    main()
