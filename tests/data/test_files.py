"""Every reader of a data file (datasets, question, answer and label files, training texts) reports a bad file the
same way: not UTF-8, JSON nested too deep, nothing in it, an image path leading out of its folder. Each case names
the file and, where the file has lines, the line, and says what to do."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vlbridge.config import from_dict
from vlbridge.data.llava_json import load_eval, load_llava
from vlbridge.data.regions import load_regions
from vlbridge.errors import DataError
from vlbridge.eval.retention import load_qa
from vlbridge.eval.tasks import GQATask, LlavaTask, MMBenchTask, SyntheticTask, VQAv2Task
from vlbridge.train.recipe import DataRecipe, StageRecipe
from vlbridge.train.stage_data import stage_texts

DEEP = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit: json.loads raises RecursionError


def _turns(text: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": text}, {"from": "gpt", "value": "yes"}]


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Reader:
    """A reader, the lines of a file it accepts (line 2 holding "café"), the same with line 2 nested too deep (None
    for formats without JSON), and contents with nothing to read."""

    read: Callable[[Path], Any]
    name: str
    lines: list[str]
    deep: list[str] | None
    empty: tuple[str, ...]


def _text_stage(path: Path) -> list[str]:
    stage = {"name": "s", "steps": 1, "objective": "text_lm", "data": path.name, "data_format": "text"}
    return stage_texts(from_dict(StageRecipe, stage), path.parent, DataRecipe())


LLAVA_ONE = _dump({"id": "a", "conversations": _turns("hi")})
LLAVA_TWO = _dump({"id": "b", "conversations": _turns("Is the café open?")})
EVAL = '{"question_id": %d, "question": "%s", "answer": "yes"}'
REGION = '{"image": "a.png", "grid": 1, "labels": {"kind": ["%s"]}}'
QUESTION = '{"question_id": %d, "text": "%s"}'
QA = '{"question": "%s", "answer": "yes"}'
GQA = '"%s": {"imageId": "n1", "question": "Is the café open?", "answer": "yes"}'
VQA = '{"question_id": 1, "image_id": 1, "question": "Is the café open?"}'
TSV_HEADER = "index\tquestion\tA\tB\timage"

READERS = [
    Reader(load_llava, "d.jsonl", [LLAVA_ONE, LLAVA_TWO], [LLAVA_ONE, DEEP], ("", "\n\n")),
    Reader(load_llava, "d.json", ["[" + LLAVA_ONE + ",", LLAVA_TWO, "]"], ["[" + LLAVA_ONE + ",", DEEP, "]"], ("[]",)),
    Reader(load_eval, "q.jsonl", [EVAL % (1, "q"), EVAL % (2, "café?")], [EVAL % (1, "q"), DEEP], ("",)),
    Reader(
        lambda p: load_regions(p, check_images=False),
        "r.jsonl",
        [REGION % "a", REGION % "café"],
        [REGION % "a", DEEP],
        ("",),
    ),
    Reader(LlavaTask, "q.jsonl", [QUESTION % (1, "q"), QUESTION % (2, "café?")], [QUESTION % (1, "q"), DEEP], ("",)),
    Reader(load_qa, "qa.jsonl", [QA % "q", QA % "café?"], [QA % "q", DEEP], ("", "\n")),
    Reader(lambda p: GQATask(p, p.parent), "gqa.json", ["{", GQA % "1", "}"], ["{", '"1": ' + DEEP, "}"], ("", "{}")),
    Reader(
        lambda p: VQAv2Task(p, p.parent),
        "vqa.json",
        ['{"data_subtype": "val2014", "questions": [', VQA, "]}"],
        ['{"data_subtype": "val2014", "questions": [', DEEP, "]}"],
        ("", '{"questions": []}'),
    ),
    Reader(MMBenchTask, "mm.tsv", [TSV_HEADER, "1\tIs the café open?\tyes\tno\tAAAA"], None, ("", TSV_HEADER + "\n")),
    Reader(_text_stage, "texts.txt", ["plain", "café au lait"], None, ("", "\n \n")),
]
IDS = [f"{reader.read.__name__}-{reader.name}" for reader in READERS]


def _write(tmp_path: Path, reader: Reader, data: bytes) -> Path:
    path = tmp_path / reader.name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("reader", READERS, ids=IDS)
def test_utf8_files_read(tmp_path: Path, reader: Reader) -> None:
    reader.read(_write(tmp_path, reader, "\n".join(reader.lines).encode("utf-8") + b"\n"))


@pytest.mark.parametrize("reader", READERS, ids=IDS)
def test_a_latin1_file_names_the_file_and_line_and_says_to_save_as_utf8(tmp_path: Path, reader: Reader) -> None:
    path = _write(tmp_path, reader, "\n".join(reader.lines).encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"is not UTF-8 text .*save it as UTF-8") as err:
        reader.read(path)
    assert (err.value.path, err.value.line) == (path, 2)


@pytest.mark.parametrize("reader", READERS, ids=IDS)
@pytest.mark.parametrize(("encoding", "message"), [("utf-16", "is UTF-16 text"), ("utf-16-le", "holds a NUL byte")])
def test_a_utf16_file_names_the_file_and_says_to_save_as_utf8(
    tmp_path: Path, reader: Reader, encoding: str, message: str
) -> None:
    path = _write(tmp_path, reader, "\n".join(reader.lines).encode(encoding))
    with pytest.raises(DataError, match=f"{message}.*save it as UTF-8") as err:
        reader.read(path)
    assert (err.value.path, err.value.line) == (path, 1)


@pytest.mark.parametrize(
    "reader", [r for r in READERS if r.deep is not None], ids=lambda r: f"{r.read.__name__}-{r.name}"
)
def test_json_nested_100000_deep_names_the_file_and_line(tmp_path: Path, reader: Reader) -> None:
    path = _write(tmp_path, reader, "\n".join(reader.deep).encode() + b"\n")
    with pytest.raises(DataError, match="nested deeper than Python's JSON parser can follow") as err:
        reader.read(path)
    assert (err.value.path, err.value.line) == (path, 2)


@pytest.mark.parametrize("reader", READERS, ids=IDS)
def test_a_file_with_nothing_to_read_is_named(tmp_path: Path, reader: Reader) -> None:
    for content in reader.empty:
        path = _write(tmp_path, reader, content.encode())
        with pytest.raises(DataError, match=r"empty|holds no") as err:
            reader.read(path)
        assert err.value.path == path, content


def test_a_file_of_malformed_records_only_says_so_when_skipping(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(DataError, match=r"d\.jsonl: all 2 records are malformed, e.g. line 1: record 'a' needs"):
        load_llava(path, skip_malformed=True)


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """tmp/data (the image folder the user names, one image and a symlink out of it) beside tmp/outside/secret.png."""
    (tmp_path / "data").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"png")
    (tmp_path / "outside" / "secret.png").write_bytes(b"secret")
    os.symlink(tmp_path / "outside" / "secret.png", tmp_path / "data" / "link.png")
    return tmp_path


OUTSIDE = ["../outside/secret.png", "{secret}", "../../../../../../../../etc/passwd", "link.png", "a/../../outside/x"]


def _llava(data: Path, image: str, **kw: Any) -> Any:
    record = {"id": "r7", "image": image, "conversations": _turns("<image>\nWhat is it?")}
    path = data / "d.jsonl"
    path.write_text(_dump({"id": "r1", "conversations": _turns("hi")}) + "\n" + _dump(record) + "\n")
    return path, 2, "record 'r7'", lambda: load_llava(path, **kw).items[-1].images[0]


def _eval_items(data: Path, image: str, **kw: Any) -> Any:
    path = data / "test.jsonl"
    path.write_text(EVAL % (1, "q") + "\n" + _dump({"question_id": 7, "image": image, "question": "q", "answer": "a"}))
    return path, 2, "question 7", lambda: load_eval(path, **kw).items[-1].image


def _regions(data: Path, image: str, **kw: Any) -> Any:
    path = data / "r.jsonl"
    path.write_text(REGION % "a" + "\n" + _dump({"image": image, "grid": 1, "labels": {"kind": ["b"]}}) + "\n")
    return path, 2, "the record", lambda: load_regions(path, **kw).items[-1].image


def _llava_task(data: Path, image: str, **kw: Any) -> Any:
    path = data / "q.jsonl"
    path.write_text(QUESTION % (1, "q") + "\n" + _dump({"question_id": 7, "text": "q", "image": image}) + "\n")
    return path, 2, "question 7", lambda: LlavaTask(path, data, **kw).prompts()[-1].image


def _gqa(data: Path, image: str, **kw: Any) -> Any:
    path = data / "gqa.json"
    path.write_text(_dump({"7": {"imageId": image, "question": "q"}}))
    return path, None, "question '7'", lambda: GQATask(path, data, image_pattern="{image_id}", **kw).prompts()[0].image


def _vqav2(data: Path, image: str, **kw: Any) -> Any:
    path = data / "vqa.json"
    path.write_text(_dump({"questions": [{"question_id": 7, "image_id": 1, "question": "q"}]}))
    pattern = image  # the user's --image-pattern, here without fields
    return path, None, "question '7'", lambda: VQAv2Task(path, data, image_pattern=pattern, **kw).prompts()[0].image


def _synthetic(data: Path, image: str, **kw: Any) -> Any:
    path, line, record, _ = _eval_items(data, image)
    allow = kw.get("allow_absolute_images", False)
    return path, line, record, lambda: SyntheticTask.from_folder(data, allow_absolute_images=allow).prompts()[-1].image


IMAGE_READERS = [_llava, _eval_items, _regions, _llava_task, _gqa, _vqav2, _synthetic]


@pytest.mark.parametrize("reader", IMAGE_READERS, ids=lambda r: r.__name__.strip("_"))
@pytest.mark.parametrize("image", OUTSIDE)
def test_image_paths_leading_out_of_the_image_folder_are_refused(world: Path, reader: Callable, image: str) -> None:
    image = image.format(secret=world / "outside" / "secret.png")
    path, line, record, read = reader(world / "data", image)
    with pytest.raises(DataError, match=r"is absolute|leads outside the image folder") as err:
        read()
    assert (err.value.path, err.value.line) == (path, line)
    assert str(err.value).startswith(f"{path}{'' if line is None else f':{line}'}: {record}: image path ")


@pytest.mark.parametrize("reader", IMAGE_READERS, ids=lambda r: r.__name__.strip("_"))
def test_absolute_image_paths_are_read_only_when_the_user_opts_in(world: Path, reader: Callable) -> None:
    secret = world / "outside" / "secret.png"
    *_, read = reader(world / "data", str(secret), allow_absolute_images=True)
    assert str(read()) == str(secret)
    *_, read = reader(world / "data", "../outside/secret.png", allow_absolute_images=True)
    with pytest.raises(DataError, match="leads outside the image folder"):
        read()  # the opt-in is for absolute paths; relative ones still stay inside


@pytest.mark.parametrize("reader", IMAGE_READERS, ids=lambda r: r.__name__.strip("_"))
def test_dot_dot_that_stays_inside_the_folder_is_fine(world: Path, reader: Callable) -> None:
    (world / "data" / "sub").mkdir()
    *_, read = reader(world / "data", "sub/../a.png")
    assert (world / "data" / read()).resolve() == (world / "data" / "a.png").resolve()  # names as written or joined


@pytest.mark.parametrize("reader", [_llava, _llava_task], ids=lambda r: r.__name__.strip("_"))
def test_an_image_path_with_a_nul_character_is_refused(world: Path, reader: Callable) -> None:
    path, line, record, read = reader(world / "data", "a.png\x00")
    with pytest.raises(DataError, match="holds a NUL character") as err:
        read()
    assert str(err.value).startswith(f"{path}:{line}: {record}: image path ")
