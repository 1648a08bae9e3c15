"""The task registry: every task is found by its name and built from its declared options alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vlbridge.errors import ConfigError, VlbridgeError
from vlbridge.eval.tasks import TASKS, LlavaTask


def test_unknown_task_lists_the_registered_ones() -> None:
    assert sorted(TASKS.names()) == ["gqa", "llava", "mmbench", "synthetic", "synthetic_video", "vqav2"]
    with pytest.raises(ConfigError, match="unknown eval task 'okvqa'; known eval tasks: gqa, llava, mmbench"):
        TASKS.get("okvqa")


@pytest.mark.parametrize("name", TASKS.names())
def test_a_task_built_from_no_options_names_the_flag_it_needs(name: str) -> None:
    task = TASKS.get(name)
    assert task.name == name
    assert len({option.name for option in task.options}) == len(task.options)
    values = {option.name: False if option.switch else None for option in task.options}
    with pytest.raises(VlbridgeError, match="needs --"):
        task.from_options(values, limit=None, model=None)


def test_options_reach_the_constructor_and_unset_ones_keep_its_defaults(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "text": "Why?"}) + "\n" for i in range(3)))
    values = {"questions": str(questions), "image_folder": None, "answers": None, "prompt_suffix": None}
    values["allow_absolute_images"] = False
    task = TASKS.get("llava").from_options({**values, "metric": "vqa"}, limit=2, model="runs/exp1/checkpoint-500")
    assert isinstance(task, LlavaTask) and len(task.prompts()) == 2
    assert (task.metric, task.suffix, task.model_name) == ("vqa", "", "exp1_checkpoint-500")
    assert TASKS.get("llava").from_options({**values, "metric": None}, limit=None, model=None).metric == "exact"
    assert LlavaTask.default_out(values, "runs/exp1") == tmp_path / "answers" / "exp1"


def _two_questions(name: str, folder: Path) -> dict[str, Any]:
    """The option values (those given) of a task whose question file, written into `folder`, holds two questions."""
    if name == "synthetic":
        rows = [{"question_id": i, "question": "a?", "answer": "x"} for i in (1, 2)]
        (folder / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return {"data": str(folder)}
    if name == "synthetic_video":
        (folder / "v.mp4").write_bytes(b"")  # only checked to exist: nothing is decoded here
        rows = [{"question_id": i, "video": "v.mp4", "question": "a?", "answer": "x"} for i in (1, 2)]
        (folder / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return {"data": str(folder)}
    path = folder / "questions"
    if name == "llava":
        path.write_text("".join(json.dumps({"question_id": i, "text": "a?"}) + "\n" for i in (1, 2)))
        return {"questions": str(path)}
    if name == "mmbench":
        path.write_text("index\tquestion\tA\tB\timage\n1\ta?\tx\ty\tAAAA\n2\tb?\tx\ty\tAAAA\n")
        return {"questions": str(path), "no_circular": True}
    if name == "gqa":
        path.write_text(json.dumps({str(i): {"imageId": "n", "question": "a?"} for i in (1, 2)}))
    else:
        path.write_text(
            json.dumps({"questions": [{"question_id": i, "image_id": 1, "question": "a?"} for i in (1, 2)]})
        )
    return {"questions": str(path), "image_folder": str(folder), "image_pattern": "n.jpg"}


@pytest.mark.parametrize("name", sorted(TASKS.names()))
def test_limit_keeps_the_first_questions_and_below_one_is_refused(name: str, tmp_path: Path) -> None:
    task, given = TASKS.get(name), _two_questions(name, tmp_path)
    values = {option.name: given.get(option.name, False if option.switch else None) for option in task.options}
    assert len(task.from_options(values, limit=None, model=None).prompts()) == 2
    assert len(task.from_options(values, limit=1, model=None).prompts()) == 1
    for limit in (-1, 0):  # slicing would ask all but the last question, or none
        with pytest.raises(ConfigError, match=f"--limit must be a whole number >= 1 .*, got {limit}"):
            task.from_options(values, limit=limit, model=None)
