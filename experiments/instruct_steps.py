"""Shared set-up of the experiments that time training steps on a synthetic dataset's instruction conversations.

`load_instruct` parses the common arguments and tokenises `instruct.json` as the instruct stage does;
`timed_step` times one forward + backward under bf16 autocast, as the default recipe trains; `compare_steps` times a
baseline (the code under a patch) against the code as it is, alternating, on the same batches.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch

import vlbridge
from vlbridge.data.collate import SupervisedDataset, collate
from vlbridge.data.llava_json import load_llava
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.train.distributed import SingleProcess
from vlbridge.train.trainer import batch_order


def load_instruct(description: str) -> tuple[argparse.Namespace, VisionLanguageModel, SupervisedDataset, int]:
    """(arguments, model in train mode, the instruct (or `--captions`) dataset, the pad id) from `--model --data
    --batch-size --steps`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="a vlbridge model directory (its processor and size)")
    parser.add_argument("--data", required=True, type=Path, help="a synthetic dataset folder (instruct.json)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--captions", action="store_true", help="captions.json as the align stage reads it (plain template, 256 tokens)"
    )
    args = parser.parse_args()
    model, processor = vlbridge.load(args.model, vision=True)
    file, template, max_length = ("captions.json", "plain", 256) if args.captions else ("instruct.json", None, 384)
    records = load_llava(args.data / file, args.data).items
    template = template or model.config.template or "chatml"
    dataset = SupervisedDataset(records, args.data, processor, template, max_length)
    model.train()
    return args, model, dataset, processor.tokenizer.pad_token_id or 0


def timed_step(loss_fn: Callable[[], torch.Tensor], model: torch.nn.Module) -> tuple[float, float]:
    """(wall seconds of one forward + backward, the loss)."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start, float(loss.detach())


def report_speedup(times: dict[str, list[float]], batch_size: int, label: str, base: str, faster: str) -> None:
    """Print each variant's mean step time (`label` formats its name) and `faster`'s steps per second over `base`'s."""
    mean = {name: sum(t) / len(t) for name, t in times.items()}
    width = max(len(name) for name in mean)
    for name, seconds in mean.items():
        print(f"{label.format(name.ljust(width))}: {1000 * seconds:6.1f} ms per step of {batch_size} samples")
    print(f"{faster} / {base} steps per second: {mean[base] / mean[faster]:.2f}x")


def compare_steps(
    description: str, baseline: Callable[[], AbstractContextManager], base: str, current: str, label: str
) -> None:
    """Time forward + backward of the code under `baseline()` (named `base`) and as it is (`current`) on the same
    length-grouped batches spread over the data, one of each in turn so that machine noise hits both alike; the
    losses must agree. Prints both step times and the speed-up."""
    args, model, dataset, pad_id = load_instruct(description)
    batches = batch_order(len(dataset), args.batch_size, 0, 0, SingleProcess(), dataset.lengths())
    times: dict[str, list[float]] = {base: [], current: []}
    for step in range(args.steps + 2):
        batch = collate([dataset[i] for i in batches[step * len(batches) // (args.steps + 2)]], pad_id)  # spread
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels") if k in batch}
        with baseline():
            base_s, base_loss = timed_step(lambda: model.loss(**inputs), model)  # noqa: B023
        current_s, current_loss = timed_step(lambda: model.loss(**inputs), model)  # noqa: B023
        if abs(base_loss - current_loss) > 1e-2 * abs(base_loss):
            raise SystemExit(f"step {step}: the losses disagree ({base_loss} vs {current_loss})")
        if step >= 2:  # the first two steps of each warm up the allocator and kernels
            times[base].append(base_s)
            times[current].append(current_s)
    report_speedup(times, args.batch_size, label, base, current)
