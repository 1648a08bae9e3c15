"""Decode tokens/s and prefill latency of int8 weight-only models against fp32 and bf16, side by side in one run.

Two models: the embedded default (the sample image + "Describe the image briefly." through its chat template) and a
random language model of SmolLM2-135M's shape (576 wide, 30 layers, 9 query / 3 KV heads, 1536 intermediate, 49,152
tokens, tied embeddings; a 100-token prompt). Each is run as fp32, bf16, int8 (`quantize="int8"`: int8 linear
weights, the rest fp32) and int8 + bf16 (the rest bf16). Variants are timed in interleaved rounds so that load from
other processes falls on all of them alike; medians are reported (decode: of each round's full minus prefill
time), and ratios to fp32. Accuracy beside speed: how many greedy tokens agree with fp32's before the first
difference (on random weights near-ties make this a weak signal), and the prompt's last logits' max |difference| to
fp32's over fp32's max |logit| ("logit err").
`--quick` runs the default and a 64-wide 2-layer LM for 4 new tokens, once.

    python -m benchmarks.int8_decode [--new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch

import vlbridge
from benchmarks._suite import Report, benchmark_parser
from vlbridge.config import LMConfig, ModelConfig
from vlbridge.lm.decoder import init_weights
from vlbridge.model.io import default_model_dir, quantize_model
from vlbridge.model.vlm import VisionLanguageModel
from vlbridge.vision.processor import load_image

SMOLLM2_135M = LMConfig(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
QUICK_LM = LMConfig(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
PROMPT_TOKENS = 100
AGREEMENT_TOKENS = 16


def variants(model: VisionLanguageModel) -> dict[str, VisionLanguageModel]:
    """fp32 (the model itself), bf16, int8 and int8 + bf16 copies of a float32 model."""
    int8 = copy.deepcopy(model)
    quantize_model(int8, "int8")
    return {
        "fp32": model,
        "bf16": copy.deepcopy(model).to(torch.bfloat16),
        "int8": int8,
        "int8+bf16": copy.deepcopy(int8).to(torch.bfloat16),
    }


def random_lm(config: LMConfig) -> VisionLanguageModel:
    """A text-only model of `config`'s shape with Llama-initialised random weights (std 0.02)."""
    torch.manual_seed(0)
    model = VisionLanguageModel(ModelConfig(language_model=config, vision=None), vision=False)
    model.language_model.apply(lambda module: init_weights(module, 0.02))
    return model.eval()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(
    name: str, models: dict[str, VisionLanguageModel], batch: dict, new_tokens: int, repeats: int, report: Report
) -> None:
    """Prefill ms and decode tokens/s of each variant (interleaved rounds, medians), with ratios to fp32."""

    def generate(model: VisionLanguageModel, n: int) -> torch.Tensor:
        kw = dict(batch)
        if "pixel_values" in kw:
            kw["pixel_values"] = kw["pixel_values"].to(model.language_model.model.embed_tokens.weight.dtype)
        return model.generate(**kw, max_new_tokens=n, do_sample=False, eos_token_id=())

    prefill: dict[str, list[float]] = {key: [] for key in models}
    full: dict[str, list[float]] = {key: [] for key in models}
    with torch.inference_mode():
        prompt_len = batch["input_ids"].shape[1]
        greedy = {key: generate(model, AGREEMENT_TOKENS)[0, prompt_len:] for key, model in models.items()}
        last = {key: model(**batch).logits[0, -1] for key, model in models.items()}  # (V,) at the prompt's end
        for _ in range(repeats):
            for key, model in models.items():
                prefill[key].append(timed(lambda m=model: generate(m, 1)))
                full[key].append(timed(lambda m=model: generate(m, new_tokens + 1)))
    report.line(f"{name}: prompt {prompt_len} tokens, {new_tokens} decoded, median of {repeats}")
    columns = ("prefill ms", "decode tok/s", "vs fp32", "greedy = fp32", "logit err")
    report.line(f"{'variant':<10} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, (10, 13, 8, 14, 10), strict=True)))
    base = None
    for key in models:
        p = statistics.median(prefill[key])
        tps = new_tokens / statistics.median(f - q for f, q in zip(full[key], prefill[key], strict=True))
        base = base or tps
        agree = int((greedy[key] == greedy["fp32"]).cumprod(0).sum())
        err = float((last[key] - last["fp32"]).abs().max() / last["fp32"].abs().max())
        report.line(
            f"{key:<10} {p * 1e3:>10.1f} {tps:>13.1f} {tps / base:>7.2f}x {agree:>9}/{AGREEMENT_TOKENS} {err:>10.4f}"
        )
    report.line()


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--new-tokens", type=int, default=None, help="decoded tokens (default 32; --quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved timing rounds (default 3; --quick 1)")
    args = parser.parse_args()
    report = Report("int8_decode", args)
    new_tokens = args.new_tokens or (4 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 3)
    report.line(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    default, processor = vlbridge.load()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "<image>\nDescribe the image briefly."}], add_generation_prompt=True
    )
    image = load_image(default_model_dir() / "sample.png")
    batch = dict(processor(text=prompt, images=[image], return_tensors="pt"))
    compare("embedded default", variants(default), batch, new_tokens, repeats, report)

    config = QUICK_LM if args.quick else SMOLLM2_135M
    ids = torch.randint(3, config.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    label = "tiny LM (quick)" if args.quick else "random LM of SmolLM2-135M's shape"
    compare(label, variants(random_lm(config)), batch, new_tokens, repeats, report)
    report.save()


if __name__ == "__main__":
    main()
