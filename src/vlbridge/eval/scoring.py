"""Scoring beyond VQA: exact match, answer containment, multiple-choice letters, MMBench circular evaluation,
breakdowns.

Multiple choice follows the conventions of MMBench (Liu et al., 2023, "MMBench: Is Your Multi-modal Model an
All-around Player?") and the LLaVA evaluation scripts: a free-form reply is mapped to an option letter ("B", "(B)",
"B.", "The answer is B", or the option's text), and circular evaluation asks each question once per rotation of its
options, counting it only if every rotation is answered right, which removes the reward for a fixed letter bias.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from vlbridge.errors import DataError
from vlbridge.eval.vqa import normalize_answer

Options = Sequence[str] | str
"""Option texts in order (lettered A, B, C, ...), or a string of the valid capital letters only, e.g. "ABCD"."""

_BARE = re.compile(r"[(\[]?\s*([A-Za-z])\s*[)\]]?[.:]?")  # the whole reply is a letter: "b", "(B)", "B."
_LEADING = re.compile(r"[(\[]([A-Z])[)\]]|([A-Z])[.):](?:\s|$)")  # "(B) a cat", "B. a cat", "B: a cat"
_ANSWER_IS = re.compile(
    r"(?i:\banswer\b(?:\s+(?:is|would be|should be))?\s*[:\-]?\s*(?:option\s+|choice\s+)?)[(\[]?([A-Z])(?![A-Za-z0-9])"
)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
_NEXT_WORD = re.compile(r"\s+([a-z]+)")
_AFTER_CHOICE_A = frozenset({"or", "and", "is", "was", "seems", "looks", "appears", "because", "since", "but"})


class CircularVariant(NamedTuple):
    """One rotation of a multiple-choice question: its options in rotated order and the gold letter for them."""

    question: str
    options: list[str]
    answer: str


def exact_match(pred: str, gold: str) -> float:
    """1.0 when the two answers are equal after VQA normalisation (case, punctuation, articles, number words)."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def contains_answer(pred: str, gold: str) -> float:
    """1.0 when `gold` appears in `pred` as a run of whole words, both VQA-normalised: the answer-in-response match
    used for free-form replies ("The capital of France is Paris." holds "Paris"; "Parisian" does not)."""
    words, want = normalize_answer(pred).split(), normalize_answer(gold).split()
    return float(bool(want) and any(words[i : i + len(want)] == want for i in range(len(words) - len(want) + 1)))


def _letters_and_texts(options: Options) -> tuple[list[str], list[str]]:
    """Valid letters and option texts (empty when only letters were given)."""
    if isinstance(options, str):
        letters = list(options)
        if not letters or any(not ("A" <= c <= "Z") for c in letters) or len(set(letters)) != len(letters):
            raise DataError(
                f"option letters must be distinct capitals A-Z, got {options!r}; pass e.g. 'ABCD', or the option "
                "texts as a list"
            )
        return letters, []
    if not 1 <= len(options) <= 26:
        raise DataError(f"a question needs 1 to 26 options, got {len(options)}; pass the option texts in order")
    return [chr(ord("A") + i) for i in range(len(options))], list(options)


def _text_equal(reply: str, letters: list[str], texts: list[str]) -> str | None:
    """The letter of the one option whose text the reply is, after normalisation."""
    norm = normalize_answer(reply)
    equal = [letter for letter, t in zip(letters, texts, strict=True) if normalize_answer(t) == norm]
    return equal[0] if len(equal) == 1 else None


def _text_contained(reply: str, letters: list[str], texts: list[str]) -> str | None:
    """The letter of the one option whose text the reply contains as whole words, after normalisation."""
    norm = f" {normalize_answer(reply)} "
    found = {letter: f" {t} " for letter, t in zip(letters, map(normalize_answer, texts), strict=True) if t}
    found = {letter: t for letter, t in found.items() if t in norm}
    # an option inside a longer one that was also found ("red" in "red and blue") is not a separate mention
    found = {k: t for k, t in found.items() if not any(t != u and t in u for u in found.values())}
    return next(iter(found)) if len(found) == 1 else None


def _is_word(reply: str, match: re.Match[str]) -> bool:
    """Whether a standalone capital is the English word "A" or "I" ("A cat", "I think"), not a choice ("A or B")."""
    following = _NEXT_WORD.match(reply, match.end())
    if following is None:
        return False
    return match.group(1) == "I" or (match.group(1) == "A" and following.group(1) not in _AFTER_CHOICE_A)


