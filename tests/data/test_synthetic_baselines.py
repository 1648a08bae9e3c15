"""The unbound baseline: hand-worked scores on one scene, and the figures stats.json records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlbridge.data.synthetic import Scene, SynthOptions, synthesize
from vlbridge.data.synthetic.baselines import unbound_score
from vlbridge.data.synthetic.scenes import SceneObject
from vlbridge.data.synthetic.tasks import QA

# a small red circle, a small red square and a large blue star: red and small are the most common values
SCENE = Scene(
    seed=0,
    objects=(
        SceneObject("circle", "red", "small", 0, 0.16, 0.16),
        SceneObject("square", "red", "small", 1, 0.5, 0.16),
        SceneObject("star", "blue", "large", 2, 0.83, 0.16),
    ),
    text="CAT",
    text_cell=4,
    text_x=0.5,
    text_y=0.5,
)


@pytest.mark.parametrize(
    ("qa", "expected"),
    [
        (QA("colour", "What colour is the circle?", "red"), 1.0),  # red is the most common colour
        (QA("colour", "What colour is the star?", "blue"), 0.0),  # needs binding: the unbound guess is red
        (QA("shape", "What shape is the blue object?", "star"), 1 / 3),  # three shapes, one each
        (QA("position", "Where is the star?", "top right"), 1 / 3),  # three occupied regions
        (QA("count", "How many red objects are there?", "2"), 1.0),
        (QA("text", "What does the text say?", "CAT"), 1.0),
        (QA("relation", "Is the circle left of the star?", "yes"), 0.5),
        (QA("existence", "Is there a blue circle?", "no"), 0.0),  # blue and circle are both there, apart
        (QA("existence", "Is there a green circle?", "no"), 1.0),
        (QA("existence", "Is there a red square?", "yes"), 1.0),
        (QA("description", "Describe the object in the top left.", "small red circle"), 1 / 3),
        (QA("description", "Describe the object in the top right.", "large blue star"), 0.0),
        (
            QA(
                "multiple_choice",
                "What colour is the star?\nA. red\nB. blue\nC. green\nD. pink",
                "B",
                ("red", "blue", "green", "pink"),
            ),
            0.0,
        ),
        (
            QA(
                "multiple_choice",
                "What shape is the blue object?\nA. star\nB. cross\nC. square\nD. heart",
                "A",
                ("star", "cross", "square", "heart"),
            ),
            0.5,
        ),
        (
            QA(
                "multiple_choice",
                "What does the text say?\nA. CAT\nB. DOG\nC. SUN\nD. 7",
                "A",
                ("CAT", "DOG", "SUN", "7"),
            ),
            1.0,
        ),
    ],
)
def test_unbound_score_by_hand(qa: QA, expected: float) -> None:
    assert unbound_score(SCENE, qa) == pytest.approx(expected)


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown question type 'riddle'"):
        unbound_score(SCENE, QA("riddle", "?", "x"))


def test_stats_record_the_unbound_baseline(tmp_path: Path) -> None:
    synthesize(tmp_path, SynthOptions(n=300, seed=5, test_fraction=0.5, val_fraction=0.0))
    rows = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    scenes = {
        r["image"]: Scene.from_dict(r["scene"])
        for r in map(json.loads, (tmp_path / "scenes.jsonl").read_text().splitlines())
    }
    types = json.loads((tmp_path / "stats.json").read_text())["splits"]["test"]["types"]
    for kind in ("colour", "existence", "position"):
        mine = [r for r in rows if r["type"] == kind]
        expected = sum(unbound_score(scenes[r["image"]], QA(kind, r["question"], r["answer"])) for r in mine)
        assert types[kind]["unbound_baseline"] == pytest.approx(expected / len(mine))
    # the reason the baseline exists: small colour pools let an unbound model name colours far above chance
    assert types["colour"]["unbound_baseline"] > 2 * types["colour"]["majority_baseline"]
    assert types["count"]["unbound_baseline"] == types["text"]["unbound_baseline"] == 1.0
