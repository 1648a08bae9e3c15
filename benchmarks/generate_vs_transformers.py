"""Prefill latency and decode tokens/s of vlbridge vs transformers on the same ~200M llava-hf checkpoint.

The checkpoint (a ViT-B/16-shaped CLIP tower + a ~130M Llama, random weights) is written with transformers'
`save_pretrained` and loaded by both through their real loading code. Both run greedy decoding from the same
inputs (1 image + 32 text tokens), side by side in one process, in fp32 and bf16; ratios > 1 mean vlbridge is faster.
The engines alternate within each round (`real_llm_speed.alternate`): prefill = generating 1 token, decode tokens/s
from the difference to N + 1, medians over rounds. N defaults to 256: the image's prefill takes seconds in bf16 on
CPUs without native bf16, and with fewer tokens its noise swamps the decode time.
`--quick` runs a 64-wide, 2-layer checkpoint of the same layout for 4 new tokens, timed once.

    python -m benchmarks.generate_vs_transformers [--new-tokens 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks._checkpoints import FULL, IMAGE_TOKEN, QUICK, LlavaSize, write_llava_checkpoint
from benchmarks._suite import Report, benchmark_parser
from benchmarks.real_llm_speed import alternate
from vlbridge.model.io import load_weights, read_config
from vlbridge.model.vlm import VisionLanguageModel

TEXT_TOKENS = 32


def load_vlbridge(path: Path) -> VisionLanguageModel:
    """Load through vlbridge's own loader (config conversion, key renaming, strict keys)."""
    config, rules = read_config(path)
    model = VisionLanguageModel(config)
    load_weights(model, path, rules)
    return model.eval()


def inputs(size: LlavaSize) -> dict[str, torch.Tensor]:
    """1 image + TEXT_TOKENS text tokens, the image token expanded to one per patch as the processors do."""
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(3, 30000, (TEXT_TOKENS,), generator=gen)
    ids = torch.cat([text[:4], torch.full((size.image_tokens,), IMAGE_TOKEN), text[4:]])[None]
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(1, 3, size.image_size, size.image_size, generator=gen),
    }


def compare(
    ours: VisionLanguageModel,
    theirs: torch.nn.Module,
    batch: dict,
    dtype: torch.dtype,
    args: argparse.Namespace,
    report: Report,
) -> None:
    """Measure both engines in one dtype and report their figures and ratios."""
    kw = {**batch, "pixel_values": batch["pixel_values"].to(dtype)}

    def run_ours(n: int) -> torch.Tensor:
        return ours.generate(**kw, max_new_tokens=n, eos_token_id=())

    def run_theirs(n: int) -> torch.Tensor:
        return theirs.generate(**kw, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    with torch.inference_mode():
        same = torch.equal(run_ours(8), run_theirs(8))
        results = alternate({"vlbridge": run_ours, "transformers": run_theirs}, args.new_tokens, args.repeats)
    name = "fp32" if dtype == torch.float32 else "bf16"
    for engine, (prefill, tps) in results.items():
        report.line(f"{name:<6} {engine:<13} {prefill * 1e3:>11.1f} {tps:>13.1f}")
    (p_ours, d_ours), (p_theirs, d_theirs) = results["vlbridge"], results["transformers"]
    report.line(
        f"{name:<6} {'ratio':<13} {p_theirs / p_ours:>10.2f}x {d_ours / d_theirs:>12.2f}x"
        f"   (prefill: transformers/vlbridge time; decode: vlbridge/transformers tok/s; "
        f"first 8 greedy tokens identical: {same})"
    )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--new-tokens", type=int, default=None, help="decoded tokens (default 256; --quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs, median taken (default 5; --quick 1)")
    args = parser.parse_args()
    report = Report("generate_vs_transformers", args)
    args.new_tokens = args.new_tokens or (4 if args.quick else 256)
    args.repeats = args.repeats or (1 if args.quick else 5)
    from transformers import LlavaForConditionalGeneration

    size = QUICK if args.quick else FULL
    batch = inputs(size)
    report.line(f"prompt: 1 image ({size.image_tokens} tokens) + {TEXT_TOKENS} text")
    report.line(f"{'dtype':<6} {'engine':<13} {'prefill ms':>11} {'decode tok/s':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        write_llava_checkpoint(path, size)
        ours_fp32 = load_vlbridge(path)
        theirs_fp32 = LlavaForConditionalGeneration.from_pretrained(path).eval()
        n_params = sum(p.numel() for p in ours_fp32.parameters())
        report.line(f"model: {n_params / 1e6:.0f}M parameters")
        for dtype in (torch.float32, torch.bfloat16):
            compare(ours_fp32.to(dtype), theirs_fp32.to(dtype), batch, dtype, args, report)
    report.save()


if __name__ == "__main__":
    main()
