"""What length-grouped batches (`group_by_length: true` in a stage) save on a conversation dataset.

Tokenises a dataset's `instruct.json` as the instruct stage does, then compares random batches with length-grouped
ones drawn by the trainer's own `batch_order`:

1. **Padding**: the share of batch positions that hold real tokens, over a whole epoch.
2. **Time**: forward + backward (bf16 autocast, as the default recipe trains) of the model on the first `--steps`
   batches of each order, alternating one of each so that machine noise hits both alike.

    python experiments/length_grouping.py --model runs/default --data runs/default/data --steps 40
"""

from __future__ import annotations

from instruct_steps import load_instruct, report_speedup, timed_step

from vlbridge.data.collate import collate
from vlbridge.train.distributed import SingleProcess
from vlbridge.train.trainer import batch_order


def padding_efficiency(batches: list[list[int]], lengths: list[int]) -> float:
    """Real tokens over padded batch positions."""
    real = sum(lengths[i] for batch in batches for i in batch)
    return real / sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def main() -> None:
    args, model, dataset, pad_id = load_instruct(__doc__.split("\n")[0])
    lengths = dataset.lengths()
    world = SingleProcess()
    orders = {
        "random": batch_order(len(dataset), args.batch_size, 0, 0, world),
        "grouped": batch_order(len(dataset), args.batch_size, 0, 0, world, lengths),
    }
    for name, batches in orders.items():
        print(f"{name:8s} batches: {padding_efficiency(batches, lengths):.3f} of positions are real tokens")
    times: dict[str, list[float]] = {name: [] for name in orders}
    for step in range(args.steps + 2):
        for name, batches in orders.items():
            batch = collate([dataset[i] for i in batches[step]], pad_id)
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values") if k in batch}
            seconds, _ = timed_step(lambda: model(**inputs).loss, model)  # noqa: B023
            if step >= 2:  # the first two steps of each warm up the allocator and kernels
                times[name].append(seconds)
    report_speedup(times, args.batch_size, "{} batches", "random", "grouped")


if __name__ == "__main__":
    main()
