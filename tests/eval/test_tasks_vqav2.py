"""VQAv2 from the official files: COCO image names, official accuracy per type, the results file, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlbridge.errors import ConfigError, DataError
from vlbridge.eval import runner
from vlbridge.eval.tasks import VQAv2Task


def _fixed_answers(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> None:
    def answer(model, processor, prompts, max_new_tokens):
        return [answers[p.question_id] for p in prompts]

    monkeypatch.setattr(runner, "answer_batch", answer)


def _annotation(qid: int, answers: list[str], answer_type: str, question_type: str) -> dict:
    return {
        "question_id": qid,
        "image_id": 42,
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
        "answer_type": answer_type,
        "question_type": question_type,
        "multiple_choice_answer": answers[0],
    }


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    images = tmp_path / "val2014"
    images.mkdir()
    Image.new("RGB", (8, 8), (0, 90, 0)).save(images / "COCO_val2014_000000000042.jpg")
    Image.new("RGB", (8, 8), (0, 0, 90)).save(images / "COCO_val2014_000000123456.jpg")
    questions = [
        {"question_id": 420, "image_id": 42, "question": "What animal is it?"},
        {"question_id": 421, "image_id": 42, "question": "Is it green?"},
        {"question_id": 1234560, "image_id": 123456, "question": "How many dogs?"},
    ]
    info = {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014"}
    (tmp_path / "questions.json").write_text(json.dumps({**info, "questions": questions}))
    annotations = [
        _annotation(420, ["cat"] * 3 + ["dog"] * 7, "other", "what animal is"),
        _annotation(421, ["yes"] * 10, "yes/no", "is it"),
        _annotation(1234560, ["2"] * 10, "number", "how many"),
    ]
    (tmp_path / "annotations.json").write_text(json.dumps({**info, "annotations": annotations}))
    return tmp_path


def test_official_accuracy_per_answer_and_question_type(
    bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 of 10 humans said "cat": each leave-one-out subset gives min(matches / 3, 1), averaging to 0.9
    _fixed_answers(monkeypatch, {"420": "Cat.", "421": "yes", "1234560": "three"})
    task = VQAv2Task(bench / "questions.json", bench / "val2014", annotations=bench / "annotations.json")
    result = runner.evaluate(None, None, task, tmp_path / "out")
    by_answer = result.scores["by_answer_type"]
    assert by_answer["other"] == {"n": 1, "accuracy": pytest.approx(0.9)}
    assert by_answer["yes/no"]["accuracy"] == 1.0 and by_answer["number"]["accuracy"] == 0.0
    assert by_answer["overall"]["accuracy"] == pytest.approx(1.9 / 3)
    assert set(result.scores["by_question_type"]) == {"overall", "what animal is", "is it", "how many"}
    assert result.scores["by_question_type"]["what animal is"]["accuracy"] == pytest.approx(0.9)
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert saved["by_answer_type"]["overall"]["accuracy"] == pytest.approx(1.9 / 3)


def test_results_file_is_the_official_format(bench: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fixed_answers(monkeypatch, {"420": "cat", "421": "yes", "1234560": "2"})
    result = runner.evaluate(None, None, VQAv2Task(bench / "questions.json", bench / "val2014"), tmp_path / "out")
    assert result.scores is None, "without annotations only the results file is written"
    results = json.loads((tmp_path / "out" / "vqav2_results.json").read_text())
    assert results == [
        {"question_id": 420, "answer": "cat"},
        {"question_id": 421, "answer": "yes"},
        {"question_id": 1234560, "answer": "2"},
    ]


@pytest.mark.parametrize(
    ("options", "submitted", "by_answer_type"),
    [
        # default, as LLaVA submits: EvalAI processing ("Cat" -> "cat", "Yes." -> "yes", "Two" -> "2"), 2021 scorer.
        # "cat": answers differ, 3 match -> 0.9; "yes" and "2" equal the ten identical answers exactly -> 1.0 each.
        ({}, ["cat", "yes", "2"], {"other": 0.9, "yes/no": 1.0, "number": 1.0}),
        # raw text, 2021 scorer: "Cat" is normalised (answers differ) -> 0.9; "Yes." and "Two" meet ten identical
        # answers, so nothing is normalised and neither matches -> 0
        ({"evalai_preprocess": False}, ["Cat", "Yes.", "Two"], {"other": 0.9, "yes/no": 0.0, "number": 0.0}),
        # raw text, 2017 scorer: the prediction is always normalised ("Yes." -> "yes", "Two" -> "2") -> 1.0 each
        (
            {"evalai_preprocess": False, "scorer_version": "2017"},
            ["Cat", "Yes.", "Two"],
            {"other": 0.9, "yes/no": 1.0, "number": 1.0},
        ),
    ],
)
def test_evalai_processing_and_scorer_version(
    bench: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict,
    submitted: list[str],
    by_answer_type: dict[str, float],
) -> None:
    _fixed_answers(monkeypatch, {"420": "Cat", "421": "Yes.", "1234560": "Two"})
    task = VQAv2Task(bench / "questions.json", bench / "val2014", annotations=bench / "annotations.json", **options)
    result = runner.evaluate(None, None, task, tmp_path / "out")
    results = json.loads((tmp_path / "out" / "vqav2_results.json").read_text())
    assert [r["answer"] for r in results] == submitted, "the results file holds the answers as scored"
    scores = result.scores
    assert {key: scores["by_answer_type"][key]["accuracy"] for key in by_answer_type} == pytest.approx(by_answer_type)
    assert scores["evalai_preprocess"] == options.get("evalai_preprocess", True)
    assert scores["scorer_version"] == options.get("scorer_version", "2021")
    assert [row["prediction"] for row in result.rows.values()] == ["Cat", "Yes.", "Two"], "raw predictions are kept"


def test_unknown_scorer_version_fails_before_answering(bench: Path) -> None:
    with pytest.raises(ConfigError, match="unknown VQA scorer version '2019'"):
        VQAv2Task(bench / "questions.json", bench / "val2014", scorer_version="2019")  # type: ignore[arg-type]


def test_coco_image_names_prompt_suffix_and_pattern_override(bench: Path) -> None:
    prompts = VQAv2Task(bench / "questions.json", bench / "val2014").prompts()
    assert [p.image.name for p in prompts] == ["COCO_val2014_000000000042.jpg"] * 2 + ["COCO_val2014_000000123456.jpg"]
    assert prompts[0].text == "What animal is it?\nAnswer the question using a single word or phrase."
    custom = VQAv2Task(bench / "questions.json", bench, image_pattern="img-{image_id}.png", suffix="", limit=1)
    assert [(p.image, p.text) for p in custom.prompts()] == [(bench / "img-42.png", "What animal is it?")]


def test_questions_without_subtype_need_a_pattern(bench: Path) -> None:
    data = json.loads((bench / "questions.json").read_text())
    del data["data_subtype"]
    (bench / "questions.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="pass --image-pattern"):
        VQAv2Task(bench / "questions.json", bench / "val2014")
    task = VQAv2Task(bench / "questions.json", bench / "val2014", image_pattern="COCO_val2014_{image_id:012d}.jpg")
    assert task.prompts()[2].image.name == "COCO_val2014_000000123456.jpg"
    with pytest.raises(DataError, match="cannot be filled"):
        VQAv2Task(bench / "questions.json", bench / "val2014", image_pattern="{imageid}.jpg")


def test_malformed_entries_name_the_file_and_entry(bench: Path) -> None:
    annotations = json.loads((bench / "annotations.json").read_text())
    del annotations["annotations"][1]["answers"]
    (bench / "annotations.json").write_text(json.dumps(annotations))
    with pytest.raises(DataError, match=r"annotations\[1\] needs") as err:
        VQAv2Task(bench / "questions.json", bench / "val2014", annotations=bench / "annotations.json")
    assert err.value.path == bench / "annotations.json"
    (bench / "bad.json").write_text('{"questions": [\n {"question_id": 1, "image_id": 1, "question": "q"},\n oops]}')
    with pytest.raises(DataError, match="not valid JSON") as err:
        VQAv2Task(bench / "bad.json", bench)
    assert err.value.line == 3
    (bench / "bad.json").write_text(json.dumps({"questions": [{"question_id": 1, "image_id": "1", "question": "q"}]}))
    with pytest.raises(DataError, match=r"questions\[0\] needs"):
        VQAv2Task(bench / "bad.json", bench)
    (bench / "bad.json").write_text(json.dumps([{"question_id": 1}]))
    with pytest.raises(DataError, match='"questions" list'):
        VQAv2Task(bench / "bad.json", bench)


def test_annotations_must_cover_the_questions(bench: Path) -> None:
    annotations = json.loads((bench / "annotations.json").read_text())
    annotations["annotations"] = annotations["annotations"][:1]
    (bench / "annotations.json").write_text(json.dumps(annotations))
    with pytest.raises(DataError, match=r"2 question\(s\) have no annotation, e.g. question_id 421"):
        VQAv2Task(bench / "questions.json", bench / "val2014", annotations=bench / "annotations.json")
    limited = VQAv2Task(bench / "questions.json", bench / "val2014", annotations=bench / "annotations.json", limit=1)
    assert len(limited.prompts()) == 1


def test_command_line_options_choose_the_scorer_and_raw_answers(bench: Path) -> None:
    common = {"questions": str(bench / "questions.json"), "image_folder": str(bench / "val2014"), "annotations": None}
    unset = {"image_pattern": None, "prompt_suffix": None, "scorer_version": None, "raw_answers": False}
    unset["allow_absolute_images"] = False
    default = VQAv2Task.from_options({**common, **unset}, None, None)
    assert (default.scorer_version, default.evalai_preprocess) == ("2021", True)
    chosen = VQAv2Task.from_options({**common, **unset, "scorer_version": "2017", "raw_answers": True}, None, None)
    assert (chosen.scorer_version, chosen.evalai_preprocess) == ("2017", False)
