"""The synthetic video world: clips obey their rules, the MP4 files show what the clip says at 1 fps, questions and
the majority baselines are consistent, and the same seed writes the same dataset (also through the CLI)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from vlbridge.cli.main import main
from vlbridge.data.synthetic.video import VIDEO_TYPES, Clip, question, sample_clip
from vlbridge.data.synthetic.video_writer import VideoSynthOptions, synthesize_videos
from vlbridge.errors import ConfigError, DataError
from vlbridge.highres.video import read_video

pytest.importorskip("av")


def test_clips_keep_their_rules() -> None:
    for seed in range(200):
        _check_clip(sample_clip(seed, steps=8))


def _check_clip(clip: Clip) -> None:
    firsts = [o.runs[0][0] for o in clip.objects]
    assert len(set(firsts)) == len(firsts) == len(clip.objects) in (2, 3)
    assert [o.shape for o in clip.objects if o.visible(7)] == [question(clip, "end", random.Random(0))[1]]
    for obj in clip.objects:
        assert all(b[0] - a[1] >= 2 for a, b in zip(obj.runs, obj.runs[1:], strict=False))  # a gap between runs
    assert Clip.from_json(json.loads(json.dumps(clip.to_json()))) == clip


def test_written_videos_show_the_clip_and_the_same_seed_writes_the_same_data(tmp_path: Path) -> None:
    options = VideoSynthOptions(n=8, seed=3, image_size=32, steps=6, fps=2, test_fraction=0.25)
    stats = synthesize_videos(tmp_path / "a", options)
    assert stats["clips"] == {"train": 6, "test": 2}
    tests = [json.loads(line) for line in (tmp_path / "a" / "test.jsonl").read_text().splitlines()]
    assert [t["type"] for t in tests] == list(VIDEO_TYPES[:2])
    instruct = json.loads((tmp_path / "a" / "instruct.json").read_text())
    assert len(instruct) == 6 and all(len(c["conversations"]) == 2 * len(VIDEO_TYPES) for c in instruct)
    assert instruct[0]["conversations"][0]["value"].startswith("<video>\n")
    for row in map(json.loads, (tmp_path / "a" / "clips.jsonl").read_text().splitlines()):
        clip = Clip.from_json(row["clip"])
        frames = read_video(tmp_path / "a" / row["video"], fps=1.0)  # the midpoint of every second
        drawn = [bool((np.asarray(f).min(axis=-1) < 200).any()) for f in frames]
        assert drawn == [any(o.visible(s) for o in clip.objects) for s in range(clip.steps)]
    for summary in stats["types"].values():
        assert 0 <= summary["majority_baseline"] <= 1
    assert (
        main(
            [
                "data",
                "synth-video",
                "--out",
                str(tmp_path / "b"),
                "--n",
                "8",
                "--seed",
                "3",
                "--image-size",
                "32",
                "--steps",
                "6",
                "--test-fraction",
                "0.25",
            ]
        )
        == 0
    )
    for name in ("clips.jsonl", "test.jsonl", "instruct.json", "captions.json", "stats.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    with pytest.raises(DataError, match="not empty"):
        synthesize_videos(tmp_path / "a", options)


@pytest.mark.parametrize("bad", [{"n": 1}, {"image_size": 33}, {"steps": 4}, {"fps": 0}, {"test_fraction": 0.0}])
def test_bad_options_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError):
        VideoSynthOptions(**bad).validate()
