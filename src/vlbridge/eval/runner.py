"""Running a model over held-out questions: batched greedy answers, resumable predictions, scores per type.

Predictions are appended to predictions.jsonl batch by batch, so an interrupted run resumes by skipping the
question ids already answered; scores.json is written atomically at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vlbridge.atomic import write_text
from vlbridge.data.llava_json import EvalItem
from vlbridge.errors import ConfigError, DataError
from vlbridge.eval.scoring import breakdown, exact_match

Scorer = Callable[[str, EvalItem], float]


def exact_match_scorer(prediction: str, item: EvalItem) -> float:
    """1.0 when the prediction equals any reference answer after VQA answer normalisation."""
    return max(exact_match(prediction, answer) for answer in item.answers)


def answer_batch(
    model: Any, processor: Any, items: Sequence[EvalItem], image_root: Path, max_new_tokens: int
) -> list[str]:
    """Greedy answers to a batch of questions, each asked in the model's chat template with its image."""
    prompts, images = [], []
    for item in items:
        content = item.question if item.image is None else f"{processor.image_token}\n{item.question}"
        prompts.append(processor.apply_chat_template([{"role": "user", "content": content}]))
        images.append([] if item.image is None else [image_root / item.image])
    inputs = processor(text=prompts, images=images, return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    start = inputs["input_ids"].shape[1]
    return [text.strip() for text in processor.batch_decode(ids[:, start:], skip_special_tokens=True)]


def _answered(path: Path) -> dict[str, dict[str, Any]]:
    """Rows already written; a last line torn by an interruption is dropped (and the file rewritten without it)."""
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
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
        previous = json.loads(marker.read_text())
        if previous != run:
            raise ConfigError(
                f"{out_dir} holds predictions of another run ({previous}); this run is {run}. "
                "Pass another output folder, or delete that one to start over"
            )
    else:
        write_text(marker, json.dumps(run, indent=2) + "\n")


def evaluate(
    model: Any,
    processor: Any,
    items: Sequence[EvalItem],
    image_root: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    scorer: Scorer = exact_match_scorer,
    baselines: dict[str, float] | None = None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Answer every item (skipping ids already in out_dir/predictions.jsonl), score them, write scores.json.

    `run` names what produced the answers (model path, settings); it is recorded in out_dir/run.json, and a resume
    into a folder of a different run is refused.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim(out_dir, {**(run or {}), "max_new_tokens": max_new_tokens})
    pred_file = out_dir / "predictions.jsonl"
    done = _answered(pred_file)
    todo = [item for item in items if item.question_id not in done]
    with pred_file.open("a") as sink, tqdm(total=len(items), initial=len(items) - len(todo), desc="eval") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            answers = answer_batch(model, processor, batch, Path(image_root), max_new_tokens)
            for item, prediction in zip(batch, answers, strict=True):
                row = {
                    "question_id": item.question_id,
                    "question": item.question,
                    "prediction": prediction,
                    "answers": list(item.answers),
                    "type": item.type,
                    "score": scorer(prediction, item),
                }
                done[item.question_id] = row
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            bar.update(len(batch))
    records = [done[item.question_id] for item in items]
    scores: dict[str, Any] = {"by_type": breakdown(records, key="type", score_key="score")}
    if baselines:
        for name, row in scores["by_type"].items():
            if name in baselines:
                row["majority_baseline"] = baselines[name]
    write_text(out_dir / "scores.json", json.dumps(scores, indent=2) + "\n")
    return scores
