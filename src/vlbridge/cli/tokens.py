"""`vlbridge tokens`: the token budget of a context window per connector design (SPEC section 3).

    vlbridge tokens --context 4096 [--model PATH | --lm vicuna-7b] [--frames N] [--text-reserve T] [--json]
    vlbridge tokens --video FILE [--fps 1] [--max-frames 32] [--model PATH]

Per design: visual tokens per image, tokens left for text, video frames that fit (each frame compressed on its own:
floor((context - text reserve) / tokens per frame); the text reserve defaults to 0) and the KV-cache memory of one
image's tokens. Without --model the vision tower is CLIP ViT-L/14-336 (576 patches) and the LM a preset (Vicuna-7B by
default: 0.5 MiB of fp16 KV cache per token); with --model both come from the checkpoint's config, and its own
connector gets a row of its own. With --video the file is read by the model's own processor (--model, else the
embedded default), as `vlbridge chat --video` reads it: the frames sampled at --fps up to --max-frames, the visual
tokens its connector gives them, and what that leaves of the context.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from vlbridge.bench.token_budget import (
    CLIP_L_336,
    DEFAULT_MINI_GRIDS,
    KV_DTYPE_BYTES,
    LM_PRESETS,
    BudgetRow,
    VideoTokens,
    Window,
    budget,
    default_designs,
    kv_bytes,
    model_row,
    video_tokens,
    vision_patches,
)
from vlbridge.errors import ConfigError


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("tokens", help="visual tokens, text left, frames and KV memory per connector design")
    parser.add_argument("--context", type=int, default=None, help="context window (default: the model's, else 4096)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="checkpoint dir: its LM, vision tower and connector")
    source.add_argument("--lm", default=None, choices=sorted(LM_PRESETS), help="LM preset (default: vicuna-7b)")
    parser.add_argument("--frames", type=int, default=None, help="also show whether N video frames fit")
    parser.add_argument(
        "--text-reserve", type=int, default=0, help="tokens kept for text when counting frames that fit (default 0)"
    )
    parser.add_argument("--kv-dtype", default="fp16", choices=sorted(KV_DTYPE_BYTES), help="KV-cache element type")
    parser.add_argument(
        "--mini-grid",
        type=int,
        nargs="+",
        default=list(DEFAULT_MINI_GRIDS),
        help="LLaVA-Mini C values (C x C compressed tokens per image)",
    )
    parser.add_argument("--anyres-grid", default="2x2", help="AnyRes tile grid ROWSxCOLS (plus the base view)")
    parser.add_argument("--video", default=None, help="count this video file's frames and tokens with the processor")
    parser.add_argument("--fps", type=float, default=1.0, help="video frames sampled per second (default: 1)")
    parser.add_argument("--max-frames", type=int, default=32, help="most video frames (default: 32)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def _grid(text: str) -> tuple[int, int]:
    rows, sep, cols = text.lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit() or int(rows) < 1 or int(cols) < 1:
        raise ConfigError(f"--anyres-grid must look like 2x2 (rows x columns, each >= 1), got {text!r}")
    return int(rows), int(cols)


def _setting(args: argparse.Namespace) -> tuple[Any, ...]:
    """(model config or None, LM config, LM name, vision config, image size or None, context) from the flags."""
    if not args.model:
        name = args.lm or "vicuna-7b"
        return None, LM_PRESETS[name], name, CLIP_L_336, None, 4096 if args.context is None else args.context
    from vlbridge.model.io import read_config

    config, _ = read_config(Path(args.model))
    lm = config.language_model
    context = lm.max_position_embeddings if args.context is None else args.context
    if config.vision is None:
        return config, lm, f"{args.model} (its language model)", CLIP_L_336, None, context
    return config, lm, f"{args.model} (its language model)", config.vision, config.image_processor.crop_size, context


def compute(args: argparse.Namespace) -> dict[str, Any]:
    """The budget as a JSON-ready dict: the setting (context, LM, vision, KV per token) and one row per design."""
    config, lm, lm_name, vision, image_size, context = _setting(args)
    dtype_bytes = KV_DTYPE_BYTES[args.kv_dtype]
    window = Window(context, lm, dtype_bytes, args.text_reserve, args.frames)
    designs = default_designs(tuple(args.mini_grid), _grid(args.anyres_grid))
    rows: list[BudgetRow] = []
    if config is not None and config.vision is not None:
        rows.append(model_row(config, window))
        vision_name = f"{args.model} (its vision encoder)"
    elif config is not None:
        vision_name = "CLIP ViT-L/14-336 (assumed: the checkpoint has no vision encoder)"
    else:
        vision_name = "CLIP ViT-L/14-336"
    rows += budget(window, vision, designs, image_size)
    return {
        "context": context,
        "text_reserve": args.text_reserve,
        "language_model": {
            "name": lm_name,
            "layers": lm.num_hidden_layers,
            "kv_heads": lm.num_key_value_heads,
            "head_dim": lm.resolved_head_dim,
            "max_position_embeddings": lm.max_position_embeddings,
        },
        "kv_dtype": args.kv_dtype,
        "kv_bytes_per_token": kv_bytes(1, lm, dtype_bytes),
        "vision": {"name": vision_name, "patches_per_image": vision_patches(vision, image_size)},
        "rows": [dataclasses.asdict(row) for row in rows],
        "video": None if args.video is None else _video(args, context),
    }


def _video(args: argparse.Namespace, context: int) -> dict[str, Any]:
    """The --video file counted by the model's processor, and the context it leaves."""
    count: VideoTokens = video_tokens(args.model, args.video, args.fps, args.max_frames)
    model = args.model or "the embedded default model"
    return {"file": args.video, "model": model, **dataclasses.asdict(count), "text_left": context - count.tokens}


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def run(args: argparse.Namespace) -> int:
    """Print the budget table (or JSON)."""
    facts = compute(args)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    lm, vision = facts["language_model"], facts["vision"]
    print(f"context            {facts['context']} tokens (text reserve for frames: {facts['text_reserve']})")
    print(f"language model     {lm['name']}: {lm['layers']} layers x 2 x {lm['kv_heads']} kv heads x {lm['head_dim']}")
    print(f"KV cache           {_mib(facts['kv_bytes_per_token'])} per token ({facts['kv_dtype']})")
    print(f"vision             {vision['name']}: {vision['patches_per_image']} patches per image")
    if facts["context"] > lm["max_position_embeddings"]:
        print(f"note               the context exceeds the LM's {lm['max_position_embeddings']} positions")
    frames = args.frames
    head = f"{'design':<22} {'tokens/img':>10} {'text left':>9} {'frames fit':>10} {'KV/img':>12}"
    if frames is not None:
        head += f" {f'{frames} frames':>11} {'fits':>4} {f'KV {frames} fr':>13}"
    print(head + "  source     note")
    for row in facts["rows"]:
        fit = "unbounded" if row["frames_fit"] is None else str(row["frames_fit"])
        line = f"{row['design']:<22} {row['tokens_per_image']:>10} {row['text_left']:>9} {fit:>10}"
        line += f" {_mib(row['kv_bytes_per_image']):>12}"
        if frames is not None:
            extra = row["frames"]
            line += f" {extra['tokens']:>11} {'yes' if extra['fits'] else 'no':>4} {_mib(extra['kv_bytes']):>13}"
        print((line + f"  {row['source']:<10} {row['note']}").rstrip())
    video = facts["video"]
    if video is not None:
        print(
            f"video              {video['file']}: {video['frames']} frames at {args.fps:g} fps (at most "
            f"{args.max_frames}) -> {video['tokens']} visual tokens with {video['model']} ({video['connector']}); "
            f"{video['text_left']} of the {facts['context']} left for text"
        )
    return 0
