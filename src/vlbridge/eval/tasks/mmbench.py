"""MMBench from its official TSV: options in the prompt, the letter extracted, circular evaluation per category.

Liu et al., "MMBench: Is Your Multi-modal Model an All-around Player?" (2023). Columns: index, question, hint,
A, B, C, D (E, ... when present), answer, category, l2-category, image (base64; a short number instead names the
row whose image is reused, as VLMEvalKit writes repeated images). Prompts are laid out as LLaVA's
`model_vqa_mmbench.py` lays them out: the hint (if any) on the line before the question, one "A. option" line per
option, then "Answer with the option's letter from the given choices directly." With circular evaluation each
question is asked once per rotation of its options and counts only if every rotation is answered right, which
removes the reward for a letter bias; rotation 0 alone gives the vanilla accuracy, reported beside it.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import PIL.Image

from vlbridge.atomic import write_text
from vlbridge.data.files import nonempty, read_lines
from vlbridge.errors import DataError, ImageError
from vlbridge.eval.scoring import breakdown, circular_variants, extract_choice
from vlbridge.eval.tasks.base import (
    PROMPT_SUFFIX_OPTION,
    QUESTIONS_OPTION,
    TASKS,
    Prompt,
    Rows,
    Task,
    TaskOption,
    given,
    limited,
    with_suffix,
)
from vlbridge.eval.tasks.files import require_file

LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
REQUIRED = ("index", "question", "image", "A", "B")
NO_CIRCULAR_OPTION = TaskOption("no_circular", "ask each question once, unrotated", switch=True)


@dataclass(frozen=True)
class Question:
    """One MMBench row: its options in order (lettered A, B, ...) and the gold letter when the split has one."""

    index: str
    question: str
    hint: str | None
    options: tuple[str, ...]
    answer: str | None
    category: str
    l2_category: str
    image: str  # base64, or the index of the row whose image this one reuses
    line: int
    fields: dict[str, str]  # the row as read, for the results file


def is_none(value: str | None) -> bool:
    """Whether a cell is empty, as pandas' NaN is written ("", "nan", "none"), as LLaVA's `is_none` treats it."""
    return value is None or value.strip().lower() in ("", "nan", "none")


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row by column) for each data row; an empty file, wrong field counts and missing columns raise
    DataError."""
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # base64 images exceed the default 128 KiB field limit
    try:
        reader = csv.reader(read_lines(path), delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise DataError("the file is empty; an MMBench TSV holds a header row and one row per question", path)
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}; an MMBench TSV needs {REQUIRED}", path, 1)
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raise DataError(
                    f"row has {len(cells)} fields but the header has {len(header)}; check the tabs and quoting",
                    path,
                    reader.line_num,
                )
            yield reader.line_num, dict(zip(header, cells, strict=True))
    except csv.Error as err:
        raise DataError(f"not a readable TSV ({err}); write it with tab separators", path) from None
    finally:
        csv.field_size_limit(limit)


def _parse(path: Path, line: int, row: dict[str, str], has_answer: bool) -> Question:
    """One row, or DataError at its line."""
    options: list[str] = []
    for letter in (chr(ord("A") + i) for i in range(26)):
        if letter not in row or is_none(row[letter]):
            break
        options.append(row[letter])
    if len(options) < 2:
        raise DataError("a question needs at least options A and B; fill them in", path, line)
    if is_none(row["question"]) or is_none(row["index"]) or is_none(row["image"]):
        raise DataError('"index", "question" and "image" must not be empty', path, line)
    answer = row["answer"].strip().upper() if has_answer else None
    if answer is not None and answer not in [chr(ord("A") + i) for i in range(len(options))]:
        raise DataError(f"answer {row['answer']!r} is not one of the option letters of this row; fix it", path, line)
    return Question(
        index=row["index"].strip(),
        question=row["question"],
        hint=None if is_none(row.get("hint")) else row["hint"],
        options=tuple(options),
        answer=answer,
        category=row.get("category") or "all",
        l2_category=row.get("l2-category") or "all",
        image=row["image"],
        line=line,
        fields={k: v for k, v in row.items() if k != "image"},
    )


