"""The build stage's body: filter the graded questions, weight the kept ones by the run's
mapping, and build the objective's training records (driver side; no model weights)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from east.config import Config
from east.errors import UserError
from east.prompts import assistant, messages
from east.weighting import WeightingError, canonical

log = logging.getLogger(__name__)


class NothingToTrain(UserError):
    """No training question survived the filters: a run's data and settings, not a bug."""


def build_records(
    c: Config, rows: list[dict[str, Any]], grade_rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The objective's weighted training records from graded samples, and their statistics."""
    from east.grading import QuestionGrade
    from east.objectives import get_objective
    from east.selection import GradedQuestion, filter_questions, nothing_survived
    from east.weighting import get_mapping

    system = c.model.system_prompt
    questions = [
        GradedQuestion(
            r["id"],
            messages(r["question"], system),
            r["responses"],
            QuestionGrade(**{k: v for k, v in g.items() if k != "id"}),
        )
        for r, g in zip(rows, grade_rows)
    ]
    kept, dropped = filter_questions(questions, c.filters)
    if not kept:
        tiny = c.model.tiny is not None
        raise NothingToTrain(nothing_survived(dropped, c.sampling.n, tiny, c.dataset.name == "arith"))
    name, sharpness = canonical(c.east.mapping, c.east.sharpness)
    mapping = get_mapping(name)
    values = signal_values(kept, rows, mapping.signal)
    try:
        weights = mapping(values, sharpness)
    except WeightingError as e:
        if name == "uniform" or len(values) < 2 or np.ptp(values) != 0:
            raise
        # Every kept question has the same signal (one response each: entropy 0), so the
        # formula has nothing to tell apart and, here, no value either.
        raise WeightingError(
            f"every one of the {len(values)} kept questions has {mapping.signal} {values[0]:g} "
            f"(sampling.n={c.sampling.n}"
            f"{': one response per question has entropy 0' if c.sampling.n == 1 else ''}), so mapping "
            f"{name!r} at sharpness {sharpness:g} gives no weights ({e}); sample more responses "
            "(sampling.n) or run east.mapping=uniform"
        ) from None
    # Weights that came out all equal train exactly vanilla self-training: said here, and the
    # run is tabled as vanilla, not as EAST (results.json run.weights_uniform).
    uniform = name != "uniform" and bool(np.ptp(weights) == 0)
    if uniform:
        log.warning(
            "mapping %r at sharpness %g gave all %d questions the same weight: this run trains "
            "vanilla self-training and is tabled as such, not as EAST",
            name,
            sharpness,
            len(weights),
        )
    objective = get_objective(c.objective.name)
    records = objective.build(kept, weights, seed=c.seed, **objective.build_options(c.objective))
    for r in records:  # TRL conversational format
        for key in ("completion", "chosen", "rejected"):
            if key in r:
                r[key] = assistant(r[key])
    entropy = [q.grade.entropy for q in questions]
    kept_entropy = [q.grade.entropy for q in kept]
    stats = {
        "questions": len(questions),
        "kept": len(kept),
        "dropped": dropped,
        "records": len(records),
        "entropy": summary(kept_entropy),
        "entropy_all": summary(entropy),
        "weight": summary(list(weights)),
        "weights_uniform": name == "uniform" or uniform,
        "accuracy_all": summary([q.grade.accuracy for q in questions]),
        "kept_entropy_values": kept_entropy,
        "weight_values": [float(w) for w in weights],
        "entropy_values": entropy,
    }
    return records, stats


def signal_values(kept: list[Any], rows: list[dict[str, Any]], signal: str) -> np.ndarray:
    """Per kept question, the statistic a mapping reads (east.weighting.SIGNALS): a field of
    its grade, or the mean of the sampler's token entropies over its responses."""
    if signal == "token_entropy":
        token = {r["id"]: r.get("token_entropy") for r in rows}
        missing = [q.question_id for q in kept if not token.get(q.question_id)]
        if missing:
            raise ValueError(
                f"mapping signal 'token_entropy' is not available for {len(missing)} questions "
                f"(e.g. {missing[0]!r}): this run's sampler recorded no token entropies"
            )
        return np.array([np.mean(token[q.question_id]) for q in kept], dtype=float)
    field = {"entropy": "entropy", "accuracy": "accuracy", "rejected": "rejected_share"}[signal]
    return np.array([getattr(q.grade, field) for q in kept], dtype=float)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}
