"""What computing logits only at supervised positions saves in a training step.

Training on conversations supervises the assistant's tokens only; the prompt and image positions need no logits.
`VisionLanguageModel.loss` (what the trainer's causal-LM objective calls) runs the LM head on the supervised
positions; `forward(..., labels=...)` computes the (B, T, V) logits of every position and then discards most of
them. This times forward + backward (bf16 autocast, as the default recipe trains) of both on the same length-grouped
instruct batches, alternating one of each so that machine noise hits both alike, and checks the losses agree.

    python experiments/supervised_logits.py --model runs/default --data runs/default/data --steps 40
"""

from __future__ import annotations

from instruct_steps import load_instruct, report_speedup, timed_step

from vlbridge.data.collate import collate
from vlbridge.train.distributed import SingleProcess
from vlbridge.train.trainer import batch_order


def main() -> None:
    args, model, dataset, pad_id = load_instruct(__doc__.split("\n")[0])
    batches = batch_order(len(dataset), args.batch_size, 0, 0, SingleProcess(), dataset.lengths())
    times: dict[str, list[float]] = {"every position": [], "supervised only": []}
    supervised = positions = 0
    for step in range(args.steps + 2):
        batch = collate([dataset[i] for i in batches[step * len(batches) // (args.steps + 2)]], pad_id)  # spread
        inputs = {
            k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values") if k in batch
        }  # drills: no image
        full_s, full = timed_step(lambda: model(**inputs, labels=batch["labels"]).loss, model)  # noqa: B023
        picked_s, picked = timed_step(lambda: model.loss(labels=batch["labels"], **inputs), model)  # noqa: B023
        if abs(full - picked) > 1e-2 * abs(full):
            raise SystemExit(f"step {step}: the losses disagree ({full} vs {picked})")
        if step >= 2:  # the first two steps of each warm up the allocator and kernels
            times["every position"].append(full_s)
            times["supervised only"].append(picked_s)
            supervised += int((batch["labels"][:, 1:] != -100).sum())
            positions += batch["labels"][:, 1:].numel()
    print(f"supervised positions: {supervised / positions:.3f} of all")
    report_speedup(times, args.batch_size, "logits at {}", "every position", "supervised only")


if __name__ == "__main__":
    main()
