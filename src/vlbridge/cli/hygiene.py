"""`vlbridge data filter` and `vlbridge data dedup`: data hygiene on a LLaVA conversation file (vlbridge.data.hygiene).

    vlbridge data filter DATA --scorer RUN_DIR/STAGE --out KEPT.json [--threshold 0.7] [--report FILE]
    vlbridge data dedup DATA --out KEPT.json [--max-distance 4] [--hash phash] [--report FILE]

Both read DATA (JSON list or JSONL) with its image paths relative to --images (default: DATA's folder, paths kept
inside it), write the records kept as a JSON list to --out and what was removed, and why, as JSON Lines to --report
(default: beside --out, `.dropped.jsonl` / `.removed.jsonl`), each atomically. --out names a new file: the input is
never overwritten. The scorer is the folder of a stage trained by the `contrastive` objective (model/ and
contrastive_head.safetensors).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlbridge.data.hygiene.dedup import DEFAULT_MAX_DISTANCE, HASHES, dedup_records
from vlbridge.data.hygiene.filter import DEFAULT_THRESHOLD, filter_pairs, load_scorer
from vlbridge.data.hygiene.output import write_records, write_report
from vlbridge.data.llava_json import Record, image_folder, load_llava
from vlbridge.errors import ConfigError


def add_parsers(data_sub: Any) -> None:
    """Register `filter` and `dedup` under `vlbridge data`."""
    filt = data_sub.add_parser("filter", help="drop image-caption pairs a contrastive model scores low")
    _common(filt)
    filt.add_argument("--scorer", required=True, metavar="DIR", help="a contrastive stage's folder (model/ + head)")
    filt.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="drop pairs scored below this: the model's probability that the image goes with its caption rather than "
        f"a random caption of the file (0.5: no preference; default {DEFAULT_THRESHOLD})",
    )
    filt.add_argument("--batch-size", type=int, default=64, help="pairs per forward pass (default 64)")
    filt.add_argument("--contrast", type=int, default=1024, help="distinct captions to contrast with (default 1024)")
    filt.add_argument("--seed", type=int, default=0, help="seed of the contrast captions' sample (default 0)")
    filt.set_defaults(run=run_filter, report_suffix=".dropped.jsonl")
    dedup = data_sub.add_parser("dedup", help="remove duplicate images and identical conversations")
    _common(dedup)
    dedup.add_argument(
        "--max-distance",
        type=int,
        default=DEFAULT_MAX_DISTANCE,
        help=f"most differing hash bits (of 64) for two images to be near duplicates (default {DEFAULT_MAX_DISTANCE})",
    )
    dedup.add_argument("--hash", default="phash", choices=HASHES, help="perceptual hash (default phash)")
    dedup.set_defaults(run=run_dedup, report_suffix=".removed.jsonl")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="a LLaVA conversation file (JSON list or JSONL)")
    parser.add_argument("--out", required=True, help="where to write the records kept (a new JSON file)")
    parser.add_argument("--images", default=None, help="the image folder (default: the data file's folder)")
    parser.add_argument("--report", default=None, help="JSON Lines of what was removed and why (default: beside --out)")
    parser.add_argument("--skip-malformed", action="store_true", help="leave malformed records out instead of failing")
    parser.add_argument("--allow-absolute-images", action="store_true", help="accept absolute image paths")


def _read(args: argparse.Namespace) -> tuple[list[Record], Path, Path]:
    """(the records, the output file, the report file); ConfigError when --out or --report is the input."""
    data, out = Path(args.data), Path(args.out)
    report = Path(args.report) if args.report else out.with_name(out.stem + args.report_suffix)
    for target in (out, report):
        if target.resolve() == data.resolve():
            raise ConfigError(f"{target} is the input file; write the result to a new file so the original stays")
    if out.resolve() == report.resolve():
        raise ConfigError(f"--out and --report are both {out}; give the report another name")
    loaded = load_llava(
        data, args.images, skip_malformed=args.skip_malformed, allow_absolute_images=args.allow_absolute_images
    )
    if loaded.skipped:
        print(f"skipped {loaded.n_skipped} malformed record(s)")
    return loaded.items, out, report


def _image_root(args: argparse.Namespace) -> Path:
    return Path(args.images) if args.images is not None else Path(args.data).parent


def run_filter(args: argparse.Namespace) -> int:
    """Score, drop, write."""
    records, out, report = _read(args)
    scorer = load_scorer(args.scorer, batch_size=args.batch_size, contrast=args.contrast, seed=args.seed)
    kept, dropped = filter_pairs(records, _image_root(args), scorer, args.threshold)
    write_records(out, kept)
    write_report(report, ({"id": d.id, "score": round(d.score, 6), "reason": d.reason} for d in dropped))
    print(f"kept {len(kept)} of {len(records)} records -> {out}; dropped {len(dropped)} -> {report}")
    return 0


def run_dedup(args: argparse.Namespace) -> int:
    """Match duplicates, remove, write."""
    records, out, report = _read(args)
    folder = image_folder(args.data, args.images, True, args.allow_absolute_images)
    kept, removed = dedup_records(records, folder, args.max_distance, args.hash)
    write_records(out, kept)
    write_report(report, (r.row() for r in removed))
    print(f"kept {len(kept)} of {len(records)} records -> {out}; removed {len(removed)} -> {report}")
    return 0
