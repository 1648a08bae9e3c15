"""VQAv2 answer normalisation and accuracy, exactly as the official VQA evaluation scores them.

Implements the rules of vqaEval.py in the VQA API (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation), the
scorer behind every reported VQAv2 number, so our figures compare with published ones. Two versions of it are in
use and they give different scores (docs/scoring.md works through examples):

- "2021", the default: the current code (commit a013f00, "Fixed processing answers bug", March 2021). Newlines and
  tabs become spaces and both the prediction and every ground-truth answer are stripped. Then, only when the
  ground-truth answers are not all identical, both sides are normalised fully (below); when they are all
  identical neither side is touched, so only an exact match counts ("Yes" scores 0 against ten "yes").
- "2017": the code from October 2016 (commit 458a8b2) that scored VQAv2 from its 2017 release until that fix. The
  prediction is always normalised fully; the ground truth gets only the punctuation step, and only when the
  answers are not all identical ("Yes" scores 1.0 against ten "yes", "two" scores 0 against ten "two").

Full normalisation (`normalize_answer`): newlines and tabs become spaces, then strip; punctuation; lower-case;
number words to digits; drop articles; contractions written without the apostrophe get it back ("dont" -> "don't").
`normalize_gt=True` instead normalises both sides fully whatever the answers, as TextVQA-style scorers do, for
answers that were not stored normalised. Accuracy: for each of the n ground-truth answers, the other n - 1 give
min(#matches / 3, 1); the mean over the n leave-one-out subsets is the score. Leaving one out goes by position, so
duplicate answers still count.

`evalai_process_answer` is the EvalAI answer processor that LLaVA applies to predictions before submitting them
(llava/eval/m4c_evaluator.py, from MMF): it lower-cases, deletes every comma and question mark, splits "'s" off as
" 's", then normalises fully. Under "2021" it makes case and number words count again against identical answers
("Yes" and "Two" match ten "yes" and ten "2"; "two" then misses ten "two", as under "2017"), and it changes a few
answers the scorer alone would not ("1,000-2,000" -> "1000 2000", "man's" -> "man 's").

Two quirks of the official code are kept on purpose, because they change scores: its period pattern
`(?!<=\\d)(\\.)(?!\\d)` meant a look-behind but wrote a look-ahead that never fires, so it strips every period not
followed by a digit ("5." -> "5", ".5" kept); and it passes `re.UNICODE` (32) as `sub`'s count, so at most 32
periods are stripped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, cast, get_args

from vlbridge.errors import ConfigError, DataError

VQAVersion = Literal["2021", "2017"]
"""Which vqaEval.py scores: the current code ("2021") or the one before its answer-processing fix ("2017")."""
VQA_VERSIONS: tuple[str, ...] = get_args(VQAVersion)

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
"""Marks the official scorer removes; note that the apostrophe, colon and period are not among them."""

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# The official manual map, all 120 entries verbatim, its oddities included: the capitalised keys ("Im", "Ive",
# "Id've", "I'dve") never match because words are lower-cased first, and "somebody'd" maps to "somebodyd".
# fmt: off
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
# fmt: on

_PERIOD = re.compile(r"\.(?!\d)")  # what the official `(?!<=\d)(\.)(?!\d)` actually matches
_MAX_PERIODS_STRIPPED = 32  # the official code passes re.UNICODE (== 32) where `sub` takes its count
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")


def _strip_punctuation(text: str) -> str:
    """The official punctuation step: delete or space out each mark, then strip periods not before a digit.

    A mark is deleted when it touches a space somewhere in the text, or when the text has a comma between digits
    anywhere ("1,000" -> "1000"); otherwise it becomes a space ("black-and-white" -> "black and white"). The
    conditions look at the input text, not at the partly cleaned one.
    """
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        delete = has_digit_comma or f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_STRIPPED)


def _map_words(text: str) -> str:
    """Lower-case, split on whitespace, number words to digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES]
    return " ".join(words)


def _clean_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip: the only step the 2021 scorer applies to every answer."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(ans: str) -> str:
    """Normalise an answer fully, as the official VQAv2 scorer does ("The Two dogs." -> "2 dogs")."""
    return _map_words(_strip_punctuation(_clean_whitespace(ans)))


def evalai_process_answer(ans: str) -> str:
    """LLaVA's EvalAI answer processor, applied to a prediction before it is submitted or scored.

    Lower-case, delete every comma and question mark, split "'s" off as " 's", then `normalize_answer`. Deleting
    the commas first means the punctuation step never sees a digit-comma-digit, so other marks become spaces
    ("1,000-2,000" -> "1000 2000", where `normalize_answer` gives "10002000").
    """
    text = ans.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(text)


def require_version(version: str) -> VQAVersion:
    """`version` if it names a vqaEval.py version, else a ConfigError listing them (checked before any answer)."""
    if version not in VQA_VERSIONS:
        raise ConfigError(f"unknown VQA scorer version {version!r}; use one of {', '.join(VQA_VERSIONS)}")
    return cast(VQAVersion, version)


def _compared(
    prediction: str, answers: Sequence[str], version: VQAVersion, normalize_gt: bool
) -> tuple[str, list[str]]:
    """The prediction and the ground-truth answers as the chosen scorer compares them."""
    if normalize_gt or len(answers) == 1:
        return normalize_answer(prediction), [normalize_answer(a) for a in answers]
    if version == "2017":
        gts = [_strip_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
        return normalize_answer(prediction), gts
    pred, gts = _clean_whitespace(prediction), [_clean_whitespace(a) for a in answers]
    if len(set(gts)) > 1:
        return normalize_answer(pred), [normalize_answer(a) for a in gts]
    return pred, gts


def vqa_accuracy(
    prediction: str, answers: Sequence[str], *, version: VQAVersion = "2021", normalize_gt: bool = False
) -> float:
    """Official VQAv2 accuracy of one predicted answer against the human answers (10 in VQAv2), in [0, 1].

    `version` picks the official scorer: "2021" (current; normalises both sides, and only when the answers
    differ) or "2017" (normalises the prediction always and the answers' punctuation when they differ); see the
    module docstring and docs/scoring.md. `normalize_gt=True` normalises both sides fully under either version.
    Any number of answers works: the mean over leave-one-out subsets of min(#matches / 3, 1), so with fewer than 4
    answers even a full match scores below 1 ((n - 1) / 3), as the official formula gives. A single answer, where
    no subset is left, is scored by exact match after normalising both sides.
    """
    if isinstance(answers, str) or len(answers) == 0:
        raise DataError(
            f"vqa_accuracy needs a non-empty list of ground-truth answers, got {answers!r}; pass e.g. ['2']"
        )
    pred, gts = _compared(prediction, answers, require_version(version), normalize_gt)
    hits = [gt == pred for gt in gts]
    if len(hits) == 1:
        return float(hits[0])
    total = sum(hits)
    # leaving answer i out leaves total - hits[i] matches among the others
    return sum(min(1.0, (total - hit) / 3) for hit in hits) / len(hits)
