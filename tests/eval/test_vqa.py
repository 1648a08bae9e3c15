"""Official VQAv2 scoring, checked on worked examples of each rule of the VQA API's vqaEval.py."""

from __future__ import annotations

import pytest

import vlbridge
from vlbridge.errors import DataError
from vlbridge.eval import normalize_answer, vqa_accuracy
from vlbridge.eval.vqa import CONTRACTIONS


def gts(match: str, n_match: int, other: str = "no", n: int = 10) -> list[str]:
    return [match] * n_match + [other] * (n - n_match)


def test_public_entry_point() -> None:
    assert vlbridge.eval.vqa_accuracy("Two", ["2"] * 10) == 1.0


@pytest.mark.parametrize(
    ("n_match", "expected"),
    [
        (0, 0.0),
        # 1 match: the 9 subsets keeping it have 1 match (1/3), the one dropping it has 0 -> 9/3/10 = 0.3
        (1, 0.3),
        # 2 matches: 8 subsets keep both (2/3), 2 subsets keep one (1/3) -> (16/3 + 2/3)/10 = 0.6
        (2, 0.6),
        # 3 matches: each subset has 2 or 3 matches: 7 subsets * 1.0 + 3 subsets * 2/3 = 9 -> 0.9
        (3, 0.9),
        # 4 matches: every subset keeps at least 3 -> 1.0
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_leave_one_out_average(n_match: int, expected: float) -> None:
    assert vqa_accuracy("yes", gts("yes", n_match)) == pytest.approx(expected)


def test_leave_one_out_is_by_position_not_by_value() -> None:
    # dropping "every answer equal to the left-out one" (a common reimplementation bug) would give 0.7 here
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("The Two dogs.", "2 dogs"),
        ("the dog", "dog"),
        ("an apple", "apple"),
        ("yes.", "yes"),
        ("Yes!", "yes"),
        ("\tred\nand  blue \n", "red and blue"),
        ("dont", "don't"),
        ("cant", "can't"),
        ("Im", "im"),  # the official "Im" key is capitalised, so it never matches lower-cased words
        ("1,000", "1000"),  # a comma between digits deletes every mark
        ("1, 2", "1 2"),  # a mark next to a space is deleted
        ("a,b", "b"),  # a mark touching no space becomes a space (then "a" goes as an article)
        ("black-and-white", "black and white"),
        ("t - shirt", "t shirt"),
        ("3.5", "3.5"),  # periods before a digit stay
        ("5.", "5"),
        (".5", ".5"),  # the official look-behind is really a look-ahead: only the next char matters
        ("it's", "it's"),  # the apostrophe is not punctuation here
        ("10:30", "10:30"),
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_at_most_32_periods_are_stripped() -> None:
    # the official code passes re.UNICODE (32) as re.sub's count
    assert normalize_answer("x." * 40) == "x" * 32 + "x." * 8


def test_contractions_table_is_the_official_one() -> None:
    assert len(CONTRACTIONS) == 120
    spot = {"dont": "don't", "wont": "won't", "yall'll": "y'all'll", "oclock": "o'clock", "somebody'd": "somebodyd"}
    assert {k: CONTRACTIONS[k] for k in spot} == spot
    assert vqa_accuracy("dont", ["don't"] * 10) == 1.0


def test_ground_truth_gets_punctuation_only_and_only_when_answers_differ() -> None:
    # answers differ: gts get the punctuation step ("yes." -> "yes"), so 4 of them match
    assert vqa_accuracy("yes", gts("yes.", 4)) == 1.0
    # answers all identical: gts are left as they are, so "yes." never equals the prediction "yes"
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    # gts are never lower-cased or digit-mapped by the official scorer
    assert vqa_accuracy("Yes", gts("Yes", 5)) == 0.0
    assert vqa_accuracy("two", ["two"] * 10) == 0.0


def test_normalize_gt_normalises_answers_fully() -> None:
    assert vqa_accuracy("yes", ["yes."] * 10, normalize_gt=True) == 1.0
    assert vqa_accuracy("Yes", gts("Yes", 5), normalize_gt=True) == 1.0
    assert vqa_accuracy("2", ["two"] * 10, normalize_gt=True) == 1.0


def test_fewer_than_ten_answers() -> None:
    assert vqa_accuracy("Two", ["two"]) == 1.0  # one answer: exact match after normalising both
    assert vqa_accuracy("cat", ["dog"]) == 0.0
    # three answers, all matching: each subset of 2 has 2 matches -> 2/3 (the official formula, not rescaled)
    assert vqa_accuracy("cat", ["cat"] * 3) == pytest.approx(2 / 3)
    # five answers, 4 match: 4 subsets have 3 matches (1.0), 1 subset has 4 (1.0) -> 1.0
    assert vqa_accuracy("cat", ["cat"] * 4 + ["dog"]) == 1.0


@pytest.mark.parametrize("answers", [[], "yes"])
def test_bad_answers_raise(answers: list[str] | str) -> None:
    with pytest.raises(DataError, match="ground-truth answers"):
        vqa_accuracy("yes", answers)
