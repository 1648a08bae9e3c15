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
from typing import Any

import vlbridge
from vlbridge.dtypes import DTYPE_CHOICES
from vlbridge.errors import ConfigError
from vlbridge.eval.runner import evaluate
from vlbridge.eval.tasks import GQATask, LlavaTask, MMBenchTask, SyntheticTask, Task, VQAv2Task
from vlbridge.eval.tasks.llava import METRICS, model_id

TASK_NAMES = ("synthetic", "llava", "vqav2", "gqa", "mmbench")
TASK_FLAGS = {
    "synthetic": {"data", "split"},
    "llava": {"questions", "image_folder", "answers", "prompt_suffix", "metric"},
    "vqav2": {"questions", "image_folder", "annotations", "image_pattern", "prompt_suffix"},
    "gqa": {"questions", "image_folder", "image_pattern", "prompt_suffix"},
    "mmbench": {"questions", "prompt_suffix", "no_circular"},
}
"""The task-specific flags (as argparse dests) each task reads; giving one to another task is an error."""


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser(
        "eval",
        help="score a model on a benchmark (synthetic, llava, vqav2, gqa, mmbench) or check text retention",
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
    parser.add_argument("--task", default="synthetic", choices=TASK_NAMES, help="benchmark layout (default synthetic)")
    parser.add_argument("--model", default=None, help="checkpoint dir (default: the embedded model)")
    parser.add_argument("--out", default=None, help="folder for predictions, scores and result files")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's (12 to 128)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--dtype", default=None, choices=DTYPE_CHOICES)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    group = parser.add_argument_group("synthetic")
    group.add_argument("--data", default=None, help="dataset folder written by `vlbridge data synth`")
    group.add_argument("--split", default=None, help="which held-out file: test (default, test.jsonl) or val")
    group = parser.add_argument_group("llava, vqav2, gqa, mmbench")
    group.add_argument("--questions", default=None, help="question file (JSONL, JSON or TSV as the task reads)")
    group.add_argument("--image-folder", default=None, help="folder the question images are in")
    group.add_argument("--prompt-suffix", default=None, help="line added after each question ('' for none)")
    group.add_argument("--answers", default=None, help="llava: reference JSONL {question_id, answer(s)} to score")
    group.add_argument("--metric", default=None, choices=METRICS, help="llava: exact match (default) or vqa accuracy")
    group.add_argument("--annotations", default=None, help="vqav2: official annotations JSON to score")
    group.add_argument(
        "--image-pattern", default=None, help="vqav2/gqa: image name, e.g. 'COCO_val2014_{image_id:012d}.jpg'"
    )
    group.add_argument("--no-circular", action="store_true", help="mmbench: ask each question once, unrotated")


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse task-specific flags the chosen task would silently ignore."""
    given = {name for flags in TASK_FLAGS.values() for name in flags if getattr(args, name) not in (None, False)}
    stray = sorted(given - TASK_FLAGS[args.task])
    if stray:
        flag = "--" + stray[0].replace("_", "-")
        users = [name for name, flags in TASK_FLAGS.items() if stray[0] in flags]
        raise ConfigError(f"{flag} is not used by --task {args.task}; it is for --task {' or '.join(users)}")


def build_task(args: argparse.Namespace) -> Task:
    """The task the flags describe, loaded and validated (before any model is loaded)."""
    _check_flags(args)
    suffix = {} if args.prompt_suffix is None else {"suffix": args.prompt_suffix}
    pattern = {} if args.image_pattern is None else {"image_pattern": args.image_pattern}
    if args.task == "synthetic":
        if args.data is None:
            raise ConfigError("--task synthetic needs --data DIR (a folder written by `vlbridge data synth`)")
        return SyntheticTask.from_folder(args.data, args.split or "test", limit=args.limit)
    if args.task == "llava":
        return LlavaTask(
            args.questions,
            args.image_folder,
            references=args.answers,
            model_name=model_id(args.model),
            metric=args.metric or "exact",
            limit=args.limit,
            **suffix,
        )
    if args.task == "vqav2":
        return VQAv2Task(
            args.questions, args.image_folder, annotations=args.annotations, limit=args.limit, **suffix, **pattern
        )
    if args.task == "gqa":
        return GQATask(args.questions, args.image_folder, limit=args.limit, **suffix, **pattern)
    return MMBenchTask(args.questions, circular=not args.no_circular, limit=args.limit, **suffix)


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
    parser = argparse.ArgumentParser(prog="vlbridge eval text-retention", description=(retention.__doc__ or "").strip())
    retention.add_arguments(parser)
    return int(retention.run(parser.parse_args(list(argv))) or 0)


def run(args: argparse.Namespace) -> int:
    """Evaluate the task, write its files, and print accuracy per type (beside the baselines where known)."""
    if args.eval_command:
        if args.eval_command[0] != "text-retention":
            raise ConfigError(
                f"unknown eval command {args.eval_command[0]!r}; the only one is text-retention "
                "(benchmarks are chosen with --task)"
            )
        return run_text_retention(args.eval_command[1:], args)
    task = build_task(args)
    if args.out is not None:
        out = Path(args.out)
    elif args.task == "synthetic":
        out = Path(args.data) / "eval"
    else:
        out = Path(args.questions).parent / "answers" / model_id(args.model)
    model, processor = vlbridge.load(args.model, dtype=args.dtype, device=args.device)
    run_info = {
        "model": str(Path(args.model).resolve()) if args.model else "embedded default",
        "dtype": args.dtype or "default",
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