def extract_choice(text: str, options: Options) -> str | None:
    """The option letter a free-form reply chooses, or None when it names none or several.

    Tried in order: the reply is a letter ("B", "(b)", "B."); it starts with one ("B. a cat"); "the answer is
    (option) B"; it is one option's text; it holds exactly one standalone valid letter; it holds exactly one option's
    text. Only letters of `options` count.
    """
    letters, texts = _letters_and_texts(options)
    reply = text.strip()
    bare = _BARE.fullmatch(reply)
    if bare and bare.group(1).upper() in letters:
        return bare.group(1).upper()
    leading = _LEADING.match(reply)
    if leading and (leading.group(1) or leading.group(2)) in letters:
        return leading.group(1) or leading.group(2)
    stated = [m.group(1) for m in _ANSWER_IS.finditer(reply) if m.group(1) in letters]
    if stated:
        return stated[-1]
    if texts and (equal := _text_equal(reply, letters, texts)):
        return equal
    candidates = {m.group(1) for m in _STANDALONE.finditer(reply) if m.group(1) in letters and not _is_word(reply, m)}
    if len(candidates) == 1:
        return candidates.pop()
    return _text_contained(reply, letters, texts) if texts else None


def multiple_choice_accuracy(
    predictions: Sequence[str], golds: Sequence[str], options: Options | Sequence[Options] = "ABCD"
) -> float:
    """Fraction of replies whose extracted letter is the gold letter.

    `options` is one letter string shared by all questions ("ABCD"), or one entry per question: its option texts
    (so replies that give the text itself are matched) or its letter string.
    """
    if len(predictions) != len(golds) or not predictions:
        raise DataError(f"need as many golds as predictions (> 0), got {len(predictions)} and {len(golds)}")
    per_question = [options] * len(predictions) if isinstance(options, str) else list(options)
    if len(per_question) != len(predictions):
        raise DataError(f"got {len(per_question)} option lists for {len(predictions)} predictions; pass one each")
    hits = [
        extract_choice(pred, opts) == gold.strip().upper()
        for pred, gold, opts in zip(predictions, golds, per_question, strict=True)
    ]
    return sum(hits) / len(hits)


def circular_variants(question: str, options: Sequence[str], answer: str) -> list[CircularVariant]:
    """The len(options) rotations of a question (shift k puts option k first), each with its gold letter.

    `answer` is the gold letter for the options as given. Rotation 0 is the original order.
    """
    if isinstance(options, str):
        raise DataError(f"circular_variants needs the option texts as a list, got the string {options!r}")
    letters, _ = _letters_and_texts(options)
    gold = answer.strip().upper()
    if gold not in letters:
        raise DataError(f"answer {answer!r} is not one of the option letters {''.join(letters)}; pass the gold letter")
    n, g = len(options), letters.index(gold)
    return [
        CircularVariant(question, [*options[k:], *options[:k]], letters[(g - k) % n])
        for k in range(n)  # after shifting by k, the gold option sits at index (g - k) mod n
    ]


def circular_score(results: Mapping[Hashable, Sequence[bool]]) -> float:
    """Circular accuracy: the fraction of questions (keyed by id) whose every rotation was answered right."""
    if not results:
        raise DataError("circular_score got no questions; pass {question_id: [correct per rotation, ...]}")
    empty = [qid for qid, outcomes in results.items() if not outcomes]
    if empty:
        raise DataError(f"questions {empty[:5]} have no rotation results; score every variant of each question")
    return sum(all(outcomes) for outcomes in results.values()) / len(results)


def breakdown(
    records: Iterable[Mapping[str, Any]], key: str = "type", score_key: str = "score"
) -> dict[Hashable, dict[str, float]]:
    """Per-group {"n", "accuracy"} of records' scores (bool or 0..1), grouped by `record[key]`, plus "overall"."""
    groups: dict[Hashable, list[float]] = {}
    for i, record in enumerate(records):
        if key not in record or score_key not in record:
            raise DataError(f"record {i} lacks {key!r} or {score_key!r} (has {sorted(record)}); add both fields")
        if record[key] == "overall":
            raise DataError(f"record {i} has {key} 'overall', which is reserved for the total; rename that group")
        score = record[score_key]
        if not isinstance(score, int | float):
            raise DataError(f"record {i} has {score_key} {score!r}; scores must be numbers in [0, 1] or bools")
        groups.setdefault(record[key], []).append(float(score))
    scores = [s for group in groups.values() for s in group]
    if not scores:
        raise DataError("breakdown got no records; score some predictions first")
    out: dict[Hashable, dict[str, float]] = {"overall": {"n": len(scores), "accuracy": sum(scores) / len(scores)}}
    for name, group in groups.items():
        out[name] = {"n": len(group), "accuracy": sum(group) / len(group)}
    return out
