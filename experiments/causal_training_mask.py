"""What serving right-padded training batches with plain causal attention saves in a training step.

Training batches are right-padded: every real token comes before the padding, so causal attention is exact for
every real token without a mask (`decoder.right_padded`). With the mask, each step builds a (B, 1, T, T) boolean
mask and the attention kernel reads it. This times forward + backward (bf16 autocast, as the default recipe trains)
of both on the same length-grouped instruct batches, alternating one of each so that machine noise hits both alike,
and checks the losses agree.

    python experiments/causal_training_mask.py --model src/vlbridge/assets/default --data runs/default/data --steps 40
"""

from __future__ import annotations

from unittest import mock

from instruct_steps import compare_steps

from vlbridge.lm import decoder


def main() -> None:
    compare_steps(
        __doc__.split("\n")[0],
        lambda: mock.patch.object(decoder, "right_padded", lambda mask: False),
        "padding mask",
        "plain causal",
        "attention with {}",
    )


if __name__ == "__main__":
    main()
