"""Memory and step time of a connector-only stage on a bf16 base: frozen parts held in bf16 and computed in float32
(what training does), against the same base in float32 (what it did before), and against computing the frozen parts
in bf16 (autocast, as a `bf16: true` stage does where the hardware has bf16; forced on here).

The model is the embedded default's config with a wider, deeper LM (hidden 512, 8 layers; random weights). Each mode
trains `--steps` steps of the `align` stage (connector only, batch 4) in a fresh process; reported per mode: the
parameter bytes of the frozen parts, the resident memory (VmRSS) after the last step and its peak (VmHWM), and the
median step time (the float32-compute modes run `--repeats` times each, alternating). Run from the repository root:

    python experiments/frozen_bf16.py --dir /tmp/frozen-bf16 --steps 6 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

MODES = ("fp32 base", "bf16 base", "bf16 base, bf16 compute")


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def linear_probe(repeats: int = 3) -> None:
    """Time one Linear (64 x 576 @ 576 x 1536, one thread) in float32, in bf16, and with its bf16 weight cast to float32
    on each call, 20 calls each, alternating; print the best of `repeats` for each."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    x, weight = torch.randn(64, 576), torch.randn(1536, 576)
    low = weight.bfloat16()
    ways = {
        "float32": lambda: F.linear(x, weight),
        "bf16": lambda: F.linear(x.bfloat16(), low),
        "bf16 weight cast to float32": lambda: F.linear(x, low.float()),
    }
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(repeats):
        for name, call in ways.items():
            start = time.perf_counter()
            for _ in range(20):
                call()
            best[name] = min(best[name], time.perf_counter() - start)
    for name, seconds in best.items():
        print(f"Linear, {name}: {seconds * 1e3:.1f} ms for 20 calls, {seconds / best['float32']:.2f}x float32")


def build(folder: Path) -> None:
    """The base in bf16 and the same values in float32, and the rendered data."""
    import torch

    import vlbridge
    from vlbridge.data.synthetic import SynthOptions, synthesize
    from vlbridge.model.io import default_model_dir
    from vlbridge.model.vlm import VisionLanguageModel

    config = vlbridge.load()[0].config
    lm = replace(config.language_model, hidden_size=512, intermediate_size=1536, num_hidden_layers=8)
    torch.manual_seed(0)
    model = VisionLanguageModel(replace(config, language_model=replace(lm, num_attention_heads=8)))
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        model.to(dtype).save_pretrained(folder / name)
        for file in os.listdir(default_model_dir()):
            if file not in ("config.json", "model.safetensors"):
                shutil.copy(default_model_dir() / file, folder / name / file)
        model.to(torch.bfloat16)  # the fp32 copy holds the bf16 values
    synthesize(folder / "data", SynthOptions(n=64, seed=0, image_size=config.image_processor.crop_size))


def run(folder: Path, mode: str, steps: int) -> dict:
    """Train in this process; what it measured."""
    import torch

    import vlbridge.train.trainer as trainer_module
    from vlbridge.train import recipe_from_dict, train
    from vlbridge.train.trainer import StageTrainer

    torch.set_num_threads(1)
    seen: dict = {"step_s": []}
    real = StageTrainer._update

    def spy(self, *args):
        start = time.perf_counter()
        out = real(self, *args)
        seen["step_s"].append(time.perf_counter() - start)
        model = self.model
        frozen = [*model.language_model.parameters(), *model.vision_encoder.parameters()]
        seen["frozen_bytes"] = sum(p.numel() * p.element_size() for p in frozen)
        seen["rss"], seen["peak"], seen["loss"] = _status("VmRSS"), _status("VmHWM"), out[0]
        return out

    StageTrainer._update = spy
    bf16_compute = mode.endswith("bf16 compute")
    trainer_module.native_bf16 = lambda device: bf16_compute
    stage = {"name": "align", "objective": "causal_lm", "data": "captions.json", "parts": {"connector": "full"}}
    stage |= {"lr": {"connector": 1e-3}, "steps": steps, "batch_size": 4, "max_length": 128, "save_every": 0}
    stage |= {"template": "plain", "bf16": bf16_compute}
    base = folder / ("fp32" if mode.startswith("fp32") else "bf16")
    recipe = {"run_dir": str(folder / "run" / mode.replace(" ", "_").replace(",", "")), "seed": 0, "device": "cpu"}
    recipe |= {"init_from": str(base), "data": {"root": str(folder / "data")}, "stages": [stage]}
    shutil.rmtree(recipe["run_dir"], ignore_errors=True)
    train(recipe_from_dict(recipe))
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each float32-compute mode, alternating")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one measurement, in a child process
    args = parser.parse_args()
    if args.mode is not None:
        print(json.dumps(run(args.dir, args.mode, args.steps)))
        return
    linear_probe()
    shutil.rmtree(args.dir, ignore_errors=True)
    build(args.dir)
    for mode in [*MODES[:2] * args.repeats, MODES[2]]:  # the float32-compute modes alternating
        command = [sys.executable, __file__, "--dir", str(args.dir), "--steps", str(args.steps), "--mode", mode]
        out = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        step = statistics.median(out["step_s"][1:])  # the first step warms up
        print(
            f"{mode:>24}: frozen params {out['frozen_bytes'] / 1e6:6.1f} MB, RSS after the steps "
            f"{out['rss'] / 1e6:6.0f} MB (peak {out['peak'] / 1e6:6.0f} MB), median step {step * 1e3:7.1f} ms, "
            f"last loss {out['loss']:.6f}"
        )


if __name__ == "__main__":
    main()
