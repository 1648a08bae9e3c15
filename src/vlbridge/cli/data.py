"""`vlbridge data synth`: render the synthetic visual world (images, captions, instructions, held-out test set)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("data", help="dataset tools")
    data_sub = parser.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="render the synthetic visual world into a folder")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--n", type=int, default=2000, help="number of training scenes")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=None, help="side of the square images in pixels")
    synth.add_argument("--turns", type=int, nargs=2, default=None, help="question turns per training image (lo hi)")
    synth.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    """Write the dataset and print its statistics (answers per type, majority baseline)."""
    from vlbridge.data.synthetic import synthesize

    kwargs = {} if args.image_size is None else {"image_size": args.image_size}
    if args.turns is not None:
        kwargs["turns"] = tuple(args.turns)
    stats = synthesize(args.out, n=args.n, seed=args.seed, **kwargs)
    print(json.dumps(stats, indent=2))
    return 0
