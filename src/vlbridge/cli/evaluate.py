"""`vlbridge eval`: answer a benchmark in its standard file layout and score it per question type.

vlbridge eval --model M --data DIR                                       (synthetic held-out set, the default task)
vlbridge eval --model M --task llava --questions Q.jsonl --image-folder DIR [--answers REFS.jsonl]
vlbridge eval --model M --task vqav2 --questions Q.json --annotations A.json --image-folder DIR
vlbridge eval --model M --task gqa --questions Q.json --image-folder DIR
vlbridge eval --model M --task mmbench --questions MMBench_DEV_EN.tsv [--no-circular]
vlbridge eval text-retention --base LM --model VLM ...                    (flags of its own; see its --help)

Runs resume into their --out folder; the benchmark's own result files are written beside predictions.jsonl.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import vlbridge
from vlbridge.cli.arguments import Parser
from vlbridge.dtypes import DTYPE_CHOICES
from vlbridge.errors import ConfigError
from vlbridge.eval.runner import evaluate
from vlbridge.eval.tasks import TASKS, Task, TaskOption
from vlbridge.lm.int8 import QUANTIZATIONS


def task_names() -> list[str]:
    """The registered tasks, sorted (registration order follows module imports, which say nothing to a user).

    Read from the registry on every call, so a task registered later is offered like the built-in ones."""
    return sorted(TASKS.names())


def task_options() -> dict[str, tuple[TaskOption, list[str]]]:
    """Every option a registered task is built from, by name, with the tasks that read it."""
    options: dict[str, tuple[TaskOption, list[str]]] = {}
    for name in task_names():
        for option in TASKS.get(name).options:
            known, users = options.setdefault(option.name, (option, []))
            assert known == option, f"tasks {users} and {name} declare the option {option.name!r} differently"
            users.append(name)
    return options


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser(
        "eval",
        help=f"score a model on a benchmark ({', '.join(task_names())}) or check text retention",
        description=__doc__.splitlines()[0],
        epilog="`vlbridge eval text-retention --help` lists the flags of the text-retention check.",
    )
    _add_arguments(parser)
    parser.set_defaults(run=run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `vlbridge eval` (the text-retention words are taken whole by the positional)."""
    parser.add_argument(
        "eval_command",
        nargs=argparse.REMAINDER,
        metavar="text-retention ...",
        help="run the text-retention check instead, with the flags that follow (they are its own)",
    )
    parser.add_argument(
        "--task", default="synthetic", choices=task_names(), help="benchmark layout (default synthetic)"
    )
    parser.add_argument("--model", default=None, help="checkpoint dir (default: the embedded model)")
    parser.add_argument("--out", default=None, help="folder for predictions, scores and result files")
    parser.add_argument("--batch-size", type=int, default=32, help="questions answered together")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's (12 to 128)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="weights dtype (default: fp32)")
    parser.add_argument("--quantize", default=None, choices=QUANTIZATIONS, help="int8: int8 weight-only LM layers")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    group = parser.add_argument_group("task options", "each is read by the tasks named in [brackets]")
    for option, users in task_options().values():
        help_text = f"{option.help} [{', '.join(users)}]"
        if option.switch:
            group.add_argument(option.flag, action="store_true", help=help_text)
        else:
            group.add_argument(option.flag, default=None, choices=option.choices, help=help_text)


def _task_values(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen task's option values; any other task's option that was given raises ConfigError, as the chosen
    task would silently ignore it."""
    own = {option.name for option in TASKS.get(args.task).options}
    options = task_options()
    stray = sorted(name for name in options if name not in own and getattr(args, name) not in (None, False))
    if stray:
        option, users = options[stray[0]]
        raise ConfigError(f"{option.flag} is not used by --task {args.task}; it is for --task {' or '.join(users)}")
    return {name: getattr(args, name) for name in own}


def build_task(args: argparse.Namespace) -> tuple[Task, Path]:
    """The task the flags describe, loaded and validated (before any model is loaded), and the folder its results
    go to: --out, else the task's default."""
    task_class, values = TASKS.get(args.task), _task_values(args)
    task = task_class.from_options(values, limit=args.limit, model=args.model)
    return task, Path(args.out) if args.out is not None else task_class.default_out(values, args.model)


def _print_scores(scores: Mapping[str, Any]) -> None:
    """One table per breakdown ("by_<key>"), with a column per baseline ("*_baseline") its rows carry; then scalars."""
    for key, table in scores.items():
        if not key.startswith("by_"):
            continue
        width = max(len(key) - 3, *(len(str(name)) for name in table)) + 1
        baselines = sorted({field for row in table.values() for field in row if field.endswith("_baseline")})
        heads = [b.replace("_", " ") for b in baselines]
        print(f"{key[3:]:<{width}} {'n':>6} {'accuracy':>9}" + "".join(f" {h:>18}" for h in heads))
        for name, row in table.items():
            line = f"{name!s:<{width}} {row['n']:>6} {row['accuracy']:>9.3f}"
            for b in baselines:
                line += f" {row[b]:>18.3f}" if b in row else f" {'-':>18}"
            print(line)
    for key, value in scores.items():
        if not key.startswith("by_"):
            print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")


def run_text_retention(argv: Sequence[str], args: argparse.Namespace | None = None) -> int:
    """`vlbridge eval text-retention ...`: parse the rest with the retention module's own flags and run it.

    `args`, the `vlbridge eval` namespace, must hold no eval flags: written before the word, they would be taken
    by `vlbridge eval` and never reach the check.
    """
    if args is not None:
        probe = argparse.ArgumentParser()
        _add_arguments(probe)
        defaults = vars(probe.parse_args([]))
        given = [
            name for name, default in defaults.items() if name != "eval_command" and getattr(args, name) != default
        ]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(f"{flag} was given before text-retention; put every flag after the word")
    try:
        retention = importlib.import_module("vlbridge.cli.retention")
    except ModuleNotFoundError as err:
        if err.name != "vlbridge.cli.retention":
            raise
        raise ConfigError("this build of vlbridge has no text-retention check (vlbridge.cli.retention)") from None
    return int(retention.run(retention_parser(retention).parse_args(list(argv))) or 0)


def retention_parser(retention: ModuleType) -> argparse.ArgumentParser:
    """The parser of `vlbridge eval text-retention`, made from the retention module's flags."""
    parser = Parser(prog="vlbridge eval text-retention", description=(retention.__doc__ or "").strip())
    retention.add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate the task, write its files, and print accuracy per type (beside the baselines where known)."""
    if args.eval_command:
        if args.eval_command[0] != "text-retention":
            raise ConfigError(
                f"unknown eval command {args.eval_command[0]!r}; the only one is text-retention "
                "(benchmarks are chosen with --task)"
            )
        return run_text_retention(args.eval_command[1:], args)
    task, out = build_task(args)
    model, processor = vlbridge.load(args.model, dtype=args.dtype, device=args.device, quantize=args.quantize)
    run_info = {
        "model": str(Path(args.model).resolve()) if args.model else "embedded default",
        "dtype": args.dtype or "default",
        **({"quantize": args.quantize} if args.quantize else {}),  # absent for float: older run.json files match
    }
    result = evaluate(
        model, processor, task, out, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, run=run_info
    )
    if result.scores is None:
        print(f"no references given: {len(result.rows)} predictions written, not scored")
    else:
        _print_scores(result.scores)
    print(f"written in {out}: {', '.join(['predictions.jsonl', *(f.name for f in result.files)])}")
    return 0