def load_questions(path: Path) -> list[Question]:
    """Validated rows in file order; a malformed row raises DataError with the file and line, and so does a file
    without rows."""
    rows = nonempty(list(_rows(path)), path, "question rows")
    answered = [not is_none(row.get("answer")) for _, row in rows]
    if any(answered) and not all(answered):
        line = rows[answered.index(False)][0]
        raise DataError("this row has no answer but others do; fill it in, or use one split's file", path, line)
    questions, seen = [], {}
    for line, row in rows:
        question = _parse(path, line, row, has_answer=all(answered))
        if question.index in seen:
            raise DataError(f"index {question.index} was already used on line {seen[question.index]}", path, line)
        seen[question.index] = line
        questions.append(question)
    return questions


@TASKS.register("mmbench")
class MMBenchTask(Task):
    """MMBench from one TSV, circular by default."""

    name = "mmbench"
    max_new_tokens = 8
    options = (QUESTIONS_OPTION, PROMPT_SUFFIX_OPTION, NO_CIRCULAR_OPTION)

    def __init__(
        self, questions: str | Path, *, suffix: str = LETTER_ANSWER, circular: bool = True, limit: int | None = None
    ) -> None:
        self.source = require_file(questions, "--questions")
        every = load_questions(self.source)
        self.by_index = {q.index: q for q in every}  # a limited run may still reuse an image of a later row
        self.questions = limited(every, limit)
        self.suffix, self.circular = suffix, circular
        self.scored = all(q.answer is not None for q in self.questions)

    @classmethod
    def from_options(cls, values: Mapping[str, Any], limit: int | None, model: str | None) -> MMBenchTask:
        return cls(
            values["questions"],
            circular=not values["no_circular"],
            limit=limit,
            **given(values, prompt_suffix="suffix"),
        )

    def _image(self, question: Question) -> PIL.Image.Image:
        """The row's image, decoded when its batch is built (following an index reference to another row)."""
        data = question.image.strip()
        if data.isdigit() and len(data) <= 64 and data in self.by_index:
            data = self.by_index[data].image.strip()
        try:
            image = PIL.Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
            image.load()
        except (binascii.Error, ValueError, OSError) as err:
            raise ImageError(f"{self.source}:{question.line}: the image is not a base64 PNG/JPEG ({err})") from None
        return image

    def _text(self, question: Question, options: list[str]) -> str:
        """The prompt for one ordering of the options."""
        text = question.question if question.hint is None else f"{question.hint}\n{question.question}"
        for i, option in enumerate(options):
            text += f"\n{chr(ord('A') + i)}. {option}"
        return with_suffix(text, self.suffix)

    def prompts(self) -> list[Prompt]:
        prompts = []
        for q in self.questions:
            for k in range(len(q.options) if self.circular else 1):
                options = [*q.options[k:], *q.options[:k]]  # rotation k puts option k first
                record = {"index": q.index, "rotation": k}
                prompts.append(Prompt(f"{q.index}/{k}", self._text(q, options), partial(self._image, q), record))
        return prompts

    def identity(self) -> dict[str, Any]:
        return {"questions": str(self.source.resolve()), "suffix": self.suffix, "circular": self.circular}

    def write_outputs(self, rows: Rows, out_dir: Path) -> list[Path]:
        columns = list(self.questions[0].fields) if self.questions else []
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
        writer.writerow([*columns, "prediction", "choice"])
        for q in self.questions:
            reply = rows[f"{q.index}/0"]["prediction"]
            writer.writerow([*(q.fields[c] for c in columns), reply, extract_choice(reply, list(q.options)) or ""])
        target = out_dir / "mmbench_results.tsv"
        write_text(target, buffer.getvalue())
        return [target]

    def score(self, rows: Rows) -> dict[str, Any] | None:
        if not self.scored:
            return None
        records, vanilla = [], []
        for q in self.questions:
            variants = circular_variants(q.question, list(q.options), q.answer)
            rounds = variants if self.circular else variants[:1]
            right = [
                extract_choice(rows[f"{q.index}/{k}"]["prediction"], v.options) == v.answer
                for k, v in enumerate(rounds)
            ]
            records.append({"category": q.category, "l2-category": q.l2_category, "score": float(all(right))})
            vanilla.append(right[0])
        return {
            "circular": self.circular,
            "vanilla_accuracy": sum(vanilla) / len(vanilla),
            "by_category": breakdown(records, key="category"),
            "by_l2-category": breakdown(records, key="l2-category"),
        }
