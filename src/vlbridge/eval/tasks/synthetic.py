"""The synthetic world's held-out questions (test.jsonl / val.jsonl written by `vlbridge data synth`).

Each line is {"question_id", "image", "question", "answer", "type"}; answers are scored by exact match after VQA
answer normalisation, per question type, beside the baselines the dataset's stats.json records: the majority answer
and the unbound baseline (attributes seen but not bound to objects; `vlbridge.data.synthetic.baselines`). Scores also
break down by question form (`tasks.question_form`: how the question names its object), where binding failures show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlbridge.data.files import read_json
from vlbridge.data.llava_json import EvalItem, load_eval
from vlbridge.data.synthetic.tasks import question_form
from vlbridge.errors import ConfigError, DataError
from vlbridge.eval.scoring import breakdown, exact_match
from vlbridge.eval.tasks.base import ALLOW_ABSOLUTE_IMAGES_OPTION, TASKS, Prompt, Rows, Task, TaskOption, limited


def exact_match_scorer(prediction: str, item: EvalItem) -> float:
    """1.0 when the prediction equals any reference answer after VQA answer normalisation."""
    return max(exact_match(prediction, answer) for answer in item.answers)


BASELINES = ("majority_baseline", "unbound_baseline")
DATA_OPTION = TaskOption("data", "dataset folder written by `vlbridge data synth` (or synth-video)")
SPLIT_OPTION = TaskOption("split", "which held-out file: test (default, test.jsonl) or val")


def questions_file(data: Path, split: str, writer: str) -> Path:
    """The `split` question file (`split`.jsonl) of a dataset folder the `vlbridge data WRITER` command wrote."""
    if split in ("", ".", "..") or Path(split).name != split:
        raise ConfigError(f"--split names a question file in --data (test, val, or NAME for NAME.jsonl), got {split!r}")
    questions = data / f"{split}.jsonl"
    if not questions.is_file():
        raise DataError(f"no {questions.name} in {data}; write the dataset with `vlbridge data {writer} --out {data}`")
    return questions


def split_baselines(data: Path, split: str) -> dict[str, dict[str, float]]:
    """Type (and "overall", weighted by count) -> {baseline name: accuracy} from the dataset's stats.json.

    Datasets written before a baseline existed simply lack it. A question file of one's own beside the writer's
    (e.g. training questions gathered into `trainq.jsonl`, to tell under-fitting from over-fitting) has no stats
    entry, so it is scored without baselines.
    """
    stats_file = data / "stats.json"
    if not stats_file.is_file():
        return {}
    splits = read_json(stats_file)["splits"]
    if split not in splits:
        return {}
    types = splits[split]["types"]
    total = sum(t["count"] for t in types.values())
    baselines = {name: {b: t[b] for b in BASELINES if b in t} for name, t in types.items()}
    known = [b for b in BASELINES if all(b in t for t in types.values())]
    overall = {b: sum(t["count"] * t[b] for t in types.values()) / total for b in known}
    return baselines | {"overall": overall}


@TASKS.register("synthetic")
class SyntheticTask(Task):
    """Held-out questions with images relative to `image_root`, scored per type beside the given baselines."""

    name = "synthetic"
    max_new_tokens = 12
    options = (DATA_OPTION, SPLIT_OPTION, ALLOW_ABSOLUTE_IMAGES_OPTION)

    def __init__(
        self,
        items: Sequence[EvalItem],
        image_root: str | Path,
        *,
        baselines: dict[str, dict[str, float]] | None = None,
        source: str | None = None,
    ) -> None:
        self.items = list(items)
        self.image_root = Path(image_root)
        self.baselines = baselines or {}
        self.source = source

    @classmethod
    def from_folder(
        cls, data: str | Path, split: str = "test", limit: int | None = None, allow_absolute_images: bool = False
    ) -> SyntheticTask:
        """The `split` questions of a dataset folder (`split`.jsonl, a file in it), with the baselines of its
        stats.json; image paths must stay inside the folder."""
        data = Path(data)
        questions = questions_file(data, split, "synth")
        items = limited(load_eval(questions, data, allow_absolute_images=allow_absolute_images).items, limit)
        video = next((item for item in items if item.video is not None), None)
        if video is not None:
            raise DataError(
                f"question {video.question_id!r} is about a video; evaluate this folder with --task synthetic_video",
                questions,
            )
        return cls(items, data, baselines=split_baselines(data, split), source=str(questions.resolve()))

    @classmethod
    def from_options(cls, values: Mapping[str, Any], limit: int | None, model: str | None) -> SyntheticTask:
        if values["data"] is None:
            raise ConfigError("--task synthetic needs --data DIR (a folder written by `vlbridge data synth`)")
        split = values["split"] or "test"
        return cls.from_folder(values["data"], split, limit, values["allow_absolute_images"])

    @classmethod
    def default_out(cls, values: Mapping[str, Any], model: str | None) -> Path:
        """The dataset folder's eval/."""
        return Path(values["data"]) / "eval"

    def prompts(self) -> list[Prompt]:
        return [
            Prompt(
                item.question_id,
                item.question,
                None if item.image is None else self.image_root / item.image,
                {"answers": list(item.answers), "type": item.type},
            )
            for item in self.items
        ]

    def identity(self) -> dict[str, Any]:
        return {"questions": self.source}

    def score(self, rows: Rows) -> dict[str, Any]:
        records = [
            {
                "type": item.type,
                "form": f"{item.type}: {question_form(item.question)}",
                "score": exact_match_scorer(rows[item.question_id]["prediction"], item),
            }
            for item in self.items
        ]
        by_type = breakdown(records, key="type")
        for name, row in by_type.items():
            row.update(self.baselines.get(name, {}))
        by_form = breakdown(records, key="form")
        del by_form["overall"]  # by_type has it
        return {"by_type": by_type, "by_form": dict(sorted(by_form.items()))}
