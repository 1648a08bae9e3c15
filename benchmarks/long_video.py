"""Long video in one prompt: how many frames fit in 24 GB with LLaVA-Mini's `mini` connector at 1 token per frame.

Each probe runs in a fresh process (`vlbridge.bench.measure`): a model with the `mini` connector (C = 1, 4 pre-fusion
layers, random connector weights), F random 96 px frames as pixel_values and 32 text tokens, prefilled into a KV cache
the way `generate` starts (frames through the ViT and the connector 16 at a time, per-frame pre-fusion, then the LM).
It reports the peak RSS of the process (VmHWM: weights, pixel values, features, KV cache, activations) and the
prefill time. Two language models:

- `default`: the embedded default (256 wide, 4 layers, its trained weights; the mini connector is fresh);
- `smollm2`: an LM of SmolLM2-135M's shape (576 wide, 30 layers, 9 query / 3 KV heads, 49,152 tokens), random.

Both keep the default's ViT (96 px, 9 patches a frame). Their trained contexts are 512 and 8,192 positions: the
probes raise `max_position_embeddings` to the prompt's length, because the question is memory, not quality (RoPE
runs past its trained length; answers there are not vouched for). In normal use `generate` refuses a prompt past the
context with ContextOverflowError. Peak RSS is linear in F here (causal attention without a mask takes torch's
flash kernel, pre-fusion runs frame chunks), so the frames that fit in 24 GiB are extrapolated from a least-squares
line through the measured points, not measured at 24 GiB (the machine has 24 GiB for everything). The analytical
figure for Vicuna-7B (fp16) is beside it: (24 GiB - weights) / KV bytes per frame. The time to encode 1,000 frames
(ViT + projector + compression, no LM) is measured on the default.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import torch

from benchmarks._suite import benchmark_parser, out_dir, run_header
from vlbridge.atomic import write_text
from vlbridge.bench.measure import run_isolated, status_kib

GIB = 1024**3
TEXT_TOKENS = 32
SMOLLM2 = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
}
VICUNA_7B = {"layers": 32, "hidden": 4096, "params": 6.74e9, "vit_params": 0.304e9, "bytes": 2}


def _model(lm: str, frames: int) -> Any:
    """The default model (its ViT and, for `default`, its LM) with a fresh mini connector, context `frames + text`."""
    import vlbridge
    from vlbridge.config import ConnectorConfig, LMConfig
    from vlbridge.model.vlm import VisionLanguageModel

    base, _ = vlbridge.load()
    context = max(frames + TEXT_TOKENS + 1, base.config.language_model.max_position_embeddings)
    lm_config = base.config.language_model
    if lm == "smollm2":
        lm_config = LMConfig(**{**lm_config.__dict__, **SMOLLM2})
    lm_config = replace(lm_config, max_position_embeddings=context)
    config = replace(base.config, language_model=lm_config, connector=ConnectorConfig(name="mini", options={}))
    torch.manual_seed(0)
    model = VisionLanguageModel(config).eval()
    model.vision_encoder.load_state_dict(base.vision_encoder.state_dict())
    if lm == "default":
        model.language_model.load_state_dict(base.language_model.state_dict())
    del base
    return model


def probe(arguments: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS and prefill seconds of one F-frame prompt (run in a fresh process)."""
    from vlbridge.model.vlm_generation import VisionStep

    frames = arguments["frames"]
    torch.set_num_threads(arguments["threads"])
    model = _model(arguments["lm"], frames)
    ids = torch.tensor([[1] + [model.config.image_token_id] * frames + [7] * (TEXT_TOKENS - 1)])
    mask = torch.ones_like(ids)
    pixels = torch.randn(frames, 3, 96, 96)
    before = status_kib("VmRSS")
    with torch.inference_mode():
        step = VisionStep(model)
        cache = step.new_cache(1, ids.shape[1] + 1)
        start = time.perf_counter()
        step.prefill(cache, mask, ids, pixels, None, torch.tensor([frames]))
        seconds = time.perf_counter() - start
    return {
        "peak_rss_bytes": status_kib("VmHWM") * 1024,
        "rss_before_prefill_bytes": before * 1024,
        "kv_bytes": sum(t.numel() * t.element_size() for t in [*cache.keys, *cache.values]),
        "prefill_s": seconds,
    }


