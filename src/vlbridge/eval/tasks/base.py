"""What an evaluation task is: the prompts to answer, how the answers are scored, which official files are written.

One task per benchmark layout (the synthetic set, LLaVA's question JSONL, VQAv2, GQA, MMBench). The runner knows
nothing of layouts: it answers `Prompt`s and hands the predictions back to the task, which scores them against
its references (when it has any) and writes the files the benchmark's own tooling expects.

Each task class is registered by name in `TASKS` and declares the `TaskOption`s it is built from, so a front end
(`vlbridge eval`) offers every registered task and its options without knowing any of them: adding a task is a
new module and its registration, nothing else.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import PIL.Image

from vlbridge.data.files import ImageFolder
from vlbridge.errors import ConfigError
from vlbridge.eval.tasks.files import require_file, require_folder
from vlbridge.registry import Registry

T = TypeVar("T")

Rows = Mapping[str, Mapping[str, Any]]
"""Predictions by prompt id, in prompt order: each row holds "question_id", "prompt", "prediction" and the record."""

ImageRef = Path | Callable[[], PIL.Image.Image] | None
"""A prompt's image: a file, a loader called when the batch is built (images stored inline, e.g. base64), or none."""


@dataclass(frozen=True)
class TaskOption:
    """A setting some tasks are built from, by `name` (a Python identifier)."""

    name: str
    help: str
    choices: tuple[str, ...] | None = None
    switch: bool = False  # a yes/no flag, False unless given; otherwise a value, None unless given

    @property
    def flag(self) -> str:
        """The command-line spelling: --name, with dashes."""
        return "--" + self.name.replace("_", "-")


QUESTIONS_OPTION = TaskOption("questions", "question file (JSONL, JSON or TSV as the task reads)")
IMAGE_FOLDER_OPTION = TaskOption("image_folder", "folder the question images are in")
PROMPT_SUFFIX_OPTION = TaskOption("prompt_suffix", "line added after each question ('' for none)")
IMAGE_PATTERN_OPTION = TaskOption("image_pattern", "image file name, e.g. 'COCO_val2014_{image_id:012d}.jpg'")
ALLOW_ABSOLUTE_IMAGES_OPTION = TaskOption(
    "allow_absolute_images", "let question files name images by absolute path (else: inside the folder)", switch=True
)
"""Options several tasks share; a task's own options live in its module."""


def given(values: Mapping[str, Any], **keywords: str) -> dict[str, Any]:
    """Constructor keywords for the options that were given: `keywords` maps an option name to its keyword, so an
    option left out keeps the constructor's default."""
    return {keyword: values[name] for name, keyword in keywords.items() if values[name] is not None}


def model_id(model_path: str | Path | None) -> str:
    """The "model_id" LLaVA writes: the checkpoint folder's name, with its parent's for a `checkpoint-N` folder.

    Names come from the resolved path, so `run/sub/..` is `run` and `.` the current folder's name: the id is one
    plain folder name, never '..' or '.', and an output folder named after it stays where it is put."""
    if model_path is None:
        return "vlbridge-default"
    path = Path(model_path).resolve()
    if path.name.startswith("checkpoint-") and path.parent.name:
        return f"{path.parent.name}_{path.name}"
    return path.name or "root"


def limited(items: Sequence[T], limit: int | None) -> list[T]:
    """The first `limit` items (all for None). A limit below 1 raises ConfigError: slicing would read -1 as "all
    but the last" and 0 as "none", a run that looks fine and answers the wrong questions."""
    if limit is None:
        return list(items)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(
            f"--limit must be a whole number >= 1 (how many questions to ask), got {limit!r}; leave it out to ask "
            "every question"
        )
    return list(items[:limit])


@dataclass(frozen=True)
class Prompt:
    """One request to the model: the user turn's text (no image placeholder) and its image, or its video file and how
    the video is sampled."""

    question_id: str  # unique within a task; the key of the predictions file
    text: str
    image: ImageRef = None
    record: Mapping[str, Any] = field(default_factory=dict)  # extra fields stored beside the prediction
    video: Path | None = None
    video_sampling: tuple[float, int | None] = (1.0, 32)  # (fps, max_frames)


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
    options: ClassVar[tuple[TaskOption, ...]] = ()  # what `from_options` reads

    @classmethod
    @abstractmethod
    def from_options(cls, values: Mapping[str, Any], limit: int | None, model: str | None) -> Task:
        """The task built from `values`, one per option in `options` (None, or False for a switch, when not given),
        keeping only the first `limit` questions; `model` is the checkpoint path answering (None: the default)."""

    @classmethod
    def default_out(cls, values: Mapping[str, Any], model: str | None) -> Path:
        """Where results go unless told: answers/<model id> beside the question file, as LLaVA's scripts keep them."""
        return Path(values["questions"]).parent / "answers" / model_id(model)

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
    list (question id, question) in `question_texts` and set `images` from the file names with `image_files`.
    """

    images: list[Path]

    def __init__(
        self,
        questions: str | Path,
        image_folder: str | Path,
        image_pattern: str,
        suffix: str,
        allow_absolute_images: bool = False,
    ) -> None:
        self.source = require_file(questions, "--questions")
        self.image_folder = require_folder(image_folder, "--image-folder")
        self.image_pattern, self.suffix = image_pattern, suffix
        self.folder = ImageFolder(self.image_folder, allow_absolute=allow_absolute_images, must_exist=False)

    def image_files(self, names: Sequence[str]) -> list[Path]:
        """The image file of each question (one name each, in `question_texts` order), or DataError naming the
        question whose name leads outside the image folder; the runner checks that the files exist."""
        questions = self.question_texts()
        return [
            self.folder.path(name, f"question {qid!r}", self.source)
            for (qid, _), name in zip(questions, names, strict=True)
        ]

    @abstractmethod
    def question_texts(self) -> list[tuple[str, str]]:
        """(question id, question) of every question, in order."""

    def prompts(self) -> list[Prompt]:
        return [
            Prompt(qid, with_suffix(text, self.suffix), image)
            for (qid, text), image in zip(self.question_texts(), self.images, strict=True)
        ]

    def identity(self) -> dict[str, Any]:
        return {
            "questions": str(self.source.resolve()),
            "image_folder": str(self.image_folder.resolve()),
            "image_pattern": self.image_pattern,
            "suffix": self.suffix,
        }


TASKS: Registry[type[Task]] = Registry("eval task")
"""Task classes by name: synthetic, synthetic_video, llava, vqav2, gqa, mmbench."""
