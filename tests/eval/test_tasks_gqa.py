"""GQA from the official questions JSON: normalised exact match per structural/semantic type, predictions file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlbridge.errors import DataError
from vlbridge.eval import runner
from vlbridge.eval.tasks import GQATask


def _fixed_answers(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> None:
    def answer(model, processor, prompts, max_new_tokens):
        return [answers[p.question_id] for p in prompts]

    monkeypatch.setattr(runner, "answer_batch", answer)


def _question(image: str, question: str, answer: str | None, structural: str, semantic: str) -> dict:
    entry = {
        "imageId": image,
        "question": question,
        "types": {"structural": structural, "semantic": semantic, "detailed": f"{semantic}Detail"},
        "isBalanced": True,
    }
    return entry if answer is None else {**entry, "answer": answer, "fullAnswer": f"It is {answer}."}


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for name in ("n1", "n2"):
        Image.new("RGB", (8, 8), (90, 90, 0)).save(tmp_path / "images" / f"{name}.jpg")
    questions = {
        "201": _question("n1", "How many cups are there?", "two", "query", "attr"),
        "202": _question("n1", "Is the cup red?", "yes", "verify", "attr"),
        "203": _question("n2", "What is on the table?", "cup", "query", "obj"),
    }
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    return tmp_path


def test_exact_match_after_normalisation_by_type(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fixed_answers(monkeypatch, {"201": "2.", "202": "No", "203": "The cup"})
    result = runner.evaluate(None, None, GQATask(bench / "questions.json", bench / "images"), tmp_path / "out")
    structural, semantic = result.scores["by_structural"], result.scores["by_semantic"]
    assert structural["overall"] == {"n": 3, "accuracy": 2 / 3}
    assert structural["query"]["accuracy"] == 1.0 and structural["verify"]["accuracy"] == 0.0
    assert semantic["attr"] == {"n": 2, "accuracy": 0.5} and semantic["obj"]["accuracy"] == 1.0


def test_predictions_file_and_prompts(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fixed_answers(monkeypatch, {"201": "Two.", "202": "yes", "203": "A Cup.."})
    task = GQATask(bench / "questions.json", bench / "images")
    prompts = task.prompts()
    assert [p.image for p in prompts] == [bench / "images" / f"{n}.jpg" for n in ("n1", "n1", "n2")]
    assert prompts[0].text == "How many cups are there?\nAnswer the question using a single word or phrase."
    runner.evaluate(None, None, task, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "gqa_predictions.json").read_text()) == [
        {"questionId": "201", "prediction": "two"},
        {"questionId": "202", "prediction": "yes"},
        {"questionId": "203", "prediction": "a cup"},
    ]


def test_test_split_without_answers_is_predictions_only(
    bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = {
        "301": _question("n1", "Q?", None, "query", "obj"),
        "302": _question("n2", "Q?", None, "verify", "obj"),
    }
    (bench / "test.json").write_text(json.dumps(questions))
    _fixed_answers(monkeypatch, {"301": "a", "302": "b"})
    result = runner.evaluate(None, None, GQATask(bench / "test.json", bench / "images"), tmp_path / "out")
    assert result.scores is None and (tmp_path / "out" / "gqa_predictions.json").is_file()
    questions["302"]["answer"] = "yes"
    (bench / "test.json").write_text(json.dumps(questions))
    with pytest.raises(DataError, match="'301' has no answer but others do"):
        GQATask(bench / "test.json", bench / "images")


def test_malformed_entry_names_file_and_question(bench: Path) -> None:
    questions = json.loads((bench / "questions.json").read_text())
    del questions["202"]["imageId"]
    (bench / "questions.json").write_text(json.dumps(questions))
    with pytest.raises(DataError, match="question '202' needs") as err:
        GQATask(bench / "questions.json", bench / "images")
    assert err.value.path == bench / "questions.json"
    (bench / "list.json").write_text("[]")
    with pytest.raises(DataError, match="expected a JSON object"):
        GQATask(bench / "list.json", bench / "images")
    with pytest.raises(DataError, match=r"--image-folder .* is not a folder"):
        GQATask(bench / "list.json", bench / "nowhere")
