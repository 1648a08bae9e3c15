"""`vlbridge export MODEL --format llava-hf|hf-lm --out DIR`: write a checkpoint in a layout other engines load."""

from __future__ import annotations

import argparse
from typing import Any

from vlbridge.deploy.export_hf import FORMATS, export
from vlbridge.model.io import load


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("export", help="write a model as an HF llava directory, or its language model alone")
    parser.add_argument("model", nargs="?", default=None, help="checkpoint dir (default: the embedded model)")
    parser.add_argument("--format", choices=FORMATS, default="llava-hf", help="llava-hf (default) or hf-lm")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument(
        "--legacy-keys",
        action="store_true",
        help="llava-hf with transformers 4's key names (language_model.model.*, vision_tower.vision_model.*), "
        "which llama.cpp's llava conversion matches",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the model (no vision weights for hf-lm) and export it."""
    model, _ = load(args.model, vision=args.format == "llava-hf")
    out = export(model, args.out, format=args.format, legacy_keys=args.legacy_keys)
    print(f"wrote {args.format} to {out}")
    return 0
