"""Official VQAv2 scoring, checked on worked examples of each rule of the VQA API's vqaEval.py (2021 and 2017).

Expected values are worked out by hand from the official algorithm in the comments, not taken from our code.
"""

from __future__ import annotations

import pytest

import vlbridge
from vlbridge.errors import ConfigError, DataError
from vlbridge.eval import normalize_answer, vqa_accuracy
from vlbridge.eval.vqa import CONTRACTIONS, evalai_process_answer


def gts(match: str, n_match: int, other: str = "no", n: int = 10) -> list[str]:
    return [match] * n_match + [other] * (n - n_match)


def test_public_entry_point_scores_with_the_current_version() -> None:
    # answers differ, so both sides are normalised: "Two" -> "2" matches 9 answers -> 1.0
    assert vlbridge.eval.vqa_accuracy("Two", ["2"] * 9 + ["3"]) == 1.0
    # answers identical: nothing is normalised under 2021, so "Yes" != "yes" -> 0 (2017 would give 1.0)
    assert vlbridge.eval.vqa_accuracy("Yes", ["yes"] * 10) == 0.0


@pytest.mark.parametrize(
    ("prediction", "answers", "scores"),
    [
        # ten identical "yes". 2021: answers identical, so neither side is processed; "Yes" != "yes", 0 matches
        # -> 0. 2017: the prediction is always processed, "Yes" -> "yes"; the identical answers stay "yes", so
        # every leave-one-out subset has 9 matches -> min(9/3, 1) = 1 -> 1.0. EvalAI lower-cases first -> 1.0, 1.0.
        ("Yes", ["yes"] * 10, (0.0, 1.0, 1.0, 1.0)),
        # ten identical "2": as above, "Two" only matches once processed ("Two" -> "2"): 2021 0, the others 1.0
        ("Two", ["2"] * 10, (0.0, 1.0, 1.0, 1.0)),
        # ten identical "two". 2021: untouched on both sides, "two" == "two" -> 1.0. 2017, and EvalAI before either:
        # the prediction becomes "2" but the answers stay "two" -> 0.
        ("two", ["two"] * 10, (1.0, 0.0, 0.0, 0.0)),
        # three "2", seven "3". Answers differ, the prediction "two" -> "2" (EvalAI too); the answers "2"/"3" have
        # nothing to process. 3 matches: the 3 subsets dropping a "2" keep 2 (2/3), the 7 dropping a "3" keep 3 (1)
        # -> (3 * 2/3 + 7 * 1) / 10 = 0.9 in every column.
        ("two", ["2"] * 3 + ["3"] * 7, (0.9, 0.9, 0.9, 0.9)),
        # four "t shirt", six "shirt". Answers differ, so the prediction is processed: "-" touches no space and there
        # is no digit-comma-digit, so it becomes a space -> "t shirt" (EvalAI gives the same); the answers are
        # unchanged by their processing (2021 full, 2017 punctuation only). 4 matches: every subset keeps >= 3 -> 1.0.
        ("t-shirt", ["t shirt"] * 4 + ["shirt"] * 6, (1.0, 1.0, 1.0, 1.0)),
        # four "1000 2000", six "2000". Scorer alone: the prediction contains "1,0", a digit-comma-digit, so every
        # mark is deleted, "-" included -> "10002000", which matches nothing -> 0, 0. EvalAI deletes the commas
        # first -> "1000-2000"; no digit-comma-digit is left, so "-" becomes a space -> "1000 2000", 4 matches -> 1.0.
        ("1,000-2,000", ["1000 2000"] * 4 + ["2000"] * 6, (0.0, 0.0, 1.0, 1.0)),
        # four "man's", six "man". Scorer alone: "'" is not punctuation and "man's" no contraction key, so it stays
        # "man's", 4 matches -> 1.0. EvalAI writes "'s" as " 's" -> "man 's", which nothing turns back -> 0.
        ("man's", ["man's"] * 4 + ["man"] * 6, (1.0, 1.0, 0.0, 0.0)),
    ],
)
def test_worked_examples_of_docs_scoring(prediction: str, answers: list[str], scores: tuple[float, ...]) -> None:
    """The table in docs/scoring.md: 2021, 2017, then EvalAI processing before 2021 and before 2017."""
    processed = evalai_process_answer(prediction)
    got = (
        vqa_accuracy(prediction, answers),  # the default is 2021
        vqa_accuracy(prediction, answers, version="2017"),
        vqa_accuracy(processed, answers, version="2021"),
        vqa_accuracy(processed, answers, version="2017"),
    )
    assert got == pytest.approx(scores)


