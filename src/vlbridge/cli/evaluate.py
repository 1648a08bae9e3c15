"""`vlbridge eval`: answer a held-out set (the synthetic world's test.jsonl layout) and score it per question type."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import vlbridge
from vlbridge.data.llava_json import load_eval
from vlbridge.errors import DataError
from vlbridge.eval.runner import evaluate


def add_parser(sub: Any) -> None:
    """Register the subcommand."""
    parser = sub.add_parser("eval", help="score a model on a held-out question set, per question type")
    parser.add_argument("--model", default=None, help="checkpoint dir (default: the embedded model)")
    parser.add_argument("--data", required=True, help="dataset folder written by `vlbridge data synth`")
    parser.add_argument("--split", default="test", help="which held-out file: test (test.jsonl) or val")
    parser.add_argument("--out", default=None, help="where predictions.jsonl and scores.json go (default: DATA/eval)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.set_defaults(run=run)


def majority_baselines(data: Path, split: str) -> dict[str, float]:
    """Majority-answer accuracy per type (and overall, weighted by count) from the dataset's stats.json."""
    stats_file = data / "stats.json"
    if not stats_file.is_file():
        return {}
    types = json.loads(stats_file.read_text())["splits"][split]["types"]
    total = sum(t["count"] for t in types.values())
    baselines = {name: t["majority_baseline"] for name, t in types.items()}
    baselines["overall"] = sum(t["count"] * t["majority_baseline"] for t in types.values()) / total
    return baselines


def run(args: argparse.Namespace) -> int:
    """Evaluate and print accuracy per type beside the majority-answer baseline."""
    data = Path(args.data)
    questions = data / f"{args.split}.jsonl"
    if not questions.is_file():
        raise DataError(f"no {questions.name} in {data}; write the dataset with `vlbridge data synth --out {data}`")
    items = load_eval(questions).items[: args.limit]
    model, processor = vlbridge.load(args.model, dtype=args.dtype, device=args.device)
    out = Path(args.out) if args.out else data / "eval"
    scores = evaluate(
        model,
        processor,
        items,
        data,
        out,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        baselines=majority_baselines(data, args.split),
        run={"model": str(Path(args.model).resolve()) if args.model else "embedded default", "split": args.split},
    )
    print(f"{'type':<16} {'n':>5} {'accuracy':>9} {'majority baseline':>18}")
    for name, row in scores["by_type"].items():
        baseline = row.get("majority_baseline")
        shown = f"{baseline:>18.3f}" if baseline is not None else f"{'-':>18}"
        print(f"{name:<16} {row['n']:>5} {row['accuracy']:>9.3f} {shown}")
    print(f"predictions and scores in {out}")
    return 0
