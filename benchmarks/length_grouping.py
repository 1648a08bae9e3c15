"""What length-grouped batches (`group_by_length: true` in a stage) save on a conversation dataset.

Tokenises a dataset's `instruct.json` as the instruct stage does, then compares random batches with length-grouped
ones drawn by the trainer's own `batch_order`:

1. **Padding**: the share of batch positions that hold real tokens, over a whole epoch.
2. **Time**: forward + backward (bf16 autocast, as the default recipe trains) of the model on the first `--steps`
   batches of each order, alternating one of each so that machine noise hits both alike.

    python benchmarks/length_grouping.py --model runs/default --data runs/default/data --steps 40
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import vlbridge
from vlbridge.data.collate import SupervisedDataset, collate
from vlbridge.data.llava_json import load_llava
from vlbridge.train.distributed import SingleProcess
from vlbridge.train.trainer import batch_order


def padding_efficiency(batches: list[list[int]], lengths: list[int]) -> float:
    """Real tokens over padded batch positions."""
    real = sum(lengths[i] for batch in batches for i in batch)
    return real / sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def step_seconds(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Wall time of one forward + backward on `batch`."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


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
    lengths = dataset.lengths()
    world = SingleProcess()
    orders = {
        "random": batch_order(len(dataset), args.batch_size, 0, 0, world),
        "grouped": batch_order(len(dataset), args.batch_size, 0, 0, world, lengths),
    }
    for name, batches in orders.items():
        print(f"{name:8s} batches: {padding_efficiency(batches, lengths):.3f} of positions are real tokens")
    pad_id = processor.tokenizer.pad_token_id or 0
    model.train()
    times: dict[str, list[float]] = {name: [] for name in orders}
    for step in range(args.steps + 2):
        for name, batches in orders.items():
            batch = collate([dataset[i] for i in batches[step]], pad_id)
            seconds = step_seconds(
                model, {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
            )
            if step >= 2:  # the first two steps of each warm up the allocator and kernels
                times[name].append(seconds)
    mean = {name: sum(t) / len(t) for name, t in times.items()}
    for name, seconds in mean.items():
        print(f"{name:8s} batches: {1000 * seconds:6.1f} ms per step of {args.batch_size} samples")
    print(f"grouped / random steps per second: {mean['random'] / mean['grouped']:.2f}x")


if __name__ == "__main__":
    main()
