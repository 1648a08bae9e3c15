"""`vlbridge eval`: the synthetic default, benchmark tasks end to end on a tiny model, flag checks, text-retention."""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from vlbridge.cli import evaluate
from vlbridge.cli.main import main
from vlbridge.data.synthetic import SynthOptions, synthesize
from vlbridge.eval.tasks import TASKS, Prompt, Task, TaskOption
from vlbridge.eval.tasks.base import QUESTIONS_OPTION
from vlbridge.registry import Registry


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, SynthOptions(n=60, seed=3, image_size=48))
    return root


def test_synthetic_is_the_default_task(clip_llava_dir: Path, synth_dir: Path, tmp_path: Path, capsys) -> None:
    args = ["eval", "--model", str(clip_llava_dir), "--data", str(synth_dir), "--out", str(tmp_path)]
    assert main([*args, "--limit", "6", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "majority baseline" in out and "unbound baseline" in out and out.splitlines()[1].startswith("overall")
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["by_type"]["overall"]["n"] == 6
    types_ = json.loads((synth_dir / "stats.json").read_text())["splits"]["test"]["types"]
    weighted = sum(t["count"] * t["majority_baseline"] for t in types_.values()) / sum(
        t["count"] for t in types_.values()
    )
    assert scores["by_type"]["overall"]["majority_baseline"] == pytest.approx(weighted)
    assert json.loads((tmp_path / "run.json").read_text())["task"] == "synthetic"


def test_missing_synthetic_questions_file(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--model", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "no test.jsonl" in capsys.readouterr().err


def test_vqav2_end_to_end_on_a_tiny_model(clip_llava_dir: Path, tmp_path: Path, capsys) -> None:
    Image.new("RGB", (40, 30), (0, 120, 0)).save(tmp_path / "COCO_val2014_000000000007.jpg")
    questions = [{"question_id": 70 + i, "image_id": 7, "question": q} for i, q in enumerate(["What?", "Why?"])]
    annotations = [
        {
            "question_id": q["question_id"],
            "answers": [{"answer": "x"}] * 10,
            "answer_type": "other",
            "question_type": "what",
        }
        for q in questions
    ]
    (tmp_path / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": annotations}))
    args = ["eval", "--task", "vqav2", "--model", str(clip_llava_dir), "--questions", str(tmp_path / "q.json")]
    args += ["--image-folder", str(tmp_path), "--annotations", str(tmp_path / "a.json"), "--max-new-tokens", "2"]
    assert main(args) == 0
    out_dir = tmp_path / "answers" / clip_llava_dir.name  # default: beside the questions, per model
    results = json.loads((out_dir / "vqav2_results.json").read_text())
    assert [r["question_id"] for r in results] == [70, 71]
    scores = json.loads((out_dir / "scores.json").read_text())
    assert scores["by_answer_type"]["overall"]["n"] == 2
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["answer_type", "n", "accuracy"]
    assert any(line.split()[:1] == ["question_type"] for line in printed)


def test_mmbench_end_to_end_with_inline_images(clip_llava_dir: Path, tmp_path: Path, capsys) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 36), (10, 10, 250)).save(buffer, format="JPEG")
    image = base64.b64encode(buffer.getvalue()).decode()
    with (tmp_path / "mm.tsv").open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "question", "hint", "A", "B", "C", "answer", "category", "image"])
        writer.writerow(["0", "What colour?", "", "red", "blue", "green", "B", "colour", image])
    out = tmp_path / "out"
    args = ["eval", "--task", "mmbench", "--model", str(clip_llava_dir), "--questions", str(tmp_path / "mm.tsv")]
    assert main([*args, "--out", str(out), "--max-new-tokens", "2"]) == 0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["0/0", "0/1", "0/2"]
    assert "vanilla_accuracy:" in capsys.readouterr().out
    assert (out / "mmbench_results.tsv").is_file()


