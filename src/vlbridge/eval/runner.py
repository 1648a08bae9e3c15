"""Running a model over a benchmark: batched greedy answers, resumable predictions, scores and official files.

Answers are greedy (`do_sample=False`), each question asked in the model's chat template with `<image>` (or
`<video>`, the video sampled as the task says) on the line before it, as LLaVA's evaluation scripts ask
(`model_vqa.py`). Predictions are appended to predictions.jsonl
batch by batch, so an interrupted run resumes by skipping the question ids already answered; run.json ties the
folder to one model and task, so two runs never mix. Scoring happens at the end, from the predictions file, so a
run can be scored later (or again) with references given afterwards; scores.json is written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlbridge.atomic import write_text
from vlbridge.data.files import read_json, read_text
from vlbridge.errors import ConfigError, DataError, ImageError, VideoError
from vlbridge.eval.tasks.base import Prompt, Rows, Task


@dataclass(frozen=True)
class EvalResult:
    """What a run produced: scores (None without references), every prediction row, and the files written."""

    scores: dict[str, Any] | None
    rows: Rows
    files: list[Path]


def answer_batch(model: Any, processor: Any, prompts: Sequence[Prompt], max_new_tokens: int) -> list[str]:
    """Greedy answers to a batch of prompts, each asked in the model's chat template with its image or video (sampled
    as the prompt says); a batch holds images or videos, not both."""
    texts, images, videos = [], [], []
    for prompt in prompts:
        content = prompt.text if prompt.image is None else f"{processor.image_token}\n{prompt.text}"
        if prompt.video is not None:
            content = f"{processor.video_token}\n{prompt.text}"
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}]))
        image = prompt.image() if callable(prompt.image) else prompt.image
        images.append([] if image is None else [image])
        videos.append([] if prompt.video is None else [prompt.video])
    media: dict[str, Any] = {"images": images}
    if any(videos):
        samplings = {p.video_sampling for p in prompts if p.video is not None}
        if len(samplings) > 1:
            raise ConfigError(f"a batch's videos must share one sampling (fps, max_frames), got {sorted(samplings)}")
        ((fps, max_frames),) = samplings
        media = {"videos": videos, "fps": fps, "max_frames": max_frames} | ({"images": images} if any(images) else {})
    inputs = processor(text=texts, return_tensors="pt", **media)
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    start = inputs["input_ids"].shape[1]
    return [text.strip() for text in processor.batch_decode(ids[:, start:], skip_special_tokens=True)]


def _answered(path: Path) -> dict[str, dict[str, Any]]:
    """Rows already written; a last line torn by an interruption is dropped (and the file rewritten without it)."""
    if not path.is_file():
        return {}
    lines = [line for line in read_text(path).splitlines() if line.strip()]
    rows = {}
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i != len(lines) - 1:
                raise DataError(
                    f"line {i + 1} is not JSON ({err}); delete the file to start over", path, i + 1
                ) from err
            write_text(path, "".join(f"{kept}\n" for kept in lines[:-1]))
            break
        rows[row["question_id"]] = row
    return rows


def _claim(out_dir: Path, run: dict[str, Any]) -> None:
    """Tie out_dir to one run (model, settings): resuming into another run's predictions would mix two models."""
    marker = out_dir / "run.json"
    if marker.is_file():
        previous = read_json(marker)
        if previous != run:
            raise ConfigError(
                f"{out_dir} holds predictions of another run ({previous}); this run is {run}. "
                "Pass another output folder, or delete that one to start over"
            )
    else:
        write_text(marker, json.dumps(run, indent=2) + "\n")


def _check_images(prompts: Sequence[Prompt]) -> None:
    """Fail before answering anything when image or video files are missing, naming the first few."""
    missing = [p.image for p in prompts if isinstance(p.image, Path) and not p.image.is_file()]
    if missing:
        shown = ", ".join(str(m) for m in missing[:3])
        raise ImageError(
            f"{len(missing)} image file(s) do not exist, e.g. {shown}; check --image-folder (and --image-pattern)"
        )
    videos = [str(p.video) for p in prompts if p.video is not None and not p.video.is_file()]
    if videos:
        raise VideoError(f"{len(videos)} video file(s) do not exist, e.g. {', '.join(videos[:3])}; check --data")


def predict(
    model: Any,
    processor: Any,
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    run: dict[str, Any] | None = None,
    desc: str = "eval",
) -> dict[str, dict[str, Any]]:
    """Answer every prompt not yet in out_dir/predictions.jsonl, appending a batch at a time; all rows, in order.

    `run` names what produced the answers (model, task, files, settings); it is recorded in out_dir/run.json, and
    a resume into a folder of a different run is refused.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    assert len({p.question_id for p in prompts}) == len(prompts), "tasks give every prompt its own id"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim(out_dir, {**(run or {}), "max_new_tokens": max_new_tokens})
    pred_file = out_dir / "predictions.jsonl"
    done = _answered(pred_file)
    todo = [p for p in prompts if p.question_id not in done]
    _check_images(todo)
    with pred_file.open("a") as sink, tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            answers = answer_batch(model, processor, batch, max_new_tokens)
            for prompt, prediction in zip(batch, answers, strict=True):
                row = {"question_id": prompt.question_id, "prompt": prompt.text, "prediction": prediction}
                done[prompt.question_id] = {**prompt.record, **row}
                sink.write(json.dumps(done[prompt.question_id]) + "\n")
            sink.flush()
            bar.update(len(batch))
    return {p.question_id: done[p.question_id] for p in prompts}


def evaluate(
    model: Any,
    processor: Any,
    task: Task,
    out_dir: str | Path,
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    run: dict[str, Any] | None = None,
) -> EvalResult:
    """Answer the task's prompts (resuming), write its official files, and score it when it has references.

    scores.json is written atomically when the task scores; a stale one is removed when it cannot (no references),
    so the folder never shows scores of other predictions.
    """
    out_dir = Path(out_dir)
    tokens = task.max_new_tokens if max_new_tokens is None else max_new_tokens
    claim = {"task": task.name, **(run or {}), **task.identity()}
    prompts = task.prompts()
    rows = predict(
        model, processor, prompts, out_dir, batch_size=batch_size, max_new_tokens=tokens, run=claim, desc=task.name
    )
    files = task.write_outputs(rows, out_dir)
    scores = task.score(rows)
    score_file = out_dir / "scores.json"
    if scores is None:
        score_file.unlink(missing_ok=True)
    else:
        write_text(score_file, json.dumps(scores, indent=2) + "\n")
        files.append(score_file)
    return EvalResult(scores, rows, files)
