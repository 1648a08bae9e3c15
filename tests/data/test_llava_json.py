"""LLaVA JSON/JSONL reading: synthetic data loads; each malformation names its file and line, or is skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlbridge.data.llava_json import conversation_texts, load_eval, load_llava, parse_record
from vlbridge.data.synthetic import SynthOptions, synthesize
from vlbridge.errors import DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthOptions(n=20, seed=0))
    return out


def good(i: int, image: str | list[str] | None = "images/a.png") -> dict:
    record = {
        "id": f"r{i}",
        "conversations": [{"from": "human", "value": "<image>\nq?"}, {"from": "gpt", "value": "a"}],
    }
    if image is None:
        record["conversations"][0]["value"] = "q?"
    else:
        record["image"] = image
    return record


def write_list(path: Path, records: list[dict]) -> Path:
    """A JSON list file written as the synthetic writer writes (indent=1), so records span many lines."""
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for name in ("a", "b"):
        (tmp_path / "images" / f"{name}.png").write_bytes(b"png")  # existence is all the loader checks
    return tmp_path


def n_lines(record: dict) -> int:
    """Lines a record takes in a list written with indent=1."""
    return len(json.dumps(record, indent=1).splitlines())


def start_line(path: Path, record_id: str) -> int:
    """The line of the `{` that opens the record whose id is `record_id` (indent=1 puts the id on the next line)."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if f'"id": "{record_id}"' in line) - 1


def test_synthetic_files_load(dataset: Path) -> None:
    for name, records in (("captions.json", 17), ("instruct.json", 34)):  # 20 images - 2 test - 1 val; instruct:
        loaded = load_llava(dataset / name)  # questions and caption for each
        assert len(loaded.items) == records and loaded.n_skipped == 0
        first = loaded.items[0]
        assert first.id == "train_000000" and first.images == ("images/train_000000.png",)
        assert first.source == dataset / name and first.line == 2  # "[" on line 1, the record's "{" on line 2
        assert first.conversations[0]["value"].startswith("<image>\n")
    items = load_eval(dataset / "test.jsonl").items
    assert [(i.question_id, i.line) for i in items] == [("test_000000", 1), ("test_000001", 2)]
    assert items[0].answers == (items[0].answer,) and items[0].type == "colour"


def test_record_kinds(root: Path) -> None:
    records = [good(0), good(1, ["images/a.png", "images/b.png"]), good(2, None)]
    records[1]["conversations"][0]["value"] = "<image> and <image>?"
    records.append({"id": 7, "conversations": [{"from": "system", "value": "sys"}, *good(3, None)["conversations"]]})
    loaded = load_llava(write_list(root / "d.json", records))
    assert [(r.id, r.images) for r in loaded.items] == [
        ("r0", ("images/a.png",)),
        ("r1", ("images/a.png", "images/b.png")),
        ("r2", ()),
        ("7", ()),
    ]


def test_jsonl_and_list_read_alike(root: Path) -> None:
    records = [good(0), good(1, None)]
    as_list = load_llava(write_list(root / "d.json", records)).items
    as_lines = load_llava(write_jsonl(root / "d.jsonl", [json.dumps(r) for r in records])).items
    assert [(r.id, r.images, r.conversations) for r in as_list] == [(r.id, r.images, r.conversations) for r in as_lines]
    assert [r.line for r in as_lines] == [1, 2]


