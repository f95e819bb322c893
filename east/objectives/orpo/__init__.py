"""Weighted ORPO (Hong et al. 2024, beyond the EAST paper): DPO's chosen / rejected pair per
kept question, no reference model; pair i's loss, the mean NLL of its chosen sequence minus
beta * log sigmoid(log odds ratio), is multiplied by its question's weight. The trainer,
``WeightedORPOTrainer`` on TRL's ``trl.experimental.orpo.ORPOTrainer``, is in
east.objectives.orpo.trainer."""

from __future__ import annotations

from east.objectives.base import ObjectiveSpec, register_objective
from east.selection import build_dpo

SPEC = register_objective(
    ObjectiveSpec(
        name="orpo",
        build=build_dpo,
        columns=("prompt", "chosen", "rejected", "weight"),
        trainer="east.objectives.orpo.trainer:WeightedORPOTrainer",
        config="trl.experimental.orpo:ORPOConfig",
        label="ORPO",
    )
)
