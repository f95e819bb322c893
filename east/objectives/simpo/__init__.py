"""Weighted SimPO (Meng et al. 2024, beyond the EAST paper): DPO's chosen / rejected pair per
kept question, no reference model; pair i's loss -log sigmoid(beta * (mean log-prob of
chosen - of rejected) - gamma) is multiplied by its question's weight. TRL runs SimPO as CPO
with ``loss_type="simpo"`` (conf/objective/simpo.yaml sets it, with ``cpo_alpha: 0``: no NLL
term); the trainer, ``WeightedCPOTrainer`` on ``trl.experimental.cpo.CPOTrainer``, is in
east.objectives.simpo.trainer. Loss types: ``CPO_ALLOWED``, each reads only its own pair."""

from __future__ import annotations

from typing import Any

from east.objectives.base import ObjectiveSpec, loss_type_problem, register_objective
from east.selection import build_dpo

#: CPOTrainer's loss types; each pair's loss reads only that pair's log-probabilities.
CPO_ALLOWED = frozenset({"simpo", "sigmoid", "hinge", "ipo"})


def _check(settings: dict[str, Any], per_device: int) -> str | None:
    return loss_type_problem(settings.get("loss_type", "sigmoid"), CPO_ALLOWED)


SPEC = register_objective(
    ObjectiveSpec(
        name="simpo",
        build=build_dpo,
        columns=("prompt", "chosen", "rejected", "weight"),
        trainer="east.objectives.simpo.trainer:WeightedCPOTrainer",
        config="trl.experimental.cpo:CPOConfig",
        label="SimPO",
        check=_check,
    )
)
