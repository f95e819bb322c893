"""What the driver's stage methods share (east.stages.driver, .driver_generate,
.driver_train): the digest of a question list that goes into keys, stage labels per round,
and the count of answers the grading bound cut."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from east.data import Problem

log = logging.getLogger("east.stages.driver")


def problems_digest(problems: list[Problem]) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.question, p.gold]).encode())
    return h.hexdigest()[:20]


def round_label(stage: str, round_: int) -> str:
    return stage if round_ == 0 else f"{stage}_r{round_}"


def grading_stats(grades: list[Any], timeout_s: float, stage: str) -> dict[str, Any]:
    responses = sum(g.n for g in grades)
    timeouts = sum(g.timeouts for g in grades)
    warn_timeouts(timeouts, responses, timeout_s, stage)
    return {"questions": len(grades), "responses": responses, "timeouts": timeouts, "timeout_s": timeout_s}


def warn_timeouts(timeouts: int, responses: int, timeout_s: float, stage: str) -> None:
    if timeouts:
        log.warning(
            "%s: %d of %d responses hit the grading bound (%.3g s per parse or comparison, or too "
            "large to evaluate) and were compared by string only; raise grading.timeout_s to "
            "grade them symbolically",
            stage,
            timeouts,
            responses,
            timeout_s,
        )
