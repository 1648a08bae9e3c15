"""The `vlbridge` command: one entry point, one thin module per subcommand.

vlbridge info PATH
vlbridge chat [--model PATH] [--image FILE] ["question"]
vlbridge data synth --out DIR --n N --seed S | --recipe FILE
vlbridge data filter DATA --scorer STAGE_DIR --out FILE [--threshold 0.7]    (and: data dedup DATA --out FILE)
vlbridge train --config FILE [--set a.b=c] [--resume]      (also under torchrun -m vlbridge)
vlbridge eval --model PATH --data DIR | --task llava|vqav2|gqa|mmbench ...
vlbridge eval text-retention --base LM_PATH --model VLM_PATH --data TEXT_FILE
vlbridge bench profile [MODEL ...] [--measure]
vlbridge tokens --context 4096
vlbridge ship RUN_DIR --data DIR [--dest DIR]
vlbridge export [MODEL] --format llava-hf|hf-lm --out DIR [--legacy-keys]
vlbridge serve [--model PATH] [--port 8000] [--api-keys FILE] [--text-only] [--max-batch N]
vlbridge convert gguf FILE --out DIR
vlbridge quantize [MODEL] --out DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from vlbridge.cli import bench, chat, convert, data, evaluate, export, info, quantize, serve, ship, tokens, train
from vlbridge.cli.arguments import Parser, check_arguments
from vlbridge.errors import VlbridgeError

SUBCOMMANDS = (info, chat, data, train, evaluate, bench, tokens, ship, export, quantize, convert, serve)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered (each flag's help shows its default)."""
    parser = Parser(prog="vlbridge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


EXIT_BROKEN_PIPE = 141
"""What a shell reports for a Unix tool stopped by SIGPIPE (128 + 13): its reader went away (`vlbridge chat | head`)."""

EXIT_INTERRUPTED = 130
"""What a shell reports for a command stopped by Ctrl-C (128 + SIGINT's 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors (an argument that is not UTF-8 among them) print one clear line and exit with status 2;
    a closed output pipe and Ctrl-C end it quietly (a subcommand's `interrupted(args)`, when it sets one, says what
    Ctrl-C left, e.g. how to resume)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        check_arguments(argv)
        args = build_parser().parse_args(argv)
        return int(args.run(args) or 0)
    except VlbridgeError as err:
        print(f"vlbridge: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Python's documented recipe: stdout now points nowhere, so the flush at exit cannot raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(file=sys.stderr)  # the terminal echoed ^C mid-line: the shell prompt starts on a line of its own
        note = args.interrupted(args) if hasattr(args, "interrupted") else None
        if note:
            print(f"vlbridge: {note}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
