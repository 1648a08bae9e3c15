"""What the eager causal attention (`decoder.eager_causal_attention`) saves in a bf16 training step on CPU.

Under bf16 autocast on CPU the decoder computes causal attention on sequences up to `decoder.EAGER_MAX_TOKENS` as two
matmuls and a float32 softmax instead of calling PyTorch's SDPA, whose CPU flash kernel is the slower one there at this
LM's shapes (4 heads of 64); longer batches take SDPA in both timings. This times forward + backward of both on the same
length-grouped batches, alternating one of each so that machine noise hits both alike, and checks the losses agree.
`--captions` times the align stage's batches (batch 32).

    python benchmarks/eager_attention.py --model src/vlbridge/assets/default --data runs/default/data --steps 40
    python benchmarks/eager_attention.py --model src/vlbridge/assets/default --data runs/default/data --captions \\
        --batch-size 32 --steps 40
"""

from __future__ import annotations

from unittest import mock

from instruct_steps import load_instruct, report_speedup, timed_step
from torch import Tensor

from vlbridge.data.collate import collate
from vlbridge.lm import decoder
from vlbridge.train.distributed import SingleProcess
from vlbridge.train.trainer import batch_order


def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The kernel the eager path stands in for, with its signature."""
    return decoder.F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] < q.shape[1])


def main() -> None:
    args, model, dataset, pad_id = load_instruct(__doc__.split("\n")[0])
    batches = batch_order(len(dataset), args.batch_size, 0, 0, SingleProcess(), dataset.lengths())
    times: dict[str, list[float]] = {"SDPA (flash)": [], "eager": []}
    for step in range(args.steps + 2):
        batch = collate([dataset[i] for i in batches[step * len(batches) // (args.steps + 2)]], pad_id)  # spread
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels") if k in batch}
        with mock.patch.object(decoder, "eager_causal_attention", sdpa):
            flash_s, flash = timed_step(lambda: model.loss(**inputs), model)  # noqa: B023
        eager_s, eager = timed_step(lambda: model.loss(**inputs), model)  # noqa: B023
        if abs(flash - eager) > 1e-2 * abs(flash):
            raise SystemExit(f"step {step}: the losses disagree ({flash} vs {eager})")
        if step >= 2:  # the first two steps of each warm up the allocator and kernels
            times["SDPA (flash)"].append(flash_s)
            times["eager"].append(eager_s)
    report_speedup(times, args.batch_size, "attention {}", "SDPA (flash)", "eager")


if __name__ == "__main__":
    main()
