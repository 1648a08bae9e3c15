"""LLaVA's question/answer JSONL layout: the answers file as model_vqa.py writes it, optional scoring, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlbridge.errors import DataError
from vlbridge.eval import runner
from vlbridge.eval.tasks import LlavaTask
from vlbridge.eval.tasks.base import _SHORTUUID_ALPHABET, model_id


def _fixed_answers(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str], calls: list[str] | None = None) -> None:
    def answer(model, processor, prompts, max_new_tokens):
        if calls is not None:
            calls.extend(p.question_id for p in prompts)
        return [answers[p.question_id] for p in prompts]

    monkeypatch.setattr(runner, "answer_batch", answer)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "images" / "red.png")
    _write_jsonl(
        tmp_path / "questions.jsonl",
        [
            {"question_id": 7, "image": "red.png", "text": "What colour is it?", "category": "colour"},
            {"question_id": "q-2", "image": "red.png", "text": "How many squares?", "category": "count"},
            {"question_id": 9, "text": "Is the sky blue?", "category": "colour"},
        ],
    )
    return tmp_path


def test_answers_file_is_written_as_llava_writes_it(
    bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fixed_answers(monkeypatch, {"7": "Red.", "q-2": "one", "9": "yes"})
    task = LlavaTask(bench / "questions.jsonl", bench / "images", model_name="llava-tiny", suffix="Be brief.")
    prompts = task.prompts()
    assert [p.image for p in prompts] == [bench / "images" / "red.png"] * 2 + [None]
    result = runner.evaluate(None, None, task, tmp_path / "out")
    assert result.scores is None and not (tmp_path / "out" / "scores.json").exists()
    answers = [json.loads(x) for x in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert [list(a) for a in answers] == [["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]] * 3
    assert [a["question_id"] for a in answers] == [7, "q-2", 9], "ids keep their JSON type"
    assert answers[0]["prompt"] == "What colour is it?\nBe brief."
    assert [a["text"] for a in answers] == ["Red.", "one", "yes"]
    assert all(a["model_id"] == "llava-tiny" and a["metadata"] == {} for a in answers)
    assert all(len(a["answer_id"]) == 22 and set(a["answer_id"]) <= set(_SHORTUUID_ALPHABET) for a in answers)
    assert len({a["answer_id"] for a in answers}) == 3


def test_scored_per_category_and_later_without_recomputing(
    bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    _fixed_answers(monkeypatch, {"7": "Red.", "q-2": "two", "9": "No"}, calls)
    out = tmp_path / "out"
    runner.evaluate(None, None, LlavaTask(bench / "questions.jsonl", bench / "images"), out)
    first_ids = (out / "answers.jsonl").read_text()
    refs = _write_jsonl(
        tmp_path / "refs.jsonl",
        [
            {"question_id": 7, "answer": "red"},
            {"question_id": "q-2", "answers": ["1", "one square"]},
            {"question_id": 9, "answers": ["yes", "yes"]},
            {"question_id": 100, "answer": "unused"},
        ],
    )
    calls.clear()
    task = LlavaTask(bench / "questions.jsonl", bench / "images", references=refs)
    result = runner.evaluate(None, None, task, out)
    assert calls == [], "references do not change the predictions, so nothing is asked again"
    assert (out / "answers.jsonl").read_text() == first_ids, "answer ids are kept across runs"
    by_category = result.scores["by_category"]
    assert by_category["overall"] == {"n": 3, "accuracy": 1 / 3}
    assert by_category["colour"] == {"n": 2, "accuracy": 0.5} and by_category["count"]["accuracy"] == 0.0
    assert json.loads((out / "scores.json").read_text())["metric"] == "exact"


def test_vqa_metric_counts_matching_references(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fixed_answers(monkeypatch, {"7": "red", "q-2": "1", "9": "yes"})
    refs = _write_jsonl(
        tmp_path / "refs.jsonl",
        [
            {"question_id": 7, "answers": ["red"] * 3 + ["pink"] * 7},
            {"question_id": "q-2", "answers": ["1"] * 10},
            {"question_id": 9, "answers": ["no"] * 10},
        ],
    )
    task = LlavaTask(bench / "questions.jsonl", bench / "images", references=refs, metric="vqa")
    scores = runner.evaluate(None, None, task, tmp_path / "out").scores
    assert scores["by_category"]["colour"]["accuracy"] == pytest.approx((0.9 + 0.0) / 2)
    assert scores["by_category"]["count"]["accuracy"] == 1.0


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question_id": 1, "text": "a"', "not valid JSON"),
        ('{"question_id": 1}', '"text"'),
        ('{"question_id": true, "text": "a"}', '"question_id"'),
        ('{"question_id": 1, "text": "a", "image": 3}', '"image" must be'),
        ('{"question_id": 1, "text": "again"}', "already used on line 1"),
    ],
)
def test_malformed_question_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "text": "fine"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=message) as err:
        LlavaTask(path)
    assert err.value.path == path and err.value.line == 3
    assert str(err.value).startswith(f"{path}:3: ")


def test_references_must_cover_every_question(bench: Path, tmp_path: Path) -> None:
    refs = _write_jsonl(tmp_path / "refs.jsonl", [{"question_id": 7, "answer": "red"}])
    with pytest.raises(DataError, match=r"2 question\(s\) have no reference, e.g. question_id 'q-2'"):
        LlavaTask(bench / "questions.jsonl", bench / "images", references=refs)
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question_id": 7, "answer": "red"}, {"question_id": 9, "answer": 3}])
    with pytest.raises(DataError) as err:
        LlavaTask(bench / "questions.jsonl", bench / "images", references=bad)
    assert err.value.path == bad and err.value.line == 2


def test_image_folder_is_needed_only_for_image_questions(bench: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --image-folder"):
        LlavaTask(bench / "questions.jsonl")
    text_only = _write_jsonl(tmp_path / "text.jsonl", [{"question_id": 1, "text": "Is the sky blue?"}])
    assert [p.image for p in LlavaTask(text_only).prompts()] == [None]
    with pytest.raises(DataError, match=r"--questions .* does not exist"):
        LlavaTask(tmp_path / "missing.jsonl")


def test_model_id_follows_llava_naming() -> None:
    assert model_id("checkpoints/llava-v1.5-7b/") == "llava-v1.5-7b"
    assert model_id("runs/exp1/checkpoint-500") == "exp1_checkpoint-500"
    assert model_id(None) == "vlbridge-default"
