"""``WeightedDPOTrainer``: TRL's ``DPOTrainer`` with each pair's loss multiplied by its weight
(in the gradient; east.training has the derivation and the canaries)."""

from __future__ import annotations

from typing import Any

from trl import DPOConfig, DPOTrainer

from east.objectives.base import loss_type_problem
from east.objectives.dpo import DPO_ALLOWED
from east.training import GradWeightedMixin, TrainerAssumptionError, check_rows, token_ids

__all__ = ["DPOConfig", "WeightedDPOTrainer"]


def _dpo_layout(examples: list[dict[str, Any]], batch: dict[str, Any]) -> None:
    if "prompt_ids" not in examples[0]:
        return
    chosen = [token_ids(e["prompt_ids"]) + token_ids(e["chosen_ids"]) for e in examples]
    rejected = [token_ids(e["prompt_ids"]) + token_ids(e["rejected_ids"]) for e in examples]
    check_rows(chosen + rejected, batch)  # [chosen; rejected]: pair i is rows i and B + i


def _dpo_unsupported(args: DPOConfig | None) -> str | None:
    if args is None:
        return None
    types = args.loss_type if isinstance(args.loss_type, list) else [args.loss_type]
    reason = loss_type_problem(list(types), DPO_ALLOWED)
    if reason:
        return reason
    if getattr(args, "padding_free", False):
        return "padding_free drops the 'weight' column; set padding_free=False"
    return None


class WeightedDPOTrainer(GradWeightedMixin, DPOTrainer):
    """``DPOTrainer`` with each pair's loss multiplied by its weight (in the gradient)."""

    _east_unsupported = staticmethod(_dpo_unsupported)
    _east_layout = staticmethod(_dpo_layout)
    _east_rows_per_example = 2  # rows are [chosen; rejected]

    def _per_example_losses(self, captured, loss):
        # The first reduction per loss type: its metrics (mean log-probs) come after the loss.
        types = list(self.loss_types)
        if len(captured) < len(types):
            raise TrainerAssumptionError(
                "DPOTrainer reducing each loss type's per-pair loss vector with mean()",
                f"{len(captured)} such reductions for loss types {types}",
            )
        parts = list(zip(self.loss_weights, captured[: len(types)], strict=True))
        self._check_decomposition("DPOTrainer's loss being sum_t loss_weight_t * mean(loss_t)", parts, loss)
        return parts
