"""Weighted SFT: up to ``objective.sft_k`` distinct correct responses per kept question, each
a prompt / completion record carrying its question's weight (docs/method.md §4). The trainer,
``WeightedSFTTrainer``, is in east.objectives.sft.trainer (it imports TRL's trainers)."""

from __future__ import annotations

from typing import Any

from east.objectives.base import ObjectiveSpec, register_objective
from east.selection import build_sft


def _options(objective_config: Any) -> dict[str, Any]:
    return {"k": objective_config.sft_k}


SPEC = register_objective(
    ObjectiveSpec(
        name="sft",
        build=build_sft,
        columns=("prompt", "completion", "weight"),
        trainer="east.objectives.sft.trainer:WeightedSFTTrainer",
        config="trl:SFTConfig",
        label="SFT",
        build_options=_options,
    )
)
