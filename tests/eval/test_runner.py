"""The evaluation runner: batched answers, resumable predictions, run claims, scores from the task's references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vlbridge
from vlbridge.data.llava_json import EvalItem, load_eval
from vlbridge.data.synthetic import SynthOptions, synthesize
from vlbridge.data.synthetic.tasks import question_form
from vlbridge.errors import ConfigError, ImageError
from vlbridge.eval import runner
from vlbridge.eval.tasks import Prompt, SyntheticTask
from vlbridge.eval.tasks.synthetic import exact_match_scorer


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, SynthOptions(n=60, seed=3, image_size=48))
    return root


def _task(synth_dir: Path, n: int) -> SyntheticTask:
    return SyntheticTask.from_folder(synth_dir, "test", limit=n)


def _fixed_answers(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str], calls: list[list[str]] | None = None):
    def answer(model, processor, prompts, max_new_tokens):
        if calls is not None:
            calls.append([p.question_id for p in prompts])
        return [answers[p.question_id] for p in prompts]

    monkeypatch.setattr(runner, "answer_batch", answer)


def test_scores_match_predictions_and_resume_skips_answered(
    clip_llava_dir: Path, synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, processor = vlbridge.load(clip_llava_dir)
    calls: list[int] = []
    real = runner.answer_batch

    def counting(model, processor, prompts, max_new_tokens):
        calls.append(len(prompts))
        return real(model, processor, prompts, max_new_tokens)

    monkeypatch.setattr(runner, "answer_batch", counting)
    first = runner.evaluate(model, processor, _task(synth_dir, 3), tmp_path, batch_size=2, max_new_tokens=3)
    assert calls == [2, 1]
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    items = load_eval(synth_dir / "test.jsonl").items[:5]
    assert [r["question_id"] for r in rows] == [i.question_id for i in items[:3]]
    assert [r["prompt"] for r in rows] == [i.question for i in items[:3]]
    assert first.scores["by_type"]["overall"]["n"] == 3
    calls.clear()
    again = runner.evaluate(model, processor, _task(synth_dir, 5), tmp_path, batch_size=2, max_new_tokens=3)
    assert calls == [2], "only the two unanswered questions are asked after a resume"
    assert again.scores["by_type"]["overall"]["n"] == 5
    assert json.loads((tmp_path / "scores.json").read_text()) == json.loads(json.dumps(again.scores))


def test_batched_answers_equal_one_by_one(clip_llava_dir: Path, synth_dir: Path) -> None:
    model, processor = vlbridge.load(clip_llava_dir)
    prompts = _task(synth_dir, 4).prompts()
    batched = runner.answer_batch(model, processor, prompts, 4)
    single = [runner.answer_batch(model, processor, [prompt], 4)[0] for prompt in prompts]
    assert batched == single


def test_scorer_uses_vqa_normalisation() -> None:
    item = EvalItem("q", None, "how many?", ("2",), "count")
    assert exact_match_scorer("Two.", item) == 1.0
    assert exact_match_scorer("three", item) == 0.0


def test_scores_per_type_from_known_answers(synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(synth_dir, 4)
    items = task.items
    right = {items[0].question_id, items[2].question_id}
    _fixed_answers(
        monkeypatch, {i.question_id: (f" {i.answer.upper()}." if i.question_id in right else "nope") for i in items}
    )
    scores = runner.evaluate(None, None, task, tmp_path, batch_size=3).scores["by_type"]
    assert scores["overall"]["n"] == 4 and scores["overall"]["accuracy"] == 0.5
    per_type: dict[str, list[float]] = {}
    for item in items:
        per_type.setdefault(item.type, []).append(float(item.question_id in right))
    for name, values in per_type.items():
        assert scores[name]["accuracy"] == sum(values) / len(values)
        assert "majority_baseline" in scores[name], "stats.json baselines sit beside each type"


def test_scores_break_down_by_question_form(synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(synth_dir, 6)
    items = task.items
    _fixed_answers(monkeypatch, {i.question_id: i.answer if i is items[0] else "nope" for i in items})
    by_form = runner.evaluate(None, None, task, tmp_path, batch_size=3).scores["by_form"]
    first = f"{items[0].type}: {question_form(items[0].question)}"
    assert sum(row["n"] for row in by_form.values()) == len(items) and "overall" not in by_form
    same = [i for i in items if f"{i.type}: {question_form(i.question)}" == first]
    assert by_form[first]["accuracy"] == 1 / len(same)
    assert all(row["accuracy"] == 0 for form, row in by_form.items() if form != first)


def test_own_question_file_is_scored_without_baselines(synth_dir: Path) -> None:
    own = synth_dir / "own.jsonl"
    own.write_text("".join((synth_dir / "test.jsonl").read_text().splitlines(keepends=True)[:3]))
    task = SyntheticTask.from_folder(synth_dir, "own")
    assert len(task.items) == 3
    assert task.baselines == {}, "stats.json has no 'own' split, so there is nothing to stand beside"
    assert SyntheticTask.from_folder(synth_dir, "test").baselines["overall"]["majority_baseline"] > 0


def test_interrupted_run_resumes_without_recomputing(
    synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = _task(synth_dir, 5)
    ids = [p.question_id for p in task.prompts()]
    calls: list[list[str]] = []
    _fixed_answers(monkeypatch, {i: "first" for i in ids}, calls)
    real = runner.answer_batch

    def dies_on_second_batch(model, processor, prompts, max_new_tokens):
        if calls:
            raise KeyboardInterrupt
        return real(model, processor, prompts, max_new_tokens)

    monkeypatch.setattr(runner, "answer_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate(None, None, task, tmp_path, batch_size=2)
    assert not (tmp_path / "scores.json").exists()
    calls.clear()
    _fixed_answers(monkeypatch, {i: "second" for i in ids}, calls)
    result = runner.evaluate(None, None, task, tmp_path, batch_size=2)
    assert calls == [ids[2:4], ids[4:]]
    assert [result.rows[i]["prediction"] for i in ids] == ["first"] * 2 + ["second"] * 3


def test_resume_refuses_another_runs_folder(synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(synth_dir, 2)
    _fixed_answers(monkeypatch, {p.question_id: "x" for p in task.prompts()})
    runner.evaluate(None, None, task, tmp_path, run={"model": "a"})
    with pytest.raises(ConfigError, match="holds predictions of another run"):
        runner.evaluate(None, None, task, tmp_path, run={"model": "b"})
    with pytest.raises(ConfigError, match="holds predictions of another run"):
        runner.evaluate(None, None, task, tmp_path, run={"model": "a"}, max_new_tokens=99)


def test_torn_last_line_is_dropped_on_resume(synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(synth_dir, 3)
    ids = [p.question_id for p in task.prompts()]
    _fixed_answers(monkeypatch, {i: "x" for i in ids})
    runner.evaluate(None, None, _task(synth_dir, 2), tmp_path)
    pred = tmp_path / "predictions.jsonl"
    pred.write_text(pred.read_text() + '{"question_id": "' + ids[2] + '", "predic')
    result = runner.evaluate(None, None, task, tmp_path)
    assert result.scores["by_type"]["overall"]["n"] == 3
    assert [json.loads(x)["question_id"] for x in pred.read_text().splitlines()] == ids


def test_missing_images_fail_before_any_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    _fixed_answers(monkeypatch, {"a": "x", "b": "y"}, calls)
    prompts = [Prompt("a", "q?", None), Prompt("b", "q?", tmp_path / "nowhere.png")]
    with pytest.raises(ImageError, match=r"1 image file\(s\) do not exist, e\.g\. .*nowhere\.png"):
        runner.predict(None, None, prompts, tmp_path / "out")
    assert calls == []


def test_record_fields_never_hide_the_prediction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fixed_answers(monkeypatch, {"a": "real"})
    rows = runner.predict(None, None, [Prompt("a", "q?", None, {"prediction": "fake", "extra": 1})], tmp_path)
    assert rows["a"] == {"question_id": "a", "prompt": "q?", "prediction": "real", "extra": 1}
