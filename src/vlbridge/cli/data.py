"""`vlbridge data synth`: render the synthetic visual world (images, captions, instructions, held-out test set)."""

from __future__ import annotations

import argparse
from typing import Any

from vlbridge.data.synthetic.writer import DEFAULT_TURNS, synthesize


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("data", help="dataset tools")
    data_sub = parser.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="render the synthetic visual world into a folder")
    add_arguments(synth)
    synth.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `vlbridge data synth`."""
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--n", type=int, default=5000, help="number of images over all splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    parser.add_argument("--turns", type=int, nargs=2, default=DEFAULT_TURNS, help="question turns per training image")
    parser.add_argument(
        "--focus", nargs="+", default=(), metavar="TYPE", help="one more training turn of each TYPE per image"
    )
    parser.add_argument(
        "--spatial", type=float, default=0.0, help="chance a training relation/choice question names objects by region"
    )
    parser.add_argument("--drills", type=int, default=0, help="text-only relation conversations (drills.json)")
    parser.add_argument(
        "--varied-names", type=float, default=0.0, help="chance a caption names an object without its colour or shape"
    )


def run(args: argparse.Namespace) -> int:
    """Write the dataset and print a summary per split (questions, mean majority-answer baseline)."""
    stats = synthesize(
        args.out,
        args.n,
        args.seed,
        args.image_size,
        args.test_fraction,
        args.val_fraction,
        args.overwrite,
        args.turns,
        args.focus,
        args.spatial,
        args.drills,
        args.varied_names,
    )
    print(f"wrote {stats['images']} images to {args.out} (answers and baselines per type: stats.json)")
    for split, summary in stats["splits"].items():
        baseline = summary["mean_majority_baseline"]
        print(f"{split}: {summary['questions']} questions, mean majority-answer baseline {baseline:.3f}")
    return 0
