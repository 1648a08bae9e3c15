"""What the CPU bf16 causal attention (`cpu_kernels.cpu_bf16_causal_attention`) saves in a bf16 training step on CPU.

Under bf16 autocast on CPU the decoder computes causal attention on sequences up to `cpu_kernels.EAGER_MAX_TOKENS` as
two matmuls and a float32 softmax, and on longer ones with SDPA's flash kernel in float32, instead of calling SDPA on
the bf16 inputs autocast gives it, whose CPU flash kernel is the slower one at this LM's shapes (4 heads of 64). This
times forward + backward of both on the same length-grouped batches, alternating one of each so that machine noise hits
both alike, and checks the losses agree. `--captions` times the align stage's batches (batch 32).

    python experiments/eager_attention.py --model src/vlbridge/assets/default --data runs/default/data --steps 40
    python experiments/eager_attention.py --model src/vlbridge/assets/default --data runs/default/data --captions \\
        --batch-size 32 --steps 40
"""

from __future__ import annotations

from unittest import mock

from instruct_steps import compare_steps
from torch import Tensor
from torch.nn import functional as F

from vlbridge.lm import cpu_kernels


def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The kernel autocast would run (bf16 SDPA), with the signature of the function it stands in for."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] < q.shape[1])


def main() -> None:
    compare_steps(
        __doc__.split("\n")[0],
        lambda: mock.patch.object(cpu_kernels, "cpu_bf16_causal_attention", sdpa),
        "bf16 SDPA (flash)",
        "eager / fp32 flash",
        "attention {}",
    )


if __name__ == "__main__":
    main()
