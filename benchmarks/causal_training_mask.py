"""What serving right-padded training batches with plain causal attention saves in a training step.

Training batches are right-padded: every real token comes before the padding, so causal attention is exact for
every real token without a mask (`decoder.right_padded`). With the mask, each step builds a (B, 1, T, T) boolean
mask and the attention kernel reads it. This times forward + backward (bf16 autocast, as the default recipe trains)
of both on the same length-grouped instruct batches, alternating one of each so that machine noise hits both alike,
and checks the losses agree.

    python benchmarks/causal_training_mask.py --model src/vlbridge/assets/default --data runs/default/data --steps 40
"""

from __future__ import annotations

from unittest import mock

from instruct_steps import load_instruct, report_speedup, timed_step

from vlbridge.data.collate import collate
from vlbridge.lm import decoder
from vlbridge.train.distributed import SingleProcess
from vlbridge.train.trainer import batch_order


def main() -> None:
    args, model, dataset, pad_id = load_instruct(__doc__.split("\n")[0])
    batches = batch_order(len(dataset), args.batch_size, 0, 0, SingleProcess(), dataset.lengths())
    times: dict[str, list[float]] = {"padding mask": [], "plain causal": []}
    for step in range(args.steps + 2):
        batch = collate([dataset[i] for i in batches[step * len(batches) // (args.steps + 2)]], pad_id)  # spread
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels") if k in batch}
        with mock.patch.object(decoder, "right_padded", lambda mask: False):
            masked_s, masked = timed_step(lambda: model.loss(**inputs), model)  # noqa: B023
        causal_s, causal = timed_step(lambda: model.loss(**inputs), model)  # noqa: B023
        if abs(masked - causal) > 1e-2 * abs(masked):
            raise SystemExit(f"step {step}: the losses disagree ({masked} vs {causal})")
        if step >= 2:  # the first two steps of each warm up the allocator and kernels
            times["padding mask"].append(masked_s)
            times["plain causal"].append(causal_s)
    report_speedup(times, args.batch_size, "attention with {}", "padding mask", "plain causal")


if __name__ == "__main__":
    main()
