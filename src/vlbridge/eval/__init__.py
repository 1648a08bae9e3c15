"""Evaluation: official VQAv2 accuracy, exact match, multiple choice with MMBench circular evaluation, breakdowns."""

from __future__ import annotations

from vlbridge.eval.scoring import (
    CircularVariant,
    breakdown,
    circular_score,
    circular_variants,
    contains_answer,
    exact_match,
    extract_choice,
    multiple_choice_accuracy,
)
from vlbridge.eval.vqa import normalize_answer, vqa_accuracy

__all__ = [
    "CircularVariant",
    "breakdown",
    "circular_score",
    "circular_variants",
    "contains_answer",
    "exact_match",
    "extract_choice",
    "multiple_choice_accuracy",
    "normalize_answer",
    "vqa_accuracy",
]
