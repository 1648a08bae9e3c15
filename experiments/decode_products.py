"""Which one-row product streams a decode step's weights fastest on this CPU, per weight dtype and layout?

Every product a SmolLM2-135M decode step runs (30 layers of q, k, v, o, gate, up, down and the 49152 x 576 tied head),
each on its own random matrix, so the weights (538 MB in float32) stream from memory as in decode, not from a warm
cache: a microbenchmark repeating one matrix measures the cache instead. Best of `--rounds` passes per candidate,
candidates alternating; GB/s counts the weight bytes of each dtype. Candidates: float32 `F.linear` on the (out, in)
weight, `x @ W_t` on an (in, out) contiguous one (a layout vlbridge once used for decode) and oneDNN's packed
linear; bf16 `F.linear` and `x @ W_t`; int8 `aten._weight_int8pack_mm` on bf16 and on float32 activations, and
dequantising per call (int8 -> float32, then `F.linear`); and vlbridge's own kernels (`vlbridge.lm.native`) on
float32, bf16 and int8 weights.

    python experiments/decode_products.py [--threads 1] [--rounds 4]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from vlbridge.lm import native
from vlbridge.lm.int8 import quantize_weight

LAYERS, WIDTH, KV, MLP, VOCAB = 30, 576, 192, 1536, 49152
SHAPES = [(WIDTH, WIDTH), (KV, WIDTH), (KV, WIDTH), (WIDTH, WIDTH), (MLP, WIDTH), (MLP, WIDTH), (WIDTH, MLP)]
"""One layer's products (out, in): q, k, v, o, gate, up, down."""

Product = Callable[[torch.Tensor, int], torch.Tensor]


def candidates(weights: list[torch.Tensor]) -> dict[str, tuple[Product, int]]:
    """{name: (product(x float32 (1, in), matrix index), weight bytes)}; each candidate holds its own weights."""
    fp32_t = [w.t().contiguous() for w in weights]  # (in, out)
    bf16 = [w.bfloat16() for w in weights]
    bf16_t = [w.t().contiguous() for w in bf16]
    quantized = [quantize_weight(w) for w in weights]
    scales_bf16 = [s.bfloat16() for _, s in quantized]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]
    onednn = torch.ops.mkldnn._linear_pointwise
    n32 = sum(w.numel() for w in weights) * 4
    return {
        "fp32 F.linear (out, in)": (lambda x, i: F.linear(x, weights[i]), n32),
        "fp32 x @ W_t (in, out)": (lambda x, i: x @ fp32_t[i], n32),
        "fp32 oneDNN packed": (lambda x, i: onednn(x, packed[i], None, "none", [], ""), n32),
        "bf16 F.linear (out, in)": (lambda x, i: F.linear(x.bfloat16(), bf16[i]), n32 // 2),
        "bf16 x @ W_t (in, out)": (lambda x, i: x.bfloat16() @ bf16_t[i], n32 // 2),
        "int8 int8pack, bf16 x": (
            lambda x, i: torch.ops.aten._weight_int8pack_mm(x.bfloat16(), quantized[i][0], scales_bf16[i]).float(),
            n32 // 4,
        ),
        "int8 int8pack, fp32 x": (
            lambda x, i: torch.ops.aten._weight_int8pack_mm(x, quantized[i][0], quantized[i][1]),
            n32 // 4,
        ),
        "int8 dequantise, F.linear": (lambda x, i: F.linear(x, quantized[i][0].float()) * quantized[i][1], n32 // 4),
        "fp32 native (native.c)": (lambda x, i: native.linear(x, weights[i]), n32),
        "bf16 native (native.c)": (lambda x, i: native.linear(x, bf16[i]), n32 // 2),
        "int8 native (native.c)": (lambda x, i: native.linear(x, quantized[i][0], quantized[i][1]), n32 // 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = SHAPES * LAYERS + [(VOCAB, WIDTH)]
    weights = [torch.randn(shape) * 0.02 for shape in shapes]
    inputs = {width: torch.randn(1, width) for width in (WIDTH, MLP)}
    runs = candidates(weights)
    best = dict.fromkeys(runs, float("inf"))
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, (product, _) in runs.items():
                start = time.perf_counter()
                for i, (_, width) in enumerate(shapes):
                    product(inputs[width], i)
                best[name] = min(best[name], time.perf_counter() - start)
    print(f"threads {torch.get_num_threads()}, capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"native kernels: {native.status()}")
    for name, (_, nbytes) in runs.items():
        print(f"{name:<28} {best[name] * 1e3:8.1f} ms  {nbytes / best[name] / 1e9:5.1f} GB/s")


if __name__ == "__main__":
    main()
