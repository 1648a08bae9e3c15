"""Reading LLaVA-format datasets (conversation JSON or JSONL) and held-out question files, validated record by record.

Liu et al., "Visual Instruction Tuning" (2023) store training data as a JSON list of records
`{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}`, where `image` is one path, a list of
paths (multi-image) or absent (text-only), and each image has one `<image>` placeholder in a human turn. Video records
(LLaVA-NeXT-Video, LLaVA-Video-178K) name a `video` instead, one path or a list, each with one `<video>` placeholder;
a video record with `<image>` placeholders and no `<video>` one (LLaVA-Video-178K writes them so) has them read as
`<video>`. A record holds images or videos, not both. JSONL (one record per line) holds the same records.
Held-out questions (`test.jsonl`, `val.jsonl`) are `{"question_id", "image", "question", "answer", "type"}`
(+ `"choices"`), as the synthetic writer makes them, or with a `"video"` instead of the image (synth-video).

Every problem is a DataError naming the file, the line where the bad record starts (for a JSON list, found by
decoding the array item by item with `json.JSONDecoder.raw_decode`) and what is wrong; `skip_malformed=True` skips
and counts such records instead. Files are read through `vlbridge.data.files` (UTF-8 only, nesting depth, no empty
files). Image paths must stay inside the image root (`files.ImageFolder`; absolute paths only with
`allow_absolute_images`), checked for every record at load time; image files are checked to exist then too (pass
`check_images=False` to defer that check to when an image is read). Invalid JSON in a JSON list is fatal even when
skipping: past a syntax error the next record cannot be found reliably.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from vlbridge.data.files import ImageFolder, json_error, nonempty, parse_json, read_text
from vlbridge.errors import DataError
from vlbridge.lm.templates import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

R = TypeVar("R")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class Record:
    """One LLaVA conversation: image (or video) paths as written in the file (relative to the image root, which the
    loaders check they stay inside), turns, origin."""

    id: str
    images: tuple[str, ...]
    conversations: tuple[dict[str, str], ...]  # {"from": "system"|"human"|"gpt", "value": str}
    source: Path | None = None
    line: int | None = None
    videos: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalItem:
    """One held-out question: the image (or video) path (relative to the image root, None for text-only) and its
    answers."""

    question_id: str
    image: str | None
    question: str
    answers: tuple[str, ...]  # one answer, or several (VQAv2 gives 10)
    type: str
    choices: tuple[str, ...] | None = None
    source: Path | None = None
    line: int | None = None
    video: str | None = None

    @property
    def answer(self) -> str:
        """The first (reference) answer."""
        return self.answers[0]


@dataclass(frozen=True)
class Skipped:
    """A malformed record that `skip_malformed=True` left out, and why."""

    path: Path
    line: int
    reason: str


@dataclass(frozen=True)
class Loaded(Generic[R]):
    """What a loader read: the valid items, and the malformed ones it skipped (empty unless skipping)."""

    items: list[R]
    skipped: list[Skipped]

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


@dataclass(frozen=True)
class _Invalid:
    """Stands in for a JSONL line that is not valid JSON, so a skipping loader can count it and go on."""

    reason: str


def _iter_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, parsed value) for each record of a JSON list file or a JSONL file, told apart by the first character.

    A JSONL line that is not valid JSON yields an `_Invalid`; a JSON list with a syntax error raises at once.
    """
    text = read_text(path)
    start = _WHITESPACE.match(text).end()
    if text.startswith("[", start):
        yield from _iter_list(path, text, start)
        return
    for number, raw in enumerate(text.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if not raw.strip():
            continue
        try:
            value = parse_json(raw)
        except DataError as err:
            value = _Invalid(f"{err}; a JSON file must hold one list of records, a .jsonl file one record per line")
        yield number, value


def _iter_list(path: Path, text: str, start: int) -> Iterator[tuple[int, Any]]:
    """Items of the JSON array that opens at `start`, each with the line its first character is on."""
    decoder = json.JSONDecoder()
    line, counted = 1, 0
    pos = _WHITESPACE.match(text, start + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as err:
            raise json_error(err, text, path) from None
        yield line, value
        pos = _WHITESPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _WHITESPACE.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            if text[pos + 1 :].strip():
                raise DataError("not valid JSON (text after the closing ']')", path, text.count("\n", 0, pos) + 1)
            return
        else:
            where = text.count("\n", 0, pos) + 1
            raise DataError("not valid JSON (expected ',' or ']' after a record)", path, where)


def check_image_files(images: Sequence[str], folder: ImageFolder | None, record: str, what: str = "image") -> None:
    """DataError naming `record` for the first of `images` (or videos: `what`) that `folder` refuses (None: no
    check)."""
    if folder is not None:
        for image in images:
            folder.path(image, record, what=what)


def _image_list(value: Any, key: str = "image") -> tuple[str, ...]:
    if value is None:
        return ()
    images = [value] if isinstance(value, str) else value
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise DataError(f"'{key}' must be a path, a list of paths or absent, got {value!r}")
    return tuple(images)


def _media(data: dict[str, Any], what: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(image paths, video paths, the placeholder marking them) of a record (`what`: "record 'r7'"), which holds one
    kind or none."""
    images, videos = _image_list(data.get("image")), _image_list(data.get("video"), "video")
    if images and videos:
        raise DataError(
            f"{what} has both 'image' and 'video'; the model takes images or videos in one sequence, not both: "
            "split it into an image record and a video record"
        )
    return images, videos, VIDEO_PLACEHOLDER if videos else IMAGE_PLACEHOLDER


def _record_id(data: dict[str, Any], line: int) -> str:
    value = data.get("id", f"line{line}")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise DataError(f"'id' must be a string or an integer, got {value!r}")
    return str(value)


def parse_record(data: Any, line: int, images: ImageFolder | None = None) -> Record:
    """Validate one LLaVA record (DataError without a location on any problem) and return it as a Record."""
    if not isinstance(data, dict):
        raise DataError(f"a record must be a JSON object, got {type(data).__name__}")
    record_id = _record_id(data, line)
    paths, videos, placeholder = _media(data, f"record {record_id!r}")
    turns = data.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"record {record_id!r} needs a non-empty 'conversations' list (missing key or wrong type)")
    offset = 1 if isinstance(turns[0], dict) and turns[0].get("from") == "system" else 0
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not {"from", "value"} <= turn.keys() or not isinstance(turn["value"], str):
            raise DataError(f"record {record_id!r}: turn {i} must be an object with 'from' and a string 'value'")
        expected = ("human", "gpt")[(i - offset) % 2] if i >= offset else "system"
        if turn["from"] != expected:
            raise DataError(
                f"record {record_id!r}: turn {i} is from {turn['from']!r} but {expected!r} was expected; turns must "
                "alternate human, gpt, ... (after an optional leading system turn)"
            )
        for marker in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
            if expected != "human" and marker in turn["value"]:
                raise DataError(
                    f"record {record_id!r}: turn {i} ({turn['from']}) contains {marker}; only human turns may hold "
                    "image or video placeholders"
                )
    if turns[-1]["from"] != "gpt":
        raise DataError(f"record {record_id!r} ends on a {turns[-1]['from']!r} turn; it must end with a gpt reply")
    values = [t["value"] for t in turns]
    if videos and not any(VIDEO_PLACEHOLDER in v for v in values):  # LLaVA-Video-178K marks its video with <image>
        values = [v.replace(IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER) for v in values]
    other = IMAGE_PLACEHOLDER if placeholder == VIDEO_PLACEHOLDER else VIDEO_PLACEHOLDER
    if any(other in v for v in values):
        kind = "video" if videos else "image"
        raise DataError(
            f"record {record_id!r} holds {other} but names {'no video' if other == VIDEO_PLACEHOLDER else 'no image'}"
            f"; a {kind} record marks its {kind}s with {placeholder}: fix the placeholder or the record's media"
        )
    placeholders, media = sum(v.count(placeholder) for v in values), paths or videos
    if placeholders != len(media):
        kind = "video" if videos else "image"
        raise DataError(
            f"record {record_id!r} has {placeholders} {placeholder} placeholder(s) but {len(media)} {kind}(s); "
            f"put one {placeholder} in a human turn per {kind}"
        )
    check_image_files(paths, images, f"record {record_id!r}")
    check_image_files(videos, images, f"record {record_id!r}", "video")
    conversations = tuple({"from": t["from"], "value": v} for t, v in zip(turns, values, strict=True))
    return Record(id=record_id, images=paths, conversations=conversations, line=line, videos=videos)


def parse_eval_item(data: Any, line: int, images: ImageFolder | None = None) -> EvalItem:
    """Validate one held-out question (DataError without a location on any problem) and return it as an EvalItem."""
    if not isinstance(data, dict):
        raise DataError(f"a question must be a JSON object, got {type(data).__name__}")
    missing = [key for key in ("question_id", "question", "answer") if key not in data]
    if missing:
        raise DataError(f"missing key(s) {', '.join(missing)}; a question needs question_id, question and answer")
    answers = data["answer"] if isinstance(data["answer"], list) else [data["answer"]]
    if not answers or not all(isinstance(a, str) for a in answers) or not isinstance(data["question"], str):
        raise DataError("'question' must be a string and 'answer' a string or a non-empty list of strings")
    paths, videos, _ = _media(data, f"question {data['question_id']!r}")
    for key, given in (("image", paths), ("video", videos)):
        if len(given) > 1:
            raise DataError(f"'{key}' must be one path or absent, got {len(given)} paths")
    choices = data.get("choices")
    if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        raise DataError(f"'choices' must be a list of strings, got {choices!r}")
    check_image_files(paths, images, f"question {data['question_id']!r}")
    check_image_files(videos, images, f"question {data['question_id']!r}", "video")
    return EvalItem(
        question_id=str(data["question_id"]),
        image=paths[0] if paths else None,
        question=data["question"],
        answers=tuple(answers),
        type=str(data.get("type", "all")),
        choices=None if choices is None else tuple(choices),
        line=line,
        video=videos[0] if videos else None,
    )


def load_items(
    path: str | Path, parse: Callable[[Any, int, ImageFolder], R], images: ImageFolder, skip_malformed: bool
) -> Loaded[R]:
    """Every record of a JSON list or JSONL file through `parse(value, line, images)`, which raises DataError
    without a location on a bad one; the error gets the file and line here, or the record is skipped and listed.
    A file that yields no record, skipped ones aside, raises DataError naming it."""
    path = Path(path)
    items: list[R] = []
    skipped: list[Skipped] = []
    for line, value in _iter_records(path):
        try:
            if isinstance(value, _Invalid):
                raise DataError(value.reason)
            item = parse(value, line, images)
        except DataError as err:
            if not skip_malformed:
                raise DataError(str(err), path, line) from None
            skipped.append(Skipped(path, line, str(err)))
            continue
        items.append(dataclasses.replace(item, source=path))
    if skipped and not items:
        first = skipped[0]
        raise DataError(f"all {len(skipped)} records are malformed, e.g. line {first.line}: {first.reason}", path)
    return Loaded(nonempty(items, path, "records"), skipped)


def image_folder(
    path: str | Path, image_root: str | Path | None, check_images: bool, allow_absolute_images: bool
) -> ImageFolder:
    """The folder a data file's image paths are checked against: `image_root`, else the file's own folder."""
    root = Path(image_root) if image_root is not None else Path(path).parent
    return ImageFolder(root, allow_absolute=allow_absolute_images, must_exist=check_images)


def load_llava(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    skip_malformed: bool = False,
    check_images: bool = True,
    allow_absolute_images: bool = False,
) -> Loaded[Record]:
    """Read a LLaVA JSON/JSONL dataset; image paths are relative to `image_root` (default: the file's folder).

    Malformed records raise DataError(path, line), or with `skip_malformed` are left out and listed in `.skipped`.
    A record whose image path leads outside `image_root` (or is absolute, unless `allow_absolute_images`) counts as
    malformed; with `check_images`, so does one whose image file is missing.
    """
    images = image_folder(path, image_root, check_images, allow_absolute_images)
    return load_items(path, parse_record, images, skip_malformed)


def load_eval(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    skip_malformed: bool = False,
    check_images: bool = True,
    allow_absolute_images: bool = False,
) -> Loaded[EvalItem]:
    """Read held-out questions (JSONL or a JSON list) as `load_llava` reads conversations."""
    images = image_folder(path, image_root, check_images, allow_absolute_images)
    return load_items(path, parse_eval_item, images, skip_malformed)


def conversation_texts(records: Sequence[Record]) -> list[str]:
    """Plain text of each record (turn values joined by newlines, image and video placeholders removed): a text-LM
    corpus."""
    texts = []
    for record in records:
        values = [t["value"] for t in record.conversations]
        for marker in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
            values = [v.replace(marker + "\n", "").replace(marker, "") for v in values]
        texts.append("\n".join(values))
    return texts
