"""``WeightedORPOTrainer``: TRL's experimental ``ORPOTrainer`` with pair i's loss
(mean NLL of its chosen sequence, prompt included as ORPO defines it, minus
beta * log sigmoid(log odds ratio)) multiplied by its weight: east.training.paired has the
derivation and the canaries."""

from __future__ import annotations

from typing import Any

from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from east.training.paired import PairedLogitsMixin

__all__ = ["ORPOConfig", "WeightedORPOTrainer"]


class WeightedORPOTrainer(PairedLogitsMixin, ORPOTrainer):
    """``ORPOTrainer`` with each pair's loss multiplied by its weight (in the gradient)."""

    _east_pref_function = "odds_ratio_loss"

    def _east_coefficients(self) -> tuple[float, float]:
        return -1.0, 1.0  # loss = nll - mean(beta * log sigmoid(log odds))

    def odds_ratio_loss(self, policy_chosen_logps: Any, policy_rejected_logps: Any) -> Any:
        return self._east_capture_pref(super().odds_ratio_loss(policy_chosen_logps, policy_rejected_logps))
