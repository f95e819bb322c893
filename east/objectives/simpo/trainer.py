"""``WeightedCPOTrainer``: TRL's experimental ``CPOTrainer`` (SimPO with
``loss_type="simpo"``) with pair i's loss, its preference loss plus ``cpo_alpha`` times the
mean NLL of its chosen completion, multiplied by its weight: east.training.paired has the
derivation and the canaries."""

from __future__ import annotations

from typing import Any

from trl.experimental.cpo import CPOConfig, CPOTrainer

from east.objectives.base import loss_type_problem
from east.objectives.simpo import CPO_ALLOWED
from east.training.paired import PairedLogitsMixin

__all__ = ["CPOConfig", "WeightedCPOTrainer"]


def _cpo_unsupported(args: CPOConfig | None) -> str | None:
    return None if args is None else loss_type_problem(args.loss_type, CPO_ALLOWED)


class WeightedCPOTrainer(PairedLogitsMixin, CPOTrainer):
    """``CPOTrainer`` with each pair's loss multiplied by its weight (in the gradient)."""

    _east_unsupported = staticmethod(_cpo_unsupported)
    _east_pref_function = "cpo_loss"

    def _east_coefficients(self) -> tuple[float, float]:
        return 1.0, float(self.cpo_alpha)  # loss = mean(cpo loss) + cpo_alpha * nll

    def cpo_loss(self, policy_chosen_logps: Any, policy_rejected_logps: Any) -> Any:
        return self._east_capture_pref(super().cpo_loss(policy_chosen_logps, policy_rejected_logps))
