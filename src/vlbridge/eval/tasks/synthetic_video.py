"""The synthetic video world's held-out questions (test.jsonl written by `vlbridge data synth-video`).

Each line is {"question_id", "video", "question", "answer", "type"}, a type being order, direction, count or end.
Videos are sampled at `--video-fps` up to `--video-max-frames` (1 fps and 32 frames by default: the clips are 8 s,
so every second's midpoint frame), and answers are scored by exact match after VQA answer normalisation, per type,
beside the majority baseline the dataset's stats.json records (always giving the type's most common training answer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlbridge.data.files import read_json
from vlbridge.data.llava_json import EvalItem, load_eval
from vlbridge.errors import ConfigError, DataError
from vlbridge.eval.scoring import breakdown
from vlbridge.eval.tasks.base import ALLOW_ABSOLUTE_IMAGES_OPTION, TASKS, Prompt, Rows, Task, TaskOption, limited
from vlbridge.eval.tasks.synthetic import (
    DATA_OPTION,
    SPLIT_OPTION,
    SyntheticTask,
    exact_match_scorer,
    questions_file,
)

VIDEO_FPS_OPTION = TaskOption("video_fps", "video frames sampled per second (default 1)")
VIDEO_MAX_FRAMES_OPTION = TaskOption("video_max_frames", "most frames per video (default 32)")


def _number(value: str | None, flag: str, default: float, kind: type) -> Any:
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"{flag} must be a {kind.__name__}, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{flag} must be above 0, got {value!r}")
    return number


def video_baselines(data: Path) -> dict[str, dict[str, float]]:
    """Type (and "overall", weighted by count) -> {"majority_baseline": accuracy} from the folder's stats.json."""
    stats_file = data / "stats.json"
    if not stats_file.is_file():
        return {}
    types = read_json(stats_file).get("types", {})
    total = sum(t["questions"] for t in types.values())
    baselines = {name: {"majority_baseline": t["majority_baseline"]} for name, t in types.items()}
    if not total:
        return baselines
    overall = sum(t["questions"] * t["majority_baseline"] for t in types.values()) / total
    return baselines | {"overall": {"majority_baseline": overall}}


@TASKS.register("synthetic_video")
class SyntheticVideoTask(Task):
    """Held-out questions about videos relative to the dataset folder, scored per type beside the majority baseline."""

    name = "synthetic_video"
    max_new_tokens = 8
    options = (DATA_OPTION, SPLIT_OPTION, VIDEO_FPS_OPTION, VIDEO_MAX_FRAMES_OPTION, ALLOW_ABSOLUTE_IMAGES_OPTION)

    def __init__(
        self,
        items: Sequence[EvalItem],
        data: str | Path,
        *,
        video_sampling: tuple[float, int | None] = (1.0, 32),
        baselines: dict[str, dict[str, float]] | None = None,
        source: str | None = None,
    ) -> None:
        without = next((item for item in items if item.video is None), None)
        if without is not None:
            raise DataError(f"question {without.question_id!r} names no video; use --task synthetic for images")
        self.items, self.data = list(items), Path(data)
        self.video_sampling = video_sampling
        self.baselines = baselines or {}
        self.source = source

    @classmethod
    def from_options(cls, values: Mapping[str, Any], limit: int | None, model: str | None) -> SyntheticVideoTask:
        if values["data"] is None:
            raise ConfigError(
                "--task synthetic_video needs --data DIR (a folder written by `vlbridge data synth-video`)"
            )
        data = Path(values["data"])
        questions = questions_file(data, values["split"] or "test", "synth-video")
        loaded = load_eval(questions, data, allow_absolute_images=values["allow_absolute_images"])
        sampling = (
            _number(values["video_fps"], "--video-fps", 1.0, float),
            _number(values["video_max_frames"], "--video-max-frames", 32, int),
        )
        return cls(
            limited(loaded.items, limit),
            data,
            video_sampling=sampling,
            baselines=video_baselines(data),
            source=str(questions.resolve()),
        )

    default_out = SyntheticTask.default_out  # the dataset folder's eval/

    def prompts(self) -> list[Prompt]:
        return [
            Prompt(
                item.question_id,
                item.question,
                record={"answers": list(item.answers), "type": item.type},
                video=self.data / item.video if item.video is not None else None,
                video_sampling=self.video_sampling,
            )
            for item in self.items
        ]

    def identity(self) -> dict[str, Any]:
        fps, max_frames = self.video_sampling
        return {"questions": self.source, "video_fps": fps, "video_max_frames": max_frames}

    def score(self, rows: Rows) -> dict[str, Any]:
        records = [
            {"type": item.type, "score": exact_match_scorer(rows[item.question_id]["prediction"], item)}
            for item in self.items
        ]
        by_type = breakdown(records, key="type")
        for name, row in by_type.items():
            row.update(self.baselines.get(name, {}))
        return {"by_type": by_type}