@pytest.mark.parametrize(
    ("raw", "processed"),
    [
        ("Yes", "yes"),
        ("Two", "2"),
        ("The Dog.", "dog"),
        ("What?", "what"),
        ("1,000-2,000", "1000 2000"),  # normalize_answer gives "10002000"
        ("red,white", "redwhite"),  # commas are deleted, not spaced out (normalize_answer: "red white")
        ("man's", "man 's"),
        ("\tblack-and-white\n", "black and white"),
    ],
)
def test_evalai_process_answer(raw: str, processed: str) -> None:
    assert evalai_process_answer(raw) == processed


def test_unknown_version_raises() -> None:
    with pytest.raises(ConfigError, match="use one of 2021, 2017"):
        vqa_accuracy("yes", ["yes"] * 10, version="2019")  # type: ignore[arg-type]


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
    assert vqa_accuracy("dont", gts("don't", 9)) == 1.0  # answers differ: "dont" -> "don't", 9 matches
    assert vqa_accuracy("dont", ["don't"] * 10, version="2017") == 1.0  # 2017 maps the prediction regardless


def test_2021_normalises_both_sides_and_only_when_answers_differ() -> None:
    # answers differ: both sides fully normalised ("Yes" -> "yes"), so 5 answers match -> 1.0
    assert vqa_accuracy("Yes", gts("Yes", 5)) == 1.0
    assert vqa_accuracy("yes", gts("yes.", 4)) == 1.0
    # answers identical: neither side is touched, so only the exact text counts
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes."] * 10) == 1.0
    assert vqa_accuracy("Yes", ["Yes"] * 10) == 1.0


def test_2021_strips_whitespace_on_both_sides_before_comparing_the_answers() -> None:
    # "yes " and "yes" are one answer once stripped, so the answers count as identical and nothing is normalised:
    # "Yes" != "yes" -> 0 (had the raw answers been compared, they would differ and "Yes" -> "yes" would score 1.0)
    assert vqa_accuracy("Yes", ["yes "] * 5 + ["yes"] * 5) == 0.0
    assert vqa_accuracy(" yes\t", ["yes\n"] + ["yes"] * 9) == 1.0
    # 2017 compares the raw answers: they differ, punctuation leaves "yes " as is, "Yes" -> "yes" matches 5 -> 1.0
    assert vqa_accuracy("Yes", ["yes "] * 5 + ["yes"] * 5, version="2017") == 1.0


def test_2017_ground_truth_gets_punctuation_only_and_only_when_answers_differ() -> None:
    # answers differ: gts get the punctuation step ("yes." -> "yes"), so 4 of them match
    assert vqa_accuracy("yes", gts("yes.", 4), version="2017") == 1.0
    # answers all identical: gts are left as they are, so "yes." never equals the prediction "yes"
    assert vqa_accuracy("yes", ["yes."] * 10, version="2017") == 0.0
    # gts are never lower-cased or digit-mapped by the 2017 scorer
    assert vqa_accuracy("Yes", gts("Yes", 5), version="2017") == 0.0
    assert vqa_accuracy("two", ["two"] * 10, version="2017") == 0.0


@pytest.mark.parametrize("version", ["2021", "2017"])
def test_normalize_gt_normalises_both_sides_fully(version: str) -> None:
    assert vqa_accuracy("yes", ["yes."] * 10, version=version, normalize_gt=True) == 1.0
    assert vqa_accuracy("Yes", gts("Yes", 5), version=version, normalize_gt=True) == 1.0
    assert vqa_accuracy("2", ["two"] * 10, version=version, normalize_gt=True) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 10, version=version, normalize_gt=True) == 1.0


@pytest.mark.parametrize("version", ["2021", "2017"])
def test_fewer_than_ten_answers(version: str) -> None:
    assert vqa_accuracy("Two", ["two"], version=version) == 1.0  # one answer: exact match after normalising both
    assert vqa_accuracy("cat", ["dog"], version=version) == 0.0
    # three answers, all matching: each subset of 2 has 2 matches -> 2/3 (the official formula, not rescaled)
    assert vqa_accuracy("cat", ["cat"] * 3, version=version) == pytest.approx(2 / 3)
    # five answers, 4 match: 4 subsets have 3 matches (1.0), 1 subset has 4 (1.0) -> 1.0
    assert vqa_accuracy("cat", ["cat"] * 4 + ["dog"], version=version) == 1.0


@pytest.mark.parametrize("answers", [[], "yes"])
def test_bad_answers_raise(answers: list[str] | str) -> None:
    with pytest.raises(DataError, match="ground-truth answers"):
        vqa_accuracy("yes", answers)
