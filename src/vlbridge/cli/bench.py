"""`vlbridge bench profile`: FLOPs by part, prefill latency, peak memory and KV cache per image, per model.

Models are built-in presets (llava-v1.5-7b, llava-mini-7b), YAML model configs or checkpoint directories. FLOPs are
counted analytically on the meta device (no weights needed); `--measure` also runs the prefill on a device.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from vlbridge.bench.flops import PAPER_TEXT_TOKENS, PRESETS
from vlbridge.bench.profiler import format_report, profile, write_report
from vlbridge.errors import ConfigError


def add_parser(sub: Any) -> None:
    """Register `bench` and its `profile` subcommand."""
    bench = sub.add_parser("bench", help="efficiency benchmarks")
    commands = bench.add_subparsers(dest="bench_command", required=True)
    parser = commands.add_parser("profile", help="FLOPs, latency, peak memory and KV cache per image, per model")
    parser.add_argument(
        "models",
        nargs="*",
        default=list(PRESETS),
        help=f"presets ({', '.join(PRESETS)}), YAML model configs or checkpoint dirs (default: the presets)",
    )
    parser.add_argument(
        "--text-tokens",
        type=int,
        default=PAPER_TEXT_TOKENS,
        help=f"text tokens in the prompt beside the image (default {PAPER_TEXT_TOKENS}: LLaVA-Mini Table 14's setting)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config key for every model, e.g. connector.name=pool",
    )
    parser.add_argument("--kv-dtype", default="float16", help="element type of the KV cache (default float16)")
    parser.add_argument("--measure", action="store_true", help="also measure prefill latency and peak memory")
    parser.add_argument("--device", default="cpu", help="device for --measure (cpu, cuda, cuda:1, ...)")
    parser.add_argument(
        "--dtype", default=None, help="weights dtype for --measure (default: float32 on CPU, else float16)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed prefills (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed prefills before timing")
    parser.add_argument("--random-weights", action="store_true", help="measure checkpoints with random weights")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure on CPU in this process instead of a fresh one (faster, memory less exact)",
    )
    parser.add_argument("--out", default=None, help="folder to write profile.md, profile.json and profile.png")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the markdown table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Profile the models, print the report and write it to --out."""
    if args.text_tokens < 1:
        raise ConfigError(f"--text-tokens must be >= 1, got {args.text_tokens}")
    options: dict[str, Any] = {}
    if args.measure:
        options = {
            "dtype": args.dtype,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "random_weights": args.random_weights,
            "isolate": False if args.in_process else None,
        }
    report = profile(
        args.models,
        text_tokens=args.text_tokens,
        overrides=args.overrides,
        kv_dtype=args.kv_dtype,
        measure_on=args.device if args.measure else None,
        **options,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report), end="")
    if args.out:
        paths = write_report(report, args.out)
        if not args.json:
            print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
