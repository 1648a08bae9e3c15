"""`vlbridge quantize MODEL --out DIR`: an int8 weight-only copy of a checkpoint (vlbridge.deploy.quantize)."""

from __future__ import annotations

import argparse
from typing import Any

from vlbridge.deploy.quantize import quantize_checkpoint
from vlbridge.dtypes import DTYPE_CHOICES
from vlbridge.lm.int8 import QUANTIZATIONS


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("quantize", help="write an int8 weight-only copy of a checkpoint")
    parser.add_argument("model", nargs="?", default=None, help="checkpoint dir (default: the embedded model)")
    parser.add_argument("--out", required=True, help="folder to write the quantised checkpoint to")
    parser.add_argument("--format", default="int8", choices=QUANTIZATIONS, help="the weight format (int8)")
    parser.add_argument(
        "--dtype", default=None, choices=DTYPE_CHOICES, help="dtype of the weights left float (default: fp32)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Quantise and save; print what was written."""
    int8, other = quantize_checkpoint(args.model, args.out, args.format, args.dtype)
    print(f"written {args.out}: {int8:,} int8 weights (the language model's linear layers), {other:,} float")
    return 0