BAD = {
    "no conversations": ({"id": "x", "image": "images/a.png"}, r"needs a non-empty 'conversations' list"),
    "role order": (
        {"id": "x", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
        r"turn 0 is from 'gpt' but 'human' was expected",
    ),
    "ends on human": (
        {"id": "x", "conversations": [{"from": "human", "value": "q"}]},
        r"ends on a 'human' turn",
    ),
    "image count": (good(0) | {"image": ["images/a.png", "images/b.png"]}, r"1 <image> placeholder\(s\) but 2 image"),
    "missing image file": (good(0, "images/nope.png"), r"images/nope.png does not exist"),
    "bad image type": (good(0, None) | {"image": 3}, r"'image' must be a path"),
    "turn without value": ({"id": "x", "conversations": [{"from": "human"}]}, r"turn 0 must be an object"),
    "image in a reply": (
        {"id": "x", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<image>"}]},
        r"turn 1 \(gpt\) contains <image>",
    ),
    "not an object": ([1, 2], r"must be a JSON object"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_malformed_record_in_a_json_list_names_file_and_start_line(root: Path, kind: str) -> None:
    bad, message = BAD[kind]
    records = [good(0), good(1, None), bad, good(3)]
    path = write_list(root / "d.json", records)
    line = start_line(path, "r1") + n_lines(good(1, None))  # the line after r1's closing "},"
    assert path.read_text().splitlines()[line - 1].strip() in ("{", "[")
    with pytest.raises(DataError, match=message) as info:
        load_llava(path)
    assert info.value.path == path and info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("kind", sorted(BAD))
def test_malformed_record_in_jsonl_names_its_line(root: Path, kind: str) -> None:
    bad, message = BAD[kind]
    path = write_jsonl(root / "d.jsonl", [json.dumps(good(0)), "", json.dumps(good(2)), json.dumps(bad)])
    with pytest.raises(DataError, match=message) as info:
        load_llava(path)
    assert (info.value.path, info.value.line) == (path, 4)  # the blank line 2 still counts


def test_invalid_json_line_numbers(root: Path) -> None:
    path = write_jsonl(root / "d.jsonl", [json.dumps(good(0)), '{"id": "x", "conversations": [}'])
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        load_llava(path)
    text = json.dumps([good(0), good(1)], indent=1).replace('"r1",', '"r1"', 1)  # a missing comma in record 2
    (root / "d.json").write_text(text)
    with pytest.raises(DataError, match="not valid JSON") as info:
        load_llava(root / "d.json")
    assert info.value.line == start_line(root / "d.json", "r1") + 2  # the key after the missing comma
    (root / "trailing.json").write_text(json.dumps([good(0)])[:-1] + " x")
    with pytest.raises(DataError, match=r"expected ',' or '\]'"):
        load_llava(root / "trailing.json")
    (root / "after.json").write_text(json.dumps([good(0)]) + "\n[]")
    with pytest.raises(DataError, match=r"after\.json:1: .*after the closing"):
        load_llava(root / "after.json")
    separator = good(1) | {"id": "a\u2028b"}  # a raw line separator inside a string is valid JSON
    path = write_jsonl(root / "sep.jsonl", [json.dumps(separator, ensure_ascii=False), "{"])
    with pytest.raises(DataError, match=r"sep\.jsonl:2: not valid JSON"):
        load_llava(path)


def test_skip_malformed_counts_and_explains(root: Path) -> None:
    lines = [json.dumps(good(0)), "{oops", json.dumps(BAD["role order"][0]), json.dumps(good(3, "images/nope.png"))]
    lines.append(json.dumps(good(4, None)))
    loaded = load_llava(write_jsonl(root / "d.jsonl", lines), skip_malformed=True)
    assert [r.id for r in loaded.items] == ["r0", "r4"]
    assert loaded.n_skipped == 3
    assert [s.line for s in loaded.skipped] == [2, 3, 4]
    reasons = [s.reason for s in loaded.skipped]
    assert "not valid JSON" in reasons[0] and "'human' was expected" in reasons[1] and "does not exist" in reasons[2]
    list_loaded = load_llava(write_list(root / "d.json", [good(0), BAD["image count"][0]]), skip_malformed=True)
    assert len(list_loaded.items) == 1 and list_loaded.skipped[0].line == start_line(root / "d.json", "r0") + n_lines(
        good(0)
    )


def test_image_check_can_be_deferred_and_root_changed(root: Path) -> None:
    path = write_list(root / "d.json", [good(0, "images/nope.png")])
    assert len(load_llava(path, check_images=False).items) == 1
    elsewhere = root / "other"
    (elsewhere / "images").mkdir(parents=True)
    (elsewhere / "images" / "nope.png").write_bytes(b"png")
    assert len(load_llava(path, image_root=elsewhere).items) == 1


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_llava(tmp_path / "nope.json")


def test_eval_items_validate(root: Path) -> None:
    rows = [
        {"question_id": 1, "image": "images/a.png", "question": "q", "answer": ["2", "two"], "type": "count"},
        {"question_id": "t", "question": "text only?", "answer": "yes", "choices": ["yes", "no"]},
        {"question_id": "u", "image": "images/a.png", "question": "q"},
    ]
    path = write_jsonl(root / "t.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(DataError, match=r"t\.jsonl:3: missing key\(s\) answer"):
        load_eval(path)
    loaded = load_eval(path, skip_malformed=True)
    first, second = loaded.items
    assert (first.question_id, first.answers, first.answer, first.type) == ("1", ("2", "two"), "2", "count")
    assert (second.image, second.choices, second.type) == (None, ("yes", "no"), "all")
    assert loaded.n_skipped == 1


def test_conversation_texts_drop_placeholders() -> None:
    inline = {
        "image": "x.png",
        "conversations": [{"from": "human", "value": "a<image>b"}, {"from": "gpt", "value": "c"}],
    }
    records = [parse_record(good(0), 1), parse_record(inline, 2)]
    assert conversation_texts(records) == ["q?\na", "ab\nc"]
    assert records[1].id == "line2"  # a record without an id is named by its line
