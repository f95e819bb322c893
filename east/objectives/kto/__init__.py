"""Weighted KTO: the DPO pair unpaired (the correct response desirable, the incorrect one
undesirable), each example's loss multiplied by its question's weight; loss types limited to
``KTO_ALLOWED``. The trainer, ``WeightedKTOTrainer``, is in east.objectives.kto.trainer."""

from __future__ import annotations

from typing import Any

from east.objectives.base import ObjectiveSpec, loss_type_problem, register_objective
from east.selection import build_kto

#: KTO loss types: each example's loss reads only its own rows (kto's KL term is detached).
KTO_ALLOWED = frozenset({"kto", "apo_zero_unpaired"})


def _check(settings: dict[str, Any], per_device: int) -> str | None:
    reason = loss_type_problem(settings.get("loss_type", "kto"), KTO_ALLOWED)
    if reason:
        return reason
    if settings.get("loss_type", "kto") == "kto" and per_device < 2:
        return (
            "KTO's loss_type 'kto' estimates its KL term within a batch, so "
            f"per_device_train_batch_size must be >= 2 (got {per_device})"
        )
    return None


SPEC = register_objective(
    ObjectiveSpec(
        name="kto",
        build=build_kto,
        columns=("prompt", "completion", "label", "weight"),
        trainer="east.objectives.kto.trainer:WeightedKTOTrainer",
        config="trl:KTOConfig",
        label="KTO",
        reference_model=True,
        # TRL's KTO pairs each example with the next one's completion for its KL term: it
        # reads rows in order, so the train stage shuffles them (seeded) first.
        shuffle_records=True,
        check=_check,
    )
)
