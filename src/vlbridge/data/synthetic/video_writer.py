"""Write a synthetic video dataset folder: MP4 clips, captions, instructions, held-out questions, stats.

The folder (SPEC sections 3 and 7), every clip a real H.264 MP4 written with PyAV so training and evaluation read it
through the same decoding path as a user's file (`vlbridge.highres.video`):

- `videos/<split>_<index>.mp4`: `steps` seconds at `fps` frames per second, frame j drawn at its midpoint time;
- `captions.json`: LLaVA conversation JSON with a `video` key, one caption per training clip (`<video>` first);
- `instruct.json`: one conversation per training clip with a question of every type, in a random order;
- `test.jsonl`: one held-out question per test clip, types dealt in turn, `{"question_id", "video", "question",
  "answer", "type"}`;
- `clips.jsonl`: the clip behind every video, so answers can be re-derived;
- `stats.json`: per question type, the test answer distribution and the majority baseline (the accuracy on the test
  questions of always giving the type's most common training answer).

Every clip draws from its own seed, derived from (seed, split, index), so the same options write the same folder.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlbridge.atomic import atomic_path
from vlbridge.data.synthetic.json_files import write_json, write_jsonl
from vlbridge.data.synthetic.scenes import derive_seed
from vlbridge.data.synthetic.video import VIDEO_TYPES, Clip, caption, question, render_frame, sample_clip
from vlbridge.errors import ConfigError, DataError

VIDEO_TOKEN = "<video>"
OUTPUT_FILES = ("captions.json", "instruct.json", "test.jsonl", "clips.jsonl", "stats.json")


@dataclass(frozen=True)
class VideoSynthOptions:
    """How many clips, how they split, and how each is drawn and encoded."""

    n: int = 400  # clips over both splits
    seed: int = 0
    image_size: int = 96  # frame side in pixels (even: H.264 4:2:0)
    steps: int = 8  # clip length in seconds
    fps: int = 2  # frames per second written
    test_fraction: float = 0.2

    def validate(self) -> None:
        """ConfigError naming the option and the fix for a value the writer cannot use."""
        if self.n < 2 or not 0 < self.test_fraction < 1 or round(self.n * self.test_fraction) in (0, self.n):
            raise ConfigError(f"n={self.n} and test_fraction={self.test_fraction} must leave clips in both splits")
        if self.image_size < 32 or self.image_size % 2:
            raise ConfigError(f"image_size must be an even number of pixels >= 32, got {self.image_size}")
        if self.steps < 6:
            raise ConfigError(f"steps must be at least 6 seconds (three objects need room), got {self.steps}")
        if self.fps < 1:
            raise ConfigError(f"fps must be at least 1, got {self.fps}")


def write_clip(path: Path, clip: Clip, size: int, fps: int) -> None:
    """Encode `clip` as an H.264 MP4 at `path`, atomically."""
    import av

    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for j in range(clip.steps * fps):
            image = render_frame(clip, (j + 0.5) / fps, size)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")))
        container.mux(stream.encode())


def _conversation(item_id: str, video: str, turns: list[tuple[str, str]]) -> dict[str, Any]:
    conversations = []
    for k, (asked, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": (f"{VIDEO_TOKEN}\n" if k == 0 else "") + asked})
        conversations.append({"from": "gpt", "value": answer})
    return {"id": item_id, "video": video, "conversations": conversations}


def synthesize_videos(out: str | Path, options: VideoSynthOptions, overwrite: bool = False) -> dict[str, Any]:
    """Write the dataset folder `out` (see the module docstring) and return its stats."""
    from tqdm import tqdm

    options.validate()
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise DataError("the output folder is a file or not empty; choose a new folder or pass --overwrite", out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    n_test = round(options.n * options.test_fraction)
    splits = {"train": options.n - n_test, "test": n_test}
    captions, instruct, tests, clips = [], [], [], []
    train_answers: dict[str, Counter[str]] = {kind: Counter() for kind in VIDEO_TYPES}
    with tqdm(total=options.n, desc="synthetic videos", unit="clip") as progress:
        for split, count in splits.items():
            for index in range(count):
                seed = derive_seed(options.seed, "video", split, index)
                clip, rng = sample_clip(seed, options.steps), random.Random(seed + 1)
                video = f"videos/{split}_{index}.mp4"
                write_clip(out / video, clip, options.image_size, options.fps)
                clips.append({"video": video, "split": split, "clip": clip.to_json()})
                if split == "train":
                    captions.append(
                        _conversation(f"{split}_{index}_caption", video, [("Describe the video.", caption(clip))])
                    )
                    kinds = rng.sample(VIDEO_TYPES, len(VIDEO_TYPES))
                    turns = [question(clip, kind, rng) for kind in kinds]
                    for kind, (_, answer) in zip(kinds, turns, strict=True):
                        train_answers[kind][answer] += 1
                    instruct.append(_conversation(f"{split}_{index}", video, turns))
                else:
                    kind = VIDEO_TYPES[index % len(VIDEO_TYPES)]
                    asked, answer = question(clip, kind, rng)
                    tests.append(
                        {"question_id": index, "video": video, "question": asked, "answer": answer, "type": kind}
                    )
                progress.update()
    stats = {"clips": splits, "types": _type_stats(tests, train_answers)}
    write_json(out / "captions.json", captions)
    write_json(out / "instruct.json", instruct)
    write_jsonl(out / "test.jsonl", tests)
    write_jsonl(out / "clips.jsonl", clips)
    write_json(out / "stats.json", stats)
    return stats


def _type_stats(tests: list[dict[str, Any]], train_answers: dict[str, Counter[str]]) -> dict[str, Any]:
    """Per type: test questions, their answer distribution, the training majority answer and its test accuracy."""
    stats = {}
    for kind in VIDEO_TYPES:
        answers = Counter(t["answer"] for t in tests if t["type"] == kind)
        majority = train_answers[kind].most_common(1)[0][0] if train_answers[kind] else ""
        total = sum(answers.values())
        stats[kind] = {
            "questions": total,
            "answers": dict(sorted(answers.items())),
            "majority_answer": majority,
            "majority_baseline": answers[majority] / total if total else 0.0,
        }
    return stats
