"""Bytes a two-stage run writes: mid-stage checkpoints, each stage's model, and the final model.

The run starts from the embedded default model (`init_from`, 5.5M parameters) on a small rendered synthetic world:
stage `align` trains the connector only, stage `instruct` the connector and LoRA adapters on the LM, 20 steps each,
a checkpoint every 5 steps (the last 2 kept). Every checkpoint write is counted, including those pruned later.
`--init-from DIR` starts from a text LLM instead (e.g. SmolLM2-135M converted from GGUF), given the embedded
default's vision encoder and connector sections (freshly initialised: the progressive upgrade), with the LLM's own
tokenizer. Run it from the repository root on two commits to compare them (it uses only what both have):

    python experiments/checkpoint_bytes.py --run-dir /tmp/ckpt-bytes
    python experiments/checkpoint_bytes.py --run-dir /tmp/ckpt-smol --init-from /tmp/smollm2-hf --steps 10 \
        --batch-size 1 --max-length 96
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import vlbridge.train.trainer as trainer_module
from vlbridge.model.io import default_model_dir
from vlbridge.train import recipe_from_dict, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--init-from", help="a text LLM folder to start from (default: the embedded default model)")
    parser.add_argument("--steps", type=int, default=20, help="steps per stage")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    shutil.rmtree(args.run_dir, ignore_errors=True)
    stage = {
        "objective": "causal_lm",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "save_every": max(1, args.steps // 4),
    }
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
        "init_from": args.init_from or str(default_model_dir()),
        "data": {"root": str(args.run_dir / "data"), "synth": {"n": 200, "seed": 0, "image_size": 96}},
        "stages": stages,
    }
    if args.init_from:  # the default's vision sections, fresh, on the text LLM
        default = json.loads((default_model_dir() / "config.json").read_text())["model"]
        recipe["model"] = {key: default[key] for key in ("vision", "connector", "image_processor")}
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
    files = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())  # all the run keeps (checkpoints are gone)
    mb = 2**20
    print(f"checkpoints: {len(written)} written, {sum(written) / mb:.1f} MB ({max(written) / mb:.2f} MB the largest)")
    print(f"stage models: {stage_models / mb:.1f} MB; final model and run files: {final / mb:.1f} MB")
    total = sum(written) + stage_models + final
    print(f"total written: {total / mb:.1f} MB; the run folder keeps {files / mb:.1f} MB")


if __name__ == "__main__":
    main()