def test_flags_of_another_task_are_refused(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--task", "gqa", "--questions", "q.json", "--annotations", "a.json"]) == 2
    assert "--annotations is not used by --task gqa; it is for --task vqav2" in capsys.readouterr().err
    assert main(["eval", "--questions", str(tmp_path / "q.jsonl")]) == 2
    assert "--questions is not used by --task synthetic" in capsys.readouterr().err
    assert main(["eval", "--task", "synthetic"]) == 2
    assert "needs --data" in capsys.readouterr().err


def test_limit_below_one_is_refused_before_anything_runs(synth_dir: Path, tmp_path: Path, capsys) -> None:
    args = ["eval", "--model", str(tmp_path / "not-loaded"), "--data", str(synth_dir), "--out", str(tmp_path / "out")]
    for limit in ("-1", "0"):  # -1 used to ask every question but the last, as Python slices
        assert main([*args, "--limit", limit]) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"vlbridge: error: --limit must be a whole number >= 1 (how many questions to ask), got {limit}"
        )
        assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_default_output_folder_is_named_from_the_resolved_model_path(
    clip_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "ckpt"
    shutil.copytree(clip_llava_dir, model)
    (model / "sub").mkdir()
    for bench, model_arg in ((tmp_path / "bench", f"{model}/sub/.."), (tmp_path / "bench2", ".")):
        bench.mkdir()
        (bench / "q.jsonl").write_text('{"question_id": 1, "text": "Is the sky blue?"}\n')
        monkeypatch.chdir(model)
        args = ["eval", "--task", "llava", "--model", model_arg, "--questions", str(bench / "q.jsonl")]
        assert main([*args, "--max-new-tokens", "2"]) == 0
        assert sorted(p.name for p in bench.iterdir()) == ["answers", "q.jsonl"]  # nothing beside the questions
        assert [p.name for p in (bench / "answers").iterdir()] == ["ckpt"]
        assert json.loads((bench / "answers" / "ckpt" / "answers.jsonl").read_text())["model_id"] == "ckpt"


def test_split_names_a_question_file_inside_the_data_folder(synth_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(synth_dir / "test.jsonl", tmp_path / "outside.jsonl")
    args = ["eval", "--model", str(tmp_path / "not-loaded"), "--data", str(tmp_path / "data"), "--split", "../outside"]
    assert main(args) == 2
    assert "--split names a question file in --data (test, val, or NAME for NAME.jsonl), got '../outside'" in (
        capsys.readouterr().err
    )


def test_images_outside_the_image_folder_need_the_opt_in_flag(clip_llava_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "images").mkdir()
    secret = tmp_path / "outside" / "secret.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    questions = tmp_path / "q.jsonl"
    args = ["eval", "--task", "llava", "--model", str(clip_llava_dir), "--questions", str(questions)]
    args += ["--image-folder", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--max-new-tokens", "2"]
    for image in ("../outside/secret.png", str(secret)):
        questions.write_text(json.dumps({"question_id": 5, "text": "What is it?", "image": image}) + "\n")
        assert main(args) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith(f"vlbridge: error: {questions}:1: question 5: image path {image!r} ")
            and err.count("\n") == 1
        )
        assert not (tmp_path / "out").exists()
    assert "--allow-absolute-images" in err
    assert main([*args, "--allow-absolute-images"]) == 0
    assert json.loads((tmp_path / "out" / "answers.jsonl").read_text())["question_id"] == 5


class EchoTask(Task):
    """A task the CLI has never heard of: one question per line of --questions, shouted with --upper."""

    name = "echo"
    options = (QUESTIONS_OPTION, TaskOption("upper", "ask in capitals", switch=True))

    def __init__(self, questions: Path, upper: bool) -> None:
        self.source, self.upper = questions, upper

    @classmethod
    def from_options(cls, values, limit, model) -> EchoTask:
        return cls(Path(values["questions"]), values["upper"])

    def prompts(self) -> list[Prompt]:
        lines = self.source.read_text().splitlines()
        return [Prompt(str(i), line.upper() if self.upper else line) for i, line in enumerate(lines)]

    def identity(self) -> dict:
        return {"questions": str(self.source)}


def test_a_registered_task_is_offered_and_built_without_cli_changes(
    clip_llava_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    registry: Registry = Registry("eval task")
    for name in TASKS.names():
        registry.register(name)(TASKS.get(name))
    registry.register("echo")(EchoTask)
    monkeypatch.setattr(evaluate, "TASKS", registry)
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    usage = capsys.readouterr().out
    assert "{echo,gqa,llava,mmbench,synthetic,synthetic_video,vqav2}" in usage and "ask in capitals [echo]" in usage
    (tmp_path / "q.txt").write_text("what colour?\nhow many?\n")
    args = ["eval", "--task", "echo", "--model", str(clip_llava_dir), "--questions", str(tmp_path / "q.txt")]
    assert main([*args, "--upper", "--max-new-tokens", "1"]) == 0
    out = tmp_path / "answers" / clip_llava_dir.name  # Task's default: beside the question file, per model
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["0", "1"] and "WHAT COLOUR?" in rows[0]["prompt"]
    assert main(["eval", "--task", "gqa", "--upper"]) == 2
    assert "--upper is not used by --task gqa; it is for --task echo" in capsys.readouterr().err


def test_text_retention_is_dispatched_with_its_own_flags(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    seen: list[argparse.Namespace] = []
    stand_in = types.ModuleType("vlbridge.cli.retention")
    stand_in.__doc__ = "A stand-in."

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--base", required=True)
        parser.add_argument("--model", required=True)
        parser.add_argument("--batch-size", type=int, default=4)

    def run(args: argparse.Namespace) -> int:
        seen.append(args)
        return 1

    stand_in.add_arguments, stand_in.run = add_arguments, run
    monkeypatch.setitem(sys.modules, "vlbridge.cli.retention", stand_in)
    assert main(["eval", "text-retention", "--base", "lm", "--model", "vlm", "--batch-size", "2"]) == 1
    assert vars(seen[0]) == {"base": "lm", "model": "vlm", "batch_size": 2}
    with pytest.raises(SystemExit):
        main(["eval", "text-retention", "--model", "vlm"])
    assert "--base" in capsys.readouterr().err
    assert main(["eval", "--model", "vlm", "text-retention", "--base", "lm"]) == 2
    assert "--model was given before text-retention" in capsys.readouterr().err
    assert main(["eval", "retention"]) == 2
    assert "unknown eval command 'retention'" in capsys.readouterr().err
    assert len(seen) == 1


def test_text_retention_help_reaches_the_real_module(capsys) -> None:
    pytest.importorskip("vlbridge.cli.retention")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "text-retention", "--help"])
    assert exit_.value.code == 0
    assert "usage: vlbridge eval text-retention" in capsys.readouterr().out