def encode_time(arguments: dict[str, Any]) -> dict[str, Any]:
    """Seconds to encode `frames` frames into mini tokens on the default (ViT + projector + compression)."""
    torch.set_num_threads(arguments["threads"])
    model = _model("default", arguments["frames"])
    pixels = torch.randn(arguments["frames"], 3, 96, 96)
    chunk = model.config.video_chunk_frames
    with torch.inference_mode():
        model.connector.encode_video(model.vision_encoder(pixels[:chunk]), chunk)  # warm-up
        start = time.perf_counter()
        features = torch.cat([model.vision_encoder(part) for part in pixels.split(chunk)])
        tokens = model.connector.encode_video(features, chunk)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": int(tokens.shape[0])}


def fit(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of peak RSS bytes against frames."""
    xs, ys = (
        torch.tensor([p[0] for p in points], dtype=torch.float64),
        torch.tensor([p[1] for p in points], dtype=torch.float64),
    )
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
    return float(ys.mean() - slope * xs.mean()), slope


def vicuna_frames(tokens_per_frame: int) -> int:
    """Analytical frames of Vicuna-7B + CLIP-L in fp16 within 24 GiB: the room the weights leave over the KV bytes of
    a frame (2 x layers x hidden x 2 bytes a token)."""
    v = VICUNA_7B
    room = 24 * GIB - (v["params"] + v["vit_params"]) * v["bytes"]
    per_token = 2 * v["layers"] * v["hidden"] * v["bytes"]
    return int(room // (per_token * tokens_per_frame))


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.quick:  # the default LM only, a few frames: shows it runs
        counts, encode_frames = {"default": [4, 8]}, 16
    else:
        counts, encode_frames = {"default": [250, 500, 1000], "smollm2": [100, 200, 400]}, 1000
    out = out_dir(args)
    lines = [run_header("# "), "# Long video: frames in one prompt with mini (1 token/frame) within 24 GiB", ""]
    fits: dict[str, Any] = {}
    for lm, frames_list in counts.items():
        points = []
        for frames in frames_list:
            call = {"lm": lm, "frames": frames, "threads": args.threads}
            result = run_isolated({lm: ("benchmarks.long_video:probe", call)})[lm]
            points.append((frames, result["peak_rss_bytes"]))
            line = (
                f"{lm:8s} {frames:6d} frames: peak RSS {result['peak_rss_bytes'] / GIB:6.2f} GiB "
                f"(before prefill {result['rss_before_prefill_bytes'] / GIB:.2f}), LM KV cache "
                f"{result['kv_bytes'] / 2**20:7.1f} MiB, prefill {result['prefill_s']:7.1f} s"
            )
            print(line, flush=True)
            lines.append(line)
        intercept, slope = fit(points)
        fits[lm] = {
            "intercept_bytes": intercept,
            "bytes_per_frame": slope,
            "frames_24gib": int((24 * GIB - intercept) / slope),
        }
        lines.append(
            f"{lm}: peak RSS ~ {intercept / GIB:.2f} GiB + {slope / 1024:.1f} KiB x frames -> "
            f"{fits[lm]['frames_24gib']:,} frames in 24 GiB (extrapolated from the line through the points above)"
        )
    lines += [
        f"Vicuna-7B + CLIP-L fp16 (analytical, KV only): {vicuna_frames(1):,} frames at 1 token/frame; "
        f"{vicuna_frames(576):,} at 576 tokens/frame (LLaVA-1.5); Vicuna's trained context is 4,096 positions",
    ]
    timed = run_isolated(
        {"encode": ("benchmarks.long_video:encode_time", {"frames": encode_frames, "threads": args.threads})}
    )
    seconds = timed["encode"]["seconds"]
    lines.append(
        f"encode {encode_frames} frames (default ViT + mini projector + compression, chunks of 16): {seconds:.2f} s, "
        f"{encode_frames / seconds:.0f} frames/s, {timed['encode']['tokens']} tokens"
    )
    write_text(out / "long_video.txt", "\n".join(lines) + "\n")
    write_text(out / "long_video.json", json.dumps(fits, indent=1) + "\n")
    print("\n".join(lines[-4:]))


if __name__ == "__main__":
    main()
