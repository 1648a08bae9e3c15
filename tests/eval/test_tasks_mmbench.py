"""MMBench from its TSV: LLaVA's prompt layout, circular evaluation over rotations, base64 images, errors."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import pytest
from PIL import Image

from vlbridge.errors import DataError, ImageError
from vlbridge.eval import runner
from vlbridge.eval.scoring import circular_variants
from vlbridge.eval.tasks import MMBenchTask

COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]


def _fixed_answers(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str], calls: list[str] | None = None) -> None:
    def answer(model, processor, prompts, max_new_tokens):
        if calls is not None:
            calls.extend(p.question_id for p in prompts)
        return [answers[p.question_id] for p in prompts]

    monkeypatch.setattr(runner, "answer_batch", answer)


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _write_tsv(path: Path, rows: list[list[str]], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    return path


ROWS = [
    ["10", "Which colour is the square?", "nan", "red", "green", "blue", "yellow", "A", "colour", "perception", ""],
    ["11", "What is shown?", "A photo of a park.", "a dog", "a cat", "a tree", "", "C", "objects", "perception", ""],
]


@pytest.fixture
def tsv(tmp_path: Path) -> Path:
    rows = [[*row[:-1], _png((200, 0, 0))] for row in ROWS]
    rows[1][-1] = "10"  # VLMEvalKit's reference to the image of row index 10
    return _write_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows)


def test_prompt_layout_rotations_and_images(tsv: Path) -> None:
    prompts = MMBenchTask(tsv).prompts()
    assert [p.question_id for p in prompts] == ["10/0", "10/1", "10/2", "10/3", "11/0", "11/1", "11/2"]
    suffix = "Answer with the option's letter from the given choices directly."
    assert prompts[0].text == f"Which colour is the square?\nA. red\nB. green\nC. blue\nD. yellow\n{suffix}"
    assert prompts[1].text.endswith("\nA. green\nB. blue\nC. yellow\nD. red\n" + suffix)
    assert prompts[4].text == f"A photo of a park.\nWhat is shown?\nA. a dog\nB. a cat\nC. a tree\n{suffix}"
    variants = circular_variants("What is shown?", ["a dog", "a cat", "a tree"], "C")
    for prompt, variant in zip(prompts[4:], variants, strict=True):
        lines = prompt.text.splitlines()[2:-1]
        assert lines == [f"{chr(65 + i)}. {o}" for i, o in enumerate(variant.options)]
    image = prompts[6].image()
    assert image.size == (6, 4) and image.getpixel((0, 0))[:3] == (200, 0, 0), "row 11 reuses row 10's image"


def test_circular_counts_a_question_only_if_every_rotation_is_right(
    tsv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # question 10 (gold "red"): right in every rotation, as a letter, "(D)", the option's text, or "The answer is B"
    # question 11 (gold "a tree"): right in rotations 0 and 2 but wrong in rotation 1 -> the question is wrong
    answers = {"10/0": "A", "10/1": "(D)", "10/2": "Red", "10/3": "The answer is B."}
    answers.update({"11/0": "C", "11/1": "A", "11/2": "A. a tree"})
    _fixed_answers(monkeypatch, answers)
    result = runner.evaluate(None, None, MMBenchTask(tsv), tmp_path / "out")
    scores = result.scores
    assert scores["circular"] is True and scores["vanilla_accuracy"] == 1.0
    assert scores["by_category"]["overall"] == {"n": 2, "accuracy": 0.5}
    assert scores["by_category"]["colour"]["accuracy"] == 1.0 and scores["by_category"]["objects"]["accuracy"] == 0.0
    assert scores["by_l2-category"]["perception"] == {"n": 2, "accuracy": 0.5}


def test_single_pass_asks_each_question_once(tsv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    _fixed_answers(monkeypatch, {"10/0": "B", "11/0": "C"}, calls)
    scores = runner.evaluate(None, None, MMBenchTask(tsv, circular=False), tmp_path / "out").scores
    assert calls == ["10/0", "11/0"]
    assert scores["circular"] is False and scores["by_category"]["overall"]["accuracy"] == 0.5


def test_results_tsv_and_test_split_without_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    columns = [c for c in COLUMNS if c != "answer"]
    rows = [[c for c, name in zip(row, COLUMNS, strict=True) if name != "answer"] for row in ROWS]
    for row in rows:
        row[-1] = _png((0, 0, 200))
    tsv = _write_tsv(tmp_path / "test.tsv", rows, columns)
    _fixed_answers(monkeypatch, {f"{q}/{k}": "B. green" for q in ("10", "11") for k in range(4)})
    result = runner.evaluate(None, None, MMBenchTask(tsv), tmp_path / "out")
    assert result.scores is None
    with (tmp_path / "out" / "mmbench_results.tsv").open(newline="") as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    assert list(table[0]) == [c for c in columns if c != "image"] + ["prediction", "choice"]
    assert [(r["index"], r["prediction"], r["choice"]) for r in table] == [
        ("10", "B. green", "B"),
        ("11", "B. green", "B"),
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda row: row[:-1], "row has 10 fields but the header has 11"),
        (lambda row: [*row[:7], "E", *row[8:]], "answer 'E' is not one of the option letters"),
        (lambda row: [*row[:4], "", *row[5:]], "at least options A and B"),
        (lambda row: [row[0], "", *row[2:]], "must not be empty"),
        (lambda row: ["10", *row[1:]], "index 10 was already used on line 2"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, change, message: str) -> None:
    good = [*ROWS[0][:-1], _png((0, 0, 0))]
    second = [*ROWS[1][:-1], _png((0, 0, 0))]
    tsv = _write_tsv(tmp_path / "bad.tsv", [good, change(second)])
    with pytest.raises(DataError, match=message) as err:
        MMBenchTask(tsv)
    assert err.value.path == tsv and err.value.line == 3


def test_missing_columns_and_bad_images(tmp_path: Path) -> None:
    tsv = _write_tsv(tmp_path / "cols.tsv", [["1", "q", "x"]], ["index", "question", "A"])
    with pytest.raises(DataError, match=r"missing column.* image, B") as err:
        MMBenchTask(tsv)
    assert err.value.line == 1
    tsv = _write_tsv(tmp_path / "img.tsv", [[*ROWS[0][:-1], "not base64!"]])
    prompt = MMBenchTask(tsv).prompts()[0]
    with pytest.raises(ImageError, match=f"{tsv}:2: the image is not a base64"):
        prompt.image()
    tsv = _write_tsv(tmp_path / "mixed.tsv", [[*ROWS[0][:-1], _png((1, 1, 1))], [*ROWS[1][:7], "", *ROWS[1][8:]]])
    with pytest.raises(DataError, match="no answer but others do") as err:
        MMBenchTask(tsv)
    assert err.value.line == 3
