"""`vlbridge eval text-retention`: the VLM's LLM (loaded text-only) against the base LLM on held-out text (SPEC §5).

    vlbridge eval text-retention --base LM_PATH --model VLM_PATH --data TEXT_FILE [--qa QA_JSONL] [--out REPORT]
        [--quantize int8]

Prints perplexity (and QA accuracy) of both with the relative difference (vlm - base) / base and its verdict against
the tolerance (default +-3%), and the resident memory of the text-only deployment against the full one. The JSON report
is written atomically. Exit status 0 when every metric is within the tolerance, 1 when one is not.

`--quantize int8` loads the VLM side with int8 weight-only LM layers (the base as it is): `--base` and `--model` the
same checkpoint then measure the perplexity change of the quantisation.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from vlbridge.atomic import write_text
from vlbridge.dtypes import DTYPE_CHOICES
from vlbridge.eval.retention import DEFAULT_TOLERANCE, QA_PROMPTS, compare
from vlbridge.lm.int8 import QUANTIZATIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `vlbridge eval text-retention`."""
    parser.add_argument("--base", required=True, help="the base text LLM checkpoint (before visual training)")
    parser.add_argument("--model", required=True, help="the VLM checkpoint; its LLM is loaded text-only")
    parser.add_argument("--data", required=True, help="held-out plain-text file for perplexity")
    parser.add_argument("--qa", default=None, help='text QA JSONL: {"question": ..., "answer": ...} per line')
    parser.add_argument("--out", default="text_retention.json", help="where the JSON report goes")
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="allowed |relative difference| (0.03 = 3%%)"
    )
    parser.add_argument("--window", type=int, default=None, help="perplexity window (default: the context length)")
    parser.add_argument("--batch-size", type=int, default=4, help="perplexity windows and QA prompts run together")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length for QA")
    parser.add_argument("--qa-prompt", default="chat", choices=QA_PROMPTS, help="chat template, or the bare question")
    parser.add_argument("--no-memory", action="store_true", help="skip the text-only vs full memory measurement")
    parser.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="weights dtype (default: fp32)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--quantize", default=None, choices=QUANTIZATIONS, help="int8: load the --model side with int8 weight-only LM"
    )
    parser.add_argument("--json", action="store_true", help="print the report JSON instead of a table")


def _pct(value: float | None) -> str:
    return "undefined" if value is None else f"{100 * value:+.2f}%"


def table(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    tol = f"+-{100 * report['tolerance']:g}%"
    lines = [f"{'metric':<16} {'base':>12} {'vlm':>12} {'difference':>11}  verdict ({tol})"]
    for name, section, key in (("perplexity", report["perplexity"], "ppl"), ("qa accuracy", report.get("qa"), None)):
        if section is None:
            continue
        base = section["base"][key] if key else section["accuracy"]["base"]
        vlm = section["model"][key] if key else section["accuracy"]["model"]
        verdict = "within" if section["within_tolerance"] else "OUTSIDE"
        lines.append(f"{name:<16} {base:>12.4f} {vlm:>12.4f} {_pct(section['relative_difference']):>11}  {verdict}")
    counted = f"{report['perplexity']['base']['tokens']} tokens in windows of {report['window']}"
    if "qa" in report:
        counted += f"; {report['qa']['n']} questions"
    lines.append(f"({counted})")
    if "memory" in report:
        memory = report["memory"]
        lines.append(f"{'memory (MiB)':<16} {'full':>12} {'text-only':>12} {'saving':>11}")
        for key, label in (("param_mb", "parameters"), ("load_rss_mb", "RSS of load"), ("peak_rss_mb", "peak RSS")):
            saving = memory["text_only_saving"].get(key)
            shown = "-" if saving is None else f"{100 * saving:.1f}%"
            lines.append(f"{label:<16} {memory['full'][key]:>12.1f} {memory['text_only'][key]:>12.1f} {shown:>11}")
    lines.append("text ability retained" if report["retained"] else "text ability NOT retained within the tolerance")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Measure, write the report atomically, print it; 1 when a metric is outside the tolerance."""
    report = compare(
        args.base,
        args.model,
        args.data,
        args.qa,
        tolerance=args.tolerance,
        window=args.window,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        qa_prompt=args.qa_prompt,
        memory=not args.no_memory,
        dtype=args.dtype,
        device=args.device,
        quantize=args.quantize,
    )
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else table(report))
    if not args.json:
        print(f"report in {args.out}")
    return 0 if report["retained"] else 1
