"""`vlbridge data synth-video`: write the synthetic video world (MP4 clips, captions, instructions, test set).

vlbridge data synth-video --out DIR [--n N] [--seed S] [--image-size PX] [--steps SEC] [--fps F] [--overwrite]
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from vlbridge.data.synthetic.video_writer import VideoSynthOptions, synthesize_videos


def add_video_parser(data_sub: Any) -> None:
    """Register `synth-video` under `vlbridge data`: one flag per VideoSynthOptions field."""
    parser = data_sub.add_parser("synth-video", help="render short synthetic videos (MP4) with questions")
    parser.add_argument("--out", required=True, help="output folder, new or empty")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    for option in dataclasses.fields(VideoSynthOptions):
        flag = f"--{option.name.replace('_', '-')}"
        parser.add_argument(
            flag, type=type(option.default), default=option.default, help=f"(default: {option.default})"
        )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the folder and print the held-out questions and majority baseline per type."""
    options = VideoSynthOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(VideoSynthOptions)})
    stats = synthesize_videos(args.out, options, overwrite=args.overwrite)
    print(f"wrote {sum(stats['clips'].values())} clips to {args.out} ({stats['clips']})")
    for kind, summary in stats["types"].items():
        print(f"{kind}: {summary['questions']} test questions, majority baseline {summary['majority_baseline']:.3f}")
    return 0
