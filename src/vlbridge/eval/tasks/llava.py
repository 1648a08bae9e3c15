"""LLaVA's evaluation layout: a question JSONL in, an answers JSONL out, as LLaVA's `model_vqa.py` writes it.

Liu et al., "Visual Instruction Tuning" (2023) and the LLaVA repository's eval scripts. Each question line is
{"question_id", "image", "text", ["category"]} (image relative to --image-folder; absent for a text-only question);
each answer line is {"question_id", "prompt", "text", "answer_id", "model_id", "metadata": {}}, the question id
kept as given (int or string), so LLaVA's converters and judges read our files unchanged. With a reference file
(JSONL of {"question_id", "answer": str} or {"question_id", "answers": [str, ...]}) the answers are also scored,
by exact match after VQA normalisation against any reference, or by VQAv2 accuracy, per category.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlbridge.atomic import write_text
from vlbridge.data.files import ImageFolder, iter_jsonl
from vlbridge.errors import ConfigError, DataError
from vlbridge.eval.scoring import breakdown, exact_match
from vlbridge.eval.tasks.base import (
    ALLOW_ABSOLUTE_IMAGES_OPTION,
    IMAGE_FOLDER_OPTION,
    PROMPT_SUFFIX_OPTION,
    QUESTIONS_OPTION,
    TASKS,
    Prompt,
    Rows,
    Task,
    TaskOption,
    given,
    limited,
    model_id,
    short_uuid,
    with_suffix,
)
from vlbridge.eval.tasks.files import is_id, require_file, require_folder
from vlbridge.eval.vqa import vqa_accuracy

METRICS = ("exact", "vqa")
ANSWERS_OPTION = TaskOption("answers", "reference JSONL {question_id, answer(s)} to score")
METRIC_OPTION = TaskOption("metric", "exact match (default) or vqa accuracy", choices=METRICS)


@dataclass(frozen=True)
class Question:
    """One line of the question file."""

    question_id: int | str  # as written, so the answers file echoes it unchanged
    text: str
    image: str | None
    category: str
    line: int


def load_questions(path: Path) -> list[Question]:
    """Validated questions; a malformed line raises DataError with the file and line."""
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for line, data in iter_jsonl(path):
        qid, text, image = data.get("question_id"), data.get("text"), data.get("image")
        if not is_id(qid) or not isinstance(text, str):
            raise DataError('a question needs "question_id" (string or integer) and "text" (string)', path, line)
        if image is not None and not (isinstance(image, str) and image):
            raise DataError(f'"image" must be a file name relative to --image-folder, got {image!r}', path, line)
        if str(qid) in seen:
            raise DataError(
                f"question_id {qid!r} was already used on line {seen[str(qid)]}; ids must be unique", path, line
            )
        seen[str(qid)] = line
        questions.append(Question(qid, text, image, str(data.get("category", "all")), line))
    return questions


def load_references(path: Path) -> dict[str, tuple[str, ...]]:
    """Reference answers by question id (as a string); a malformed line raises DataError with the file and line."""
    references: dict[str, tuple[str, ...]] = {}
    for line, data in iter_jsonl(path):
        answers = data.get("answers", data.get("answer"))
        answers = [answers] if isinstance(answers, str) else answers
        if not is_id(data.get("question_id")) or not (
            isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)
        ):
            raise DataError(
                'a reference needs "question_id" and "answer" (a string) or "answers" (a list of strings)', path, line
            )
        references[str(data["question_id"])] = tuple(answers)
    return references


@TASKS.register("llava")
class LlavaTask(Task):
    """Questions in LLaVA's JSONL layout; answers written as LLaVA writes them, scored when references are given."""

    name = "llava"
    max_new_tokens = 128
    options = (
        QUESTIONS_OPTION,
        IMAGE_FOLDER_OPTION,
        ANSWERS_OPTION,
        PROMPT_SUFFIX_OPTION,
        METRIC_OPTION,
        ALLOW_ABSOLUTE_IMAGES_OPTION,
    )

    def __init__(
        self,
        questions: str | Path,
        image_folder: str | Path | None = None,
        *,
        references: str | Path | None = None,
        suffix: str = "",
        model_name: str = "vlbridge-default",
        metric: str = "exact",
        limit: int | None = None,
        allow_absolute_images: bool = False,
    ) -> None:
        if metric not in METRICS:
            raise ConfigError(f"metric {metric!r} is unknown; choose one of {', '.join(METRICS)}")
        self.source = require_file(questions, "--questions")
        self.questions = limited(load_questions(self.source), limit)
        with_image = next((q for q in self.questions if q.image is not None), None)
        self.image_folder = None
        self.images: list[Path | None] = [None] * len(self.questions)
        if with_image is not None:
            self.image_folder = require_folder(image_folder, "--image-folder")
            folder = ImageFolder(self.image_folder, allow_absolute=allow_absolute_images, must_exist=False)
            self.images = [
                None if q.image is None else folder.path(q.image, f"question {q.question_id!r}", self.source, q.line)
                for q in self.questions
            ]
        self.suffix, self.model_name, self.metric = suffix, model_name, metric
        self.references = None
        if references is not None:
            ref_file = require_file(references, "--answers")
            self.references = load_references(ref_file)
            missing = [q for q in self.questions if str(q.question_id) not in self.references]
            if missing:
                raise DataError(
                    f"{len(missing)} question(s) have no reference, e.g. question_id {missing[0].question_id!r} "
                    f"(line {missing[0].line} of {self.source}); add them, or leave out --answers to only predict",
                    ref_file,
                )

    @classmethod
    def from_options(cls, values: Mapping[str, Any], limit: int | None, model: str | None) -> LlavaTask:
        return cls(
            values["questions"],
            values["image_folder"],
            references=values["answers"],
            model_name=model_id(model),
            limit=limit,
            allow_absolute_images=values["allow_absolute_images"],
            **given(values, prompt_suffix="suffix", metric="metric"),
        )

    def prompts(self) -> list[Prompt]:
        return [
            Prompt(str(q.question_id), with_suffix(q.text, self.suffix), image, {"answer_id": short_uuid()})
            for q, image in zip(self.questions, self.images, strict=True)
        ]

    def identity(self) -> dict[str, Any]:
        folder = None if self.image_folder is None else str(self.image_folder.resolve())
        return {"questions": str(self.source.resolve()), "image_folder": folder, "suffix": self.suffix}

    def write_outputs(self, rows: Rows, out_dir: Path) -> list[Path]:
        lines = []
        for q in self.questions:
            row = rows[str(q.question_id)]
            answer = {
                "question_id": q.question_id,
                "prompt": row["prompt"],
                "text": row["prediction"],
                "answer_id": row["answer_id"],
                "model_id": self.model_name,
                "metadata": {},
            }
            lines.append(json.dumps(answer) + "\n")
        target = out_dir / "answers.jsonl"
        write_text(target, "".join(lines))
        return [target]

    def score(self, rows: Rows) -> dict[str, Any] | None:
        if self.references is None:
            return None
        records = []
        for q in self.questions:
            prediction, references = rows[str(q.question_id)]["prediction"], self.references[str(q.question_id)]
            if self.metric == "vqa":
                value = vqa_accuracy(prediction, references)
            else:
                value = max(exact_match(prediction, reference) for reference in references)
            records.append({"category": q.category, "score": value})
        return {"metric": self.metric, "by_category": breakdown(records, key="category")}
