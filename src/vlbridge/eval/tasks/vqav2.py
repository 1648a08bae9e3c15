"""VQAv2 in its official files: questions JSON, annotations JSON, COCO images; official accuracy and results file.

Goyal et al., "Making the V in VQA Matter" (2017). Questions are {"questions": [{"question_id", "image_id",
"question"}], "data_subtype": "val2014"}; annotations are {"annotations": [{"question_id", "answers": [{"answer"},
...], "answer_type", "question_type", ...}]}; images are COCO files named `COCO_<split>_<12-digit image id>.jpg`
(split from the questions' data_subtype). Each question is asked as LLaVA-1.5 asks it, with "Answer the question
using a single word or phrase." on the next line. As LLaVA does before submitting, each prediction first goes
through the EvalAI answer processor (`evalai_preprocess=False` keeps the raw text); it is then written in the
official results format [{"question_id", "answer"}] for the evaluation server and scored with the official VQA
accuracy (the current vqaEval.py unless `scorer_version="2017"`; docs/scoring.md) per answer type and question
type. Without annotations (test-dev) only the results file is written.
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
from vlbridge.eval.scoring import breakdown
from vlbridge.eval.tasks.base import (
    ALLOW_ABSOLUTE_IMAGES_OPTION,
    IMAGE_FOLDER_OPTION,
    IMAGE_PATTERN_OPTION,
    PROMPT_SUFFIX_OPTION,
    QUESTIONS_OPTION,
    TASKS,
    ImageFolderTask,
    Rows,
    TaskOption,
    given,
    limited,
)
from vlbridge.eval.tasks.files import image_name, is_id, require_file
from vlbridge.eval.vqa import VQA_VERSIONS, VQAVersion, evalai_process_answer, require_version, vqa_accuracy

SHORT_ANSWER = "Answer the question using a single word or phrase."
IMAGE_PATTERN = "COCO_{split}_{image_id:012d}.jpg"
ANNOTATIONS_OPTION = TaskOption("annotations", "official annotations JSON to score")
SCORER_VERSION_OPTION = TaskOption("scorer_version", "vqaEval.py version that scores (default 2021)", VQA_VERSIONS)
RAW_ANSWERS_OPTION = TaskOption("raw_answers", "score predictions as written, without EvalAI's processor", switch=True)


@dataclass(frozen=True)
class Annotation:
    """The human answers to one question and its types."""

    answers: tuple[str, ...]
    answer_type: str
    question_type: str


def _entries(path: Path, data: Any, key: str) -> list[Any]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f'expected a JSON object with a "{key}" list (the official VQAv2 layout)', path)
    return nonempty(data[key], path, key)


def _is_question(q: Any) -> bool:
    image_id = q.get("image_id") if isinstance(q, dict) else None
    return (
        isinstance(q, dict)
        and is_id(q.get("question_id"))
        and isinstance(q.get("question"), str)
        and isinstance(image_id, int)
        and not isinstance(image_id, bool)
    )


def _is_annotation(a: Any) -> bool:
    answers = a.get("answers") if isinstance(a, dict) else None
    return (
        isinstance(a, dict)
        and is_id(a.get("question_id"))
        and isinstance(answers, list)
        and len(answers) > 0
        and all(isinstance(x, dict) and isinstance(x.get("answer"), str) for x in answers)
        and all(isinstance(a.get(key, ""), str) for key in ("answer_type", "question_type"))
    )


def load_questions(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The questions, validated (DataError naming the entry), and the data_subtype ("val2014", ...) if recorded."""
    data = read_json(path)
    questions, seen = _entries(path, data, "questions"), set()
    for i, q in enumerate(questions):
        if not _is_question(q):
            raise DataError(f'questions[{i}] needs "question_id", an integer "image_id" and a string "question"', path)
        if str(q["question_id"]) in seen:
            raise DataError(f"questions[{i}] repeats question_id {q['question_id']!r}; ids must be unique", path)
        seen.add(str(q["question_id"]))
    subtype = data.get("data_subtype")
    return questions, subtype if isinstance(subtype, str) else None


