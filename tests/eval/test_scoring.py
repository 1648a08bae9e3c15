"""Exact match, multiple-choice letter extraction, MMBench circular evaluation and per-type breakdowns."""

from __future__ import annotations

import pytest

from vlbridge.errors import DataError
from vlbridge.eval import (
    breakdown,
    circular_score,
    circular_variants,
    contains_answer,
    exact_match,
    extract_choice,
    multiple_choice_accuracy,
)

ANIMALS = ["cat", "dog", "bird", "fish"]


def test_contains_answer_needs_whole_words() -> None:
    assert contains_answer("The capital of France is Paris.", "paris") == 1.0
    assert contains_answer("A week is approximately seven days.", "7") == 1.0  # number words normalised
    assert contains_answer("Leonardo da Vinci painted it", "da Vinci") == 1.0
    assert contains_answer("A Parisian café", "Paris") == 0.0
    assert contains_answer("Vinci da Leonardo", "da Vinci") == 0.0  # the words in order
    assert contains_answer("anything", "the") == 0.0  # nothing left to find after normalisation


def test_exact_match_normalises() -> None:
    assert exact_match("The Dog.", "dog") == 1.0
    assert exact_match("two", "2") == 1.0
    assert exact_match("cat", "dog") == 0.0


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("  [C]  ", "C"),
        ("B. dog", "B"),
        ("(D) fish", "D"),
        ("The answer is B", "B"),
        ("Answer: (C)", "C"),
        ("The correct answer is option D.", "D"),
        ("Option A looks plausible, but the answer is C.", "C"),
        ("Answer: A. On reflection, the answer is C.", "C"),  # the last stated answer wins
        ("dog", "B"),  # the option text itself
        ("A fish.", "D"),  # "A" is the article here, and the text is option D's
        ("I think C is right", "C"),  # "I" is the pronoun, C the only standalone letter
        ("It looks like a bird to me.", "C"),  # exactly one option text in the reply
        ("E", None),  # not an option letter
        ("A or B", None),  # two letters: no single choice
        ("A is correct", "A"),
        ("B or C", None),
        ("a cat or a dog", None),  # two option texts
        ("no idea", None),
        ("", None),
    ],
)
def test_extract_choice(reply: str, letter: str | None) -> None:
    assert extract_choice(reply, ANIMALS) == letter


def test_extract_choice_with_letters_only() -> None:
    assert extract_choice("The answer is (C).", "ABCD") == "C"
    assert extract_choice("dog", "ABCD") is None  # no texts to match
    assert extract_choice("D", "ABC") is None


def test_extract_choice_prefers_the_longer_contained_option() -> None:
    assert extract_choice("It is red and blue", ["red", "red and blue", "green"]) == "B"


@pytest.mark.parametrize("options", ["abcd", "AAB", "", []])
def test_bad_options_raise(options: str | list[str]) -> None:
    with pytest.raises(DataError, match="option"):
        extract_choice("A", options)


def test_multiple_choice_accuracy() -> None:
    assert multiple_choice_accuracy(["A", "(B)", "The answer is D", "C"], ["A", "B", "C", "C"]) == 0.75
    per_question = [ANIMALS, ["yes", "no"]]
    assert multiple_choice_accuracy(["dog", "No."], ["b", "A"], per_question) == 0.5  # gold letters any case
    with pytest.raises(DataError, match="option lists"):
        multiple_choice_accuracy(["A"], ["A"], [ANIMALS, ANIMALS])
    with pytest.raises(DataError, match="capitals"):  # a shared list of texts is not per-question letters
        multiple_choice_accuracy(["cat", "dog"], ["A", "B"], ["cat", "dog"])


def test_circular_variants_rotate_options_and_gold() -> None:
    variants = circular_variants("What animal?", ANIMALS, "C")
    assert [(v.options, v.answer) for v in variants] == [
        (["cat", "dog", "bird", "fish"], "C"),
        (["dog", "bird", "fish", "cat"], "B"),
        (["bird", "fish", "cat", "dog"], "A"),
        (["fish", "cat", "dog", "bird"], "D"),
    ]
    assert all(v.question == "What animal?" for v in variants)
    assert all(v.options[ord(v.answer) - ord("A")] == "bird" for v in variants)
    with pytest.raises(DataError, match="gold letter"):
        circular_variants("q", ANIMALS, "E")


def test_circular_evaluation_end_to_end() -> None:
    questions = {"q1": (ANIMALS, "C"), "q2": (["red", "green", "blue", "white"], "A")}

    def run(model) -> tuple[float, float]:
        results, flat = {}, []
        for qid, (options, gold) in questions.items():
            for v in circular_variants(qid, options, gold):
                correct = extract_choice(model(qid, v.options), v.options) == v.answer
                results.setdefault(qid, []).append(correct)
                flat.append(correct)
        return sum(flat) / len(flat), circular_score(results)

    truth = {"q1": "bird", "q2": "red"}
    assert run(lambda qid, opts: truth[qid]) == (1.0, 1.0)  # knows the answer: right in every rotation
    assert run(lambda qid, opts: "A") == (0.25, 0.0)  # always "A": right once per question, never circularly
    # knows q1, always picks the first option on q2: q2 fails the circular test
    assert run(lambda qid, opts: truth[qid] if qid == "q1" else opts[0]) == (0.625, 0.5)


def test_circular_score_validates() -> None:
    assert circular_score({"q1": [True] * 4, "q2": [True, False, True, True]}) == 0.5
    with pytest.raises(DataError):
        circular_score({})
    with pytest.raises(DataError, match="no rotation"):
        circular_score({"q1": []})


def test_breakdown() -> None:
    records = [
        {"type": "yes/no", "score": 1.0},
        {"type": "yes/no", "score": 0.0},
        {"type": "number", "score": 0.9},
        {"type": "other", "score": True},
    ]
    out = breakdown(records)
    assert list(out) == ["overall", "yes/no", "number", "other"]
    assert out["overall"] == {"n": 4, "accuracy": pytest.approx(2.9 / 4)}
    assert out["yes/no"] == {"n": 2, "accuracy": 0.5}
    assert out["number"] == {"n": 1, "accuracy": pytest.approx(0.9)}
    assert breakdown([{"split": "a", "ok": 1}], key="split", score_key="ok")["a"] == {"n": 1, "accuracy": 1.0}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "no records"),
        ([{"score": 1.0}], "lacks"),
        ([{"type": "overall", "score": 1.0}], "reserved"),
        ([{"type": "a", "score": "yes"}], "numbers"),
    ],
)
def test_breakdown_rejects_bad_records(records: list[dict], message: str) -> None:
    with pytest.raises(DataError, match=message):
        breakdown(records)
