"""`vlbridge train --config FILE [--set a.b=c ...] [--resume] [--run-dir DIR]`: run a staged training recipe.

The recipe (YAML, see vlbridge.train.recipe) names the model, tokenizer, data and stages; `--set` overrides any key
(`--set seed=1`, `--set data.synth.n=200`), `--run-dir` where the run is written, and `--resume` continues an
interrupted run: finished stages are skipped and an unfinished one restarts from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import Any

EPILOG = """examples:
  vlbridge train --config configs/quick.yaml      # the default's stages in small: about a minute of CPU
  vlbridge train --config configs/default.yaml --set stages.1.steps=50 --run-dir runs/try
  vlbridge train --config configs/default.yaml --set data.synth.n=200 --set seed=1
  vlbridge train --config configs/default.yaml --resume

--set KEY=VALUE sets any recipe key: a dotted path (a number indexes a list, so stages.1 is the second stage) and a
value read as YAML (50, 1.0e-3, true, [2, 4])."""


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser(
        "train",
        help="train a model with a staged recipe (resumable)",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
    )
    parser.add_argument("--config", required=True, help="recipe YAML file (configs/*.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key (repeatable; examples below)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in the run directory")
    parser.add_argument("--run-dir", default=None, help="where the run is written (overrides the recipe's run_dir)")
    parser.set_defaults(run=run, interrupted=interrupted)


def run(args: argparse.Namespace) -> int:
    """Load the recipe, train, and print where the final model is."""
    from vlbridge.train import load_recipe, train

    recipe = load_recipe(args.config, args.overrides, run_dir=args.run_dir)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 reports
    if not logging.getLogger().handlers:
        level = logging.INFO if main_process else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    run_dir = train(recipe, resume=args.resume)
    if main_process:
        print(f"trained model: {run_dir} (vlbridge chat --model {run_dir})")
    return 0


def interrupted(args: argparse.Namespace) -> str | None:
    """After Ctrl-C: the run is resumable (atomic checkpoints, finished stages kept); the command that continues it.
    Under torchrun only rank 0 says so."""
    if os.environ.get("RANK", "0") != "0":
        return None
    command = ["train", "--config", args.config]
    if args.run_dir is not None:
        command += ["--run-dir", args.run_dir]
    for override in args.overrides:
        command += ["--set", override]
    return f"training interrupted; the run is resumable: vlbridge {shlex.join([*command, '--resume'])}"
