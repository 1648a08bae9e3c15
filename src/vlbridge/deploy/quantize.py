"""`vlbridge quantize`: write an int8 weight-only copy of a checkpoint, which loads as int8 with no re-quantising.

The quantisation itself (per-output-channel symmetric int8 weights, float activations) is `vlbridge.lm.int8`;
`vlbridge.load(path, quantize="int8")` applies it at load time. A saved copy records `quantization: int8` in its
config, stores the LM's linear weights as int8 with their float32 scales, and keeps every other weight float.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlbridge.model.io import load


def quantize_checkpoint(
    model: str | Path | None, out: str | Path, quantization: str = "int8", dtype: str | torch.dtype | None = None
) -> tuple[int, int]:
    """Quantise the checkpoint at `model` (None: the embedded default) into `out`; `dtype` is that of the weights
    left float (embeddings, norms, vision encoder, connector; None: float32). Returns (int8 weights, float weights)
    in the written checkpoint, in elements."""
    quantized, _ = load(model, dtype=dtype, quantize=quantization)
    quantized.save_pretrained(out)
    counts = [0, 0]
    for tensor in quantized.state_dict().values():
        counts[tensor.dtype != torch.int8] += tensor.numel()
    return counts[0], counts[1]
