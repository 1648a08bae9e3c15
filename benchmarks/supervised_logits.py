"""What computing logits only at supervised positions saves in a training step.

Training on conversations supervises the assistant's tokens only; the prompt and image positions need no logits.
`VisionLanguageModel.loss` (what the trainer's causal-LM objective calls) runs the LM head on the supervised
positions; `forward(..., labels=...)` computes the (B, T, V) logits of every position and then discards most of
them. This times forward + backward (bf16 autocast, as the default recipe trains) of both on the same length-grouped
instruct batches, alternating one of each so that machine noise hits both alike, and checks the losses agree.

    python benchmarks/supervised_logits.py --model runs/default --data runs/default/data --steps 40
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

import vlbridge
from vlbridge.data.collate import SupervisedDataset, collate
from vlbridge.data.llava_json import load_llava
from vlbridge.train.distributed import SingleProcess
from vlbridge.train.trainer import batch_order


def timed(loss_fn: Callable[[], torch.Tensor], model: torch.nn.Module) -> tuple[float, float]:
    """(wall seconds of one forward + backward, the loss)."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start, float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a vlbridge model directory (its processor and size)")
    parser.add_argument("--data", required=True, type=Path, help="a synthetic dataset folder (instruct.json)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    model, processor = vlbridge.load(args.model, vision=True)
    records = load_llava(args.data / "instruct.json", args.data).items
    dataset = SupervisedDataset(records, args.data, processor, model.config.template or "chatml", 384)
    batches = batch_order(len(dataset), args.batch_size, 0, 0, SingleProcess(), dataset.lengths())
    pad_id = processor.tokenizer.pad_token_id or 0
    model.train()
    times: dict[str, list[float]] = {"every position": [], "supervised only": []}
    supervised = positions = 0
    for step in range(args.steps + 2):
        batch = collate([dataset[i] for i in batches[step * len(batches) // (args.steps + 2)]], pad_id)  # spread
        inputs = {
            k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values") if k in batch
        }  # drills: no image
        full_s, full = timed(lambda: model(**inputs, labels=batch["labels"]).loss, model)  # noqa: B023
        picked_s, picked = timed(lambda: model.loss(labels=batch["labels"], **inputs), model)  # noqa: B023
        if abs(full - picked) > 1e-2 * abs(full):
            raise SystemExit(f"step {step}: the losses disagree ({full} vs {picked})")
        if step >= 2:  # the first two steps of each warm up the allocator and kernels
            times["every position"].append(full_s)
            times["supervised only"].append(picked_s)
            supervised += int((batch["labels"][:, 1:] != -100).sum())
            positions += batch["labels"][:, 1:].numel()
    print(f"supervised positions: {supervised / positions:.3f} of all")
    mean = {name: sum(t) / len(t) for name, t in times.items()}
    for name, seconds in mean.items():
        print(f"logits at {name:15s}: {1000 * seconds:6.1f} ms per step of {args.batch_size} samples")
    print(f"supervised-only / every-position steps per second: {mean['every position'] / mean['supervised only']:.2f}x")


if __name__ == "__main__":
    main()
