"""Resident memory of a text-only deployment (`vlbridge.load(path, vision=False)`) against the full model.

Each load runs in a fresh process and reports the resident memory the loaded model adds (VmRSS after minus
before), the process's peak (VmHWM) and the bytes of its parameters, so nothing is shared between the two. The
measuring is `vlbridge.eval.retention.deployment_memory` (which `vlbridge eval text-retention` reports too); this
script runs it on a random ~212M llava checkpoint (`--quick`: a 64-wide, 2-layer one of the same layout).
The seed article quotes ~40% less memory for text-only deployments; the saving is the vision tower's share.

    python -m benchmarks.text_only_memory [--dtype bfloat16]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks._checkpoints import FULL, QUICK, write_llava_checkpoint
from benchmarks._suite import Report, benchmark_parser
from vlbridge.eval.retention import deployment_memory, memory_saving


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    report = Report("text_only_memory", args)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        write_llava_checkpoint(path, QUICK if args.quick else FULL)
        measured = deployment_memory(path, args.dtype)
    full, text, saving = vars(measured["full"]), vars(measured["text_only"]), memory_saving(measured)
    report.line(f"{args.dtype}; 'added by load' = VmRSS after minus before building and loading the model")
    report.line(f"{'deployment':<12} {'params MB':>10} {'peak RSS MB':>12} {'added by load MB':>17}")
    for name, row in (("full", full), ("text-only", text)):
        report.line(f"{name:<12} {row['param_mb']:>10.1f} {row['peak_rss_mb']:>12.1f} {row['load_rss_mb']:>17.1f}")
    for key, label in (
        ("param_mb", "parameters"),
        ("load_rss_mb", "resident memory added by the loaded model"),
        ("peak_rss_mb", "peak RSS"),
    ):
        report.line(f"text-only saves {100 * saving[key]:.1f}% of {label}")
    report.save()


if __name__ == "__main__":
    main()
