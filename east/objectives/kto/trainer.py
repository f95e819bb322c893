"""``WeightedKTOTrainer``: TRL's ``KTOTrainer`` with each example's loss multiplied by its
weight (in the gradient; east.training has the derivation and the canaries)."""

from __future__ import annotations

from typing import Any

import torch
from trl import KTOConfig, KTOTrainer

from east.objectives.base import loss_type_problem
from east.objectives.kto import KTO_ALLOWED
from east.training import GradWeightedMixin, TrainerAssumptionError, check_rows, token_ids

__all__ = ["KTOConfig", "WeightedKTOTrainer"]


def _kto_layout(examples: list[dict[str, Any]], batch: dict[str, Any]) -> None:
    if "prompt_ids" not in examples[0]:
        return
    check_rows([token_ids(e["prompt_ids"]) + token_ids(e["completion_ids"]) for e in examples], batch)


def _kto_unsupported(args: KTOConfig | None) -> str | None:
    if args is None:
        return None
    reason = loss_type_problem(args.loss_type, KTO_ALLOWED)
    if reason:
        return reason
    if getattr(args, "padding_free", False):
        return "padding_free drops the 'weight' column; set padding_free=False"
    return None


class WeightedKTOTrainer(GradWeightedMixin, KTOTrainer):
    """``KTOTrainer`` with each example's loss (desirable and undesirable alike) multiplied by
    its weight, on top of TRL's class-level ``desirable_weight`` / ``undesirable_weight``."""

    _east_unsupported = staticmethod(_kto_unsupported)
    _east_layout = staticmethod(_kto_layout)

    def _loss_order(self, inputs: dict[str, Any], w: torch.Tensor) -> torch.Tensor:
        # TRL concatenates the desirable examples' losses, then the undesirable ones'.
        label = inputs["label"].to(torch.bool).reshape(-1).to(w.device)
        index = torch.arange(w.shape[0], device=w.device)
        return torch.cat([index[label], index[~label]])

    def _per_example_losses(self, captured, loss):
        if not captured:
            raise TrainerAssumptionError(
                "KTOTrainer reducing its per-example loss vector with nanmean()", "no such reduction"
            )
        parts = [(1.0, captured[0])]
        self._check_decomposition("KTOTrainer's loss being nanmean(losses)", parts, loss)
        return parts
