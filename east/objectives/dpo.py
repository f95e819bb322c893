"""Weighted DPO: one chosen (correct) / rejected (incorrect) pair per kept question, its loss
multiplied by the question's weight; loss types limited to those whose per-pair loss reads only
that pair (east.training.DPO_ALLOWED, checked by the trainer)."""

from __future__ import annotations

from east.objectives.base import ObjectiveSpec, register_objective
from east.selection import build_dpo

SPEC = register_objective(
    ObjectiveSpec(
        name="dpo",
        build=build_dpo,
        columns=("prompt", "chosen", "rejected", "weight"),
        trainer="east.training:WeightedDPOTrainer",
        config="trl:DPOConfig",
        label="DPO",
        reference_model=True,
    )
)
