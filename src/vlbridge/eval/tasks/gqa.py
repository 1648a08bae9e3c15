"""GQA in its official layout: a questions JSON keyed by question id, images `<imageId>.jpg`.

Hudson and Manning, "GQA: A New Dataset for Real-World Visual Reasoning and Compositional Question Answering"
(2019). Each entry is {"imageId", "question", "answer", "types": {"structural", "semantic", "detailed"}, ...}.
Questions are asked as LLaVA-1.5 asks them ("Answer the question using a single word or phrase." on the next
line); answers are scored by exact match after VQA answer normalisation, broken down by structural and semantic
type, and written as [{"questionId", "prediction"}] (the reply lower-cased, trailing periods dropped, as LLaVA's
`convert_gqa_for_eval.py` does) for GQA's official eval.py. Without answers (test, challenge) only that file is
written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlbridge.atomic import write_text
from vlbridge.data.files import nonempty, read_json
from vlbridge.errors import DataError
from vlbridge.eval.scoring import breakdown, exact_match
from vlbridge.eval.tasks.base import (
    ALLOW_ABSOLUTE_IMAGES_OPTION,
    IMAGE_FOLDER_OPTION,
    IMAGE_PATTERN_OPTION,
    PROMPT_SUFFIX_OPTION,
    QUESTIONS_OPTION,
    TASKS,
    ImageFolderTask,
    Rows,
    given,
    limited,
)
from vlbridge.eval.tasks.files import image_name
from vlbridge.eval.tasks.vqav2 import SHORT_ANSWER

IMAGE_PATTERN = "{image_id}.jpg"


@dataclass(frozen=True)
class Question:
    """One GQA question."""

    question_id: str
    image_id: str
    question: str
    answer: str | None
    structural: str
    semantic: str


def _parse(path: Path, qid: str, entry: Any) -> Question:
    """One entry, or DataError naming it."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("imageId", "question")):
        raise DataError(f'question {qid!r} needs string "imageId" and "question" fields', path)
    answer, types = entry.get("answer"), entry.get("types", {})
    if answer is not None and not isinstance(answer, str):
        raise DataError(f'question {qid!r}: "answer" must be a string, got {answer!r}', path)
    if not isinstance(types, dict):
        raise DataError(f'question {qid!r}: "types" must be an object with "structural" and "semantic"', path)
    structural, semantic = str(types.get("structural", "all")), str(types.get("semantic", "all"))
    return Question(qid, entry["imageId"], entry["question"], answer, structural, semantic)


def load_questions(path: Path) -> list[Question]:
    """Validated questions in file order; a malformed entry raises DataError naming its question id, and so does a
    file without questions."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError("expected a JSON object {question id: question} (the official GQA layout)", path)
    return nonempty([_parse(path, str(qid), entry) for qid, entry in data.items()], path, "questions")


@TASKS.register("gqa")
class GQATask(ImageFolderTask):
    """GQA from an official questions file and its image folder."""

    name = "gqa"
    options = (
        QUESTIONS_OPTION,
        IMAGE_FOLDER_OPTION,
        IMAGE_PATTERN_OPTION,
        PROMPT_SUFFIX_OPTION,
        ALLOW_ABSOLUTE_IMAGES_OPTION,
    )

    def __init__(
        self,
        questions: str | Path,
        image_folder: str | Path,
        *,
        image_pattern: str = IMAGE_PATTERN,
        suffix: str = SHORT_ANSWER,
        limit: int | None = None,
        allow_absolute_images: bool = False,
    ) -> None:
        super().__init__(questions, image_folder, image_pattern, suffix, allow_absolute_images)
        self.questions = limited(load_questions(self.source), limit)
        self.images = self.image_files([image_name(image_pattern, image_id=q.image_id) for q in self.questions])
        answered = [q.answer is not None for q in self.questions]
        if any(answered) and not all(answered):
            unanswered = self.questions[answered.index(False)].question_id
            raise DataError(f"question {unanswered!r} has no answer but others do; use one split's file", self.source)
        self.scored = all(answered)

    @classmethod
    def from_options(cls, values: Mapping[str, Any], limit: int | None, model: str | None) -> GQATask:
        return cls(
            values["questions"],
            values["image_folder"],
            limit=limit,
            allow_absolute_images=values["allow_absolute_images"],
            **given(values, prompt_suffix="suffix", image_pattern="image_pattern"),
        )

    def question_texts(self) -> list[tuple[str, str]]:
        return [(q.question_id, q.question) for q in self.questions]

    def write_outputs(self, rows: Rows, out_dir: Path) -> list[Path]:
        results = [
            {"questionId": q.question_id, "prediction": rows[q.question_id]["prediction"].rstrip(".").lower()}
            for q in self.questions
        ]
        target = out_dir / "gqa_predictions.json"
        write_text(target, json.dumps(results) + "\n")
        return [target]

    def score(self, rows: Rows) -> dict[str, Any] | None:
        if not self.scored:
            return None
        records = [
            {
                "structural": q.structural,
                "semantic": q.semantic,
                "score": exact_match(rows[q.question_id]["prediction"], q.answer),
            }
            for q in self.questions
        ]
        return {
            "by_structural": breakdown(records, key="structural"),
            "by_semantic": breakdown(records, key="semantic"),
        }
