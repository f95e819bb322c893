"""Weighted DPO: one chosen (correct) / rejected (incorrect) pair per kept question, its loss
multiplied by the question's weight; loss types limited to those whose per-pair loss reads only
that pair (``DPO_ALLOWED``: the config check and the trainer refuse the others). The trainer,
``WeightedDPOTrainer``, is in east.objectives.dpo.trainer (it imports TRL's trainers)."""

from __future__ import annotations

from typing import Any

from east.objectives.base import ObjectiveSpec, loss_type_problem, register_objective
from east.selection import build_dpo

#: DPO loss types whose loss for pair i depends on the policy only through pair i's rows, so
#: that a per-pair weight on the gradient is exact. Not allowed: aot / aot_unpaired (sort
#: log-ratios across the batch), sft (a token mean over the whole batch), and any type TRL
#: adds later until it is checked.
DPO_ALLOWED = frozenset(
    {
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "apo_zero",
        "apo_down",
        "discopop",
        "sigmoid_norm",
    }
)


def _check(settings: dict[str, Any], per_device: int) -> str | None:
    return loss_type_problem(settings.get("loss_type", "sigmoid"), DPO_ALLOWED)


SPEC = register_objective(
    ObjectiveSpec(
        name="dpo",
        build=build_dpo,
        columns=("prompt", "chosen", "rejected", "weight"),
        trainer="east.objectives.dpo.trainer:WeightedDPOTrainer",
        config="trl:DPOConfig",
        label="DPO",
        reference_model=True,
        check=_check,
    )
)
