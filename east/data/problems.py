"""The one record type every dataset loader produces."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    id: str  # stable across runs: seeds and caches are keyed by it
    question: str
    gold: str  # the final answer, compared by equivalence
    solution: str | None = None  # a worked reference solution, when the dataset has one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