def load_annotations(path: Path) -> dict[str, Annotation]:
    """Annotations by question id (as a string); a malformed entry raises DataError naming it."""
    out = {}
    for i, a in enumerate(_entries(path, read_json(path), "annotations")):
        if not _is_annotation(a):
            raise DataError(
                f'annotations[{i}] needs "question_id", a non-empty "answers" list of {{"answer": str}} and string '
                '"answer_type" and "question_type"',
                path,
            )
        answers = tuple(x["answer"] for x in a["answers"])
        out[str(a["question_id"])] = Annotation(answers, a.get("answer_type", "all"), a.get("question_type", "all"))
    return out


@TASKS.register("vqav2")
class VQAv2Task(ImageFolderTask):
    """VQAv2 from the official question/annotation files and a COCO image folder."""

    name = "vqav2"
    options = (
        QUESTIONS_OPTION,
        IMAGE_FOLDER_OPTION,
        ANNOTATIONS_OPTION,
        IMAGE_PATTERN_OPTION,
        PROMPT_SUFFIX_OPTION,
        SCORER_VERSION_OPTION,
        RAW_ANSWERS_OPTION,
        ALLOW_ABSOLUTE_IMAGES_OPTION,
    )

    def __init__(
        self,
        questions: str | Path,
        image_folder: str | Path,
        *,
        annotations: str | Path | None = None,
        image_pattern: str = IMAGE_PATTERN,
        suffix: str = SHORT_ANSWER,
        limit: int | None = None,
        evalai_preprocess: bool = True,
        scorer_version: VQAVersion = "2021",
        allow_absolute_images: bool = False,
    ) -> None:
        super().__init__(questions, image_folder, image_pattern, suffix, allow_absolute_images)
        self.evalai_preprocess, self.scorer_version = evalai_preprocess, require_version(scorer_version)
        questions_list, split = load_questions(self.source)
        self.questions = limited(questions_list, limit)
        if split is None and "{split}" in image_pattern:
            raise DataError(
                'the questions file has no "data_subtype" to name the COCO split; pass --image-pattern, e.g. '
                "'COCO_val2014_{image_id:012d}.jpg'",
                self.source,
            )
        names = [image_name(image_pattern, split=split, image_id=q["image_id"]) for q in self.questions]
        self.images = self.image_files(names)
        self.annotations = None
        if annotations is not None:
            ann_file = require_file(annotations, "--annotations")
            self.annotations = load_annotations(ann_file)
            missing = [q["question_id"] for q in self.questions if str(q["question_id"]) not in self.annotations]
            if missing:
                raise DataError(
                    f"{len(missing)} question(s) have no annotation, e.g. question_id {missing[0]!r}; pass the "
                    "annotations of the same split, or leave out --annotations to only predict",
                    ann_file,
                )

    @classmethod
    def from_options(cls, values: Mapping[str, Any], limit: int | None, model: str | None) -> VQAv2Task:
        return cls(
            values["questions"],
            values["image_folder"],
            annotations=values["annotations"],
            limit=limit,
            evalai_preprocess=not values["raw_answers"],
            allow_absolute_images=values["allow_absolute_images"],
            **given(values, prompt_suffix="suffix", image_pattern="image_pattern", scorer_version="scorer_version"),
        )

    def question_texts(self) -> list[tuple[str, str]]:
        return [(str(q["question_id"]), q["question"]) for q in self.questions]

    def _submitted(self, rows: Rows, question: dict[str, Any]) -> str:
        """The answer submitted and scored for a question: the prediction, through EvalAI's processor if enabled."""
        prediction = rows[str(question["question_id"])]["prediction"]
        return evalai_process_answer(prediction) if self.evalai_preprocess else prediction

    def write_outputs(self, rows: Rows, out_dir: Path) -> list[Path]:
        results = [{"question_id": q["question_id"], "answer": self._submitted(rows, q)} for q in self.questions]
        target = out_dir / "vqav2_results.json"
        write_text(target, json.dumps(results) + "\n")
        return [target]

    def score(self, rows: Rows) -> dict[str, Any] | None:
        if self.annotations is None:
            return None
        records = []
        for q in self.questions:
            ann = self.annotations[str(q["question_id"])]
            value = vqa_accuracy(self._submitted(rows, q), ann.answers, version=self.scorer_version)
            records.append({"answer_type": ann.answer_type, "question_type": ann.question_type, "score": value})
        return {
            "scorer_version": self.scorer_version,
            "evalai_preprocess": self.evalai_preprocess,
            "by_answer_type": breakdown(records, key="answer_type"),
            "by_question_type": breakdown(records, key="question_type"),
        }
