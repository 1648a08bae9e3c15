"""The evaluation runner: batched answers, resumable predictions, scores per type against the answers given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vlbridge
from vlbridge.cli.main import main
from vlbridge.data.llava_json import EvalItem, load_eval
from vlbridge.data.synthetic import synthesize
from vlbridge.errors import ConfigError
from vlbridge.eval import runner


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, n=60, seed=3, image_size=48)
    return root


def test_scores_match_predictions_and_resume_skips_answered(
    clip_llava_dir: Path, synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, processor = vlbridge.load(clip_llava_dir)
    items = load_eval(synth_dir / "test.jsonl").items[:5]
    calls: list[int] = []
    real = runner.answer_batch

    def counting(model, processor, batch, root, max_new_tokens):
        calls.append(len(batch))
        return real(model, processor, batch, root, max_new_tokens)

    monkeypatch.setattr(runner, "answer_batch", counting)
    first = runner.evaluate(model, processor, items[:3], synth_dir, tmp_path, batch_size=2, max_new_tokens=3)
    assert calls == [2, 1]
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [i.question_id for i in items[:3]]
    assert first["by_type"]["overall"]["n"] == 3
    calls.clear()
    again = runner.evaluate(model, processor, items, synth_dir, tmp_path, batch_size=2, max_new_tokens=3)
    assert calls == [2], "only the two unanswered questions are asked after a resume"
    assert again["by_type"]["overall"]["n"] == 5
    assert json.loads((tmp_path / "scores.json").read_text()) == json.loads(json.dumps(again))


def test_batched_answers_equal_one_by_one(clip_llava_dir: Path, synth_dir: Path) -> None:
    model, processor = vlbridge.load(clip_llava_dir)
    items = load_eval(synth_dir / "test.jsonl").items[:4]
    batched = runner.answer_batch(model, processor, items, synth_dir, 4)
    single = [runner.answer_batch(model, processor, [item], synth_dir, 4)[0] for item in items]
    assert batched == single


def test_scorer_uses_vqa_normalisation() -> None:
    item = EvalItem("q", None, "how many?", ("2",), "count")
    assert runner.exact_match_scorer("Two.", item) == 1.0
    assert runner.exact_match_scorer("three", item) == 0.0


def test_eval_cli_prints_types_and_baselines(clip_llava_dir: Path, synth_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(
        [
            "eval",
            "--model",
            str(clip_llava_dir),
            "--data",
            str(synth_dir),
            "--out",
            str(tmp_path),
            "--limit",
            "6",
            "--max-new-tokens",
            "2",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "majority baseline" in out and out.splitlines()[1].startswith("overall")
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["by_type"]["overall"]["n"] == 6
    types = json.loads((synth_dir / "stats.json").read_text())["splits"]["test"]["types"]
    weighted = sum(t["count"] * t["majority_baseline"] for t in types.values()) / sum(
        t["count"] for t in types.values()
    )
    assert scores["by_type"]["overall"]["majority_baseline"] == pytest.approx(weighted)


def test_eval_cli_missing_questions_file(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--model", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "no test.jsonl" in capsys.readouterr().err


def _fixed_answers(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> None:
    def answer(model, processor, batch, root, max_new_tokens):
        return [answers[item.question_id] for item in batch]

    monkeypatch.setattr(runner, "answer_batch", answer)


def test_scores_per_type_from_known_answers(synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = load_eval(synth_dir / "test.jsonl").items[:4]
    right = {items[0].question_id, items[2].question_id}
    _fixed_answers(
        monkeypatch, {i.question_id: (f" {i.answer.upper()}." if i.question_id in right else "nope") for i in items}
    )
    scores = runner.evaluate(None, None, items, synth_dir, tmp_path, batch_size=3)["by_type"]
    assert scores["overall"] == {"n": 4, "accuracy": 0.5}
    per_type: dict[str, list[float]] = {}
    for item in items:
        per_type.setdefault(item.type, []).append(float(item.question_id in right))
    for name, values in per_type.items():
        assert scores[name]["accuracy"] == sum(values) / len(values)


def test_resume_refuses_another_runs_folder(synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = load_eval(synth_dir / "test.jsonl").items[:2]
    _fixed_answers(monkeypatch, {i.question_id: "x" for i in items})
    runner.evaluate(None, None, items, synth_dir, tmp_path, run={"model": "a"})
    with pytest.raises(ConfigError, match="holds predictions of another run"):
        runner.evaluate(None, None, items, synth_dir, tmp_path, run={"model": "b"})


def test_torn_last_line_is_dropped_on_resume(synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = load_eval(synth_dir / "test.jsonl").items[:3]
    _fixed_answers(monkeypatch, {i.question_id: "x" for i in items})
    runner.evaluate(None, None, items[:2], synth_dir, tmp_path)
    pred = tmp_path / "predictions.jsonl"
    pred.write_text(pred.read_text() + '{"question_id": "' + items[2].question_id + '", "predic')
    scores = runner.evaluate(None, None, items, synth_dir, tmp_path)
    assert scores["by_type"]["overall"]["n"] == 3
    assert [json.loads(x)["question_id"] for x in pred.read_text().splitlines()] == [i.question_id for i in items]
