"""What an evaluation task is: the prompts to answer, how the answers are scored, which official files are written.

One task per benchmark layout (the synthetic set, LLaVA's question JSONL, VQAv2, GQA, MMBench). The runner knows
nothing of layouts: it answers `Prompt`s and hands the predictions back to the task, which scores them against
its references (when it has any) and writes the files the benchmark's own tooling expects.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import PIL.Image

from vlbridge.eval.tasks.files import require_file, require_folder
from vlbridge.registry import Registry

Rows = Mapping[str, Mapping[str, Any]]
"""Predictions by prompt id, in prompt order: each row holds "question_id", "prompt", "prediction" and the record."""

ImageRef = Path | Callable[[], PIL.Image.Image] | None
"""A prompt's image: a file, a loader called when the batch is built (images stored inline, e.g. base64), or none."""


@dataclass(frozen=True)
class Prompt:
    """One request to the model: the user turn's text (no image placeholder) and its image."""

    question_id: str  # unique within a task; the key of the predictions file
    text: str
    image: ImageRef = None
    record: Mapping[str, Any] = field(default_factory=dict)  # extra fields stored beside the prediction


def with_suffix(text: str, suffix: str) -> str:
    """`text` followed on a new line by the prompt suffix (LLaVA's layout), or `text` alone for an empty suffix."""
    return f"{text}\n{suffix}" if suffix else text


_SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def short_uuid() -> str:
    """A random 22-character id in the alphabet of the `shortuuid` package, as LLaVA writes in "answer_id"."""
    return "".join(secrets.choice(_SHORTUUID_ALPHABET) for _ in range(22))


class Task(ABC):
    """A benchmark in one file layout: loaded and validated when built, so malformed input fails before any answer."""

    name: ClassVar[str]
    max_new_tokens: ClassVar[int] = 16  # a default long enough for the task's answers

    @abstractmethod
    def prompts(self) -> list[Prompt]:
        """Everything the model is asked, in order; ids are unique."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What the answers depend on besides the model (files, prompt settings): recorded to tie a folder to a run."""

    def score(self, rows: Rows) -> dict[str, Any] | None:
        """Scores JSON, with a `breakdown` table under each "by_<key>", or None when the task has no references."""
        return None

    def write_outputs(self, rows: Rows, out_dir: Path) -> list[Path]:
        """Write the benchmark's own result files (atomically) and return their paths."""
        return []


class ImageFolderTask(Task):
    """A task whose questions name their images in one folder through a file-name pattern (VQAv2, GQA).

    Each question is asked about its image with the prompt suffix on the next line; subclasses load the questions,
    set `images` (one file name per question, in order) and list (question id, question) in `question_texts`.
    """

    images: list[str]

    def __init__(self, questions: str | Path, image_folder: str | Path, image_pattern: str, suffix: str) -> None:
        self.source = require_file(questions, "--questions")
        self.image_folder = require_folder(image_folder, "--image-folder")
        self.image_pattern, self.suffix = image_pattern, suffix

    @abstractmethod
    def question_texts(self) -> list[tuple[str, str]]:
        """(question id, question) of every question, in order."""

    def prompts(self) -> list[Prompt]:
        return [
            Prompt(qid, with_suffix(text, self.suffix), self.image_folder / image)
            for (qid, text), image in zip(self.question_texts(), self.images, strict=True)
        ]

    def identity(self) -> dict[str, Any]:
        return {
            "questions": str(self.source.resolve()),
            "image_folder": str(self.image_folder.resolve()),
            "image_pattern": self.image_pattern,
            "suffix": self.suffix,
        }


TASKS: Registry[Callable[..., Task]] = Registry("eval task")
"""Task classes by name: synthetic, llava, vqav2, gqa, mmbench."""
