"""Grading model answers: extraction (:mod:`.extract`), equivalence under a time and size
bound (:mod:`.equivalence`), clustering and per-question grades (:mod:`.grade`), and
supervised worker processes for grading many questions (:mod:`.pool`).

No torch, no Hydra; importing it has no side effects (math-verify is configured on first use).
"""

from east.grading.equivalence import DEFAULT_TIMEOUT_S, GradingTimeout, ParseStore, answers_equal, parse_store
from east.grading.extract import (
    FALLBACKS,
    Fallback,
    extract_answer,
    extract_answer_with_source,
    gold_from_gsm8k,
    gold_from_math,
    normalize_answer,
)
from east.grading.grade import GradingMode, QuestionGrade, cluster_answers, grade_question
from east.grading.pool import grade_questions

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FALLBACKS",
    "Fallback",
    "GradingMode",
    "GradingTimeout",
    "ParseStore",
    "QuestionGrade",
    "answers_equal",
    "cluster_answers",
    "extract_answer",
    "extract_answer_with_source",
    "gold_from_gsm8k",
    "gold_from_math",
    "grade_question",
    "grade_questions",
    "normalize_answer",
    "parse_store",
]
