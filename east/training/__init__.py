"""Per-example weights for TRL's trainers: the machinery each objective's weighted trainer
(east.objectives.<name>.trainer: ``WeightedSFTTrainer``, ``WeightedDPOTrainer``, ...) is a thin
subclass of its TRL trainer with.

Each training example may carry a float ``weight`` column (EAST's f(h) of its question).
TRL's own dataset preparation, collators, loss code and metrics run unchanged; the
weights enter through the policy's per-token log-probabilities, which all three TRL
trainers compute with a fused LM head:

* **SFT** — per-example loss l_i = mean NLL over that example's completion tokens (prompt
  masked, final end-of-turn token included); the step loss is

      L = sum_i w_i * l_i / N

  where N counts the examples of the whole optimiser step (all micro-batches of the
  gradient-accumulation window, all ranks). So per-device batch size, accumulation steps
  and process count do not change the update. Row i's log-probs are scaled by a constant
  so that TRL's token-sum reduction yields exactly L (value and gradient). With all
  weights 1 this is a per-example mean, not TRL's token mean over the batch.
* **DPO / KTO** — an identity whose backward multiplies row i's gradient by w_i is applied
  to the policy's log-probs, and each micro-batch's loss is scaled by its share of the
  optimiser step. Every allowed loss type depends on the policy only through each
  example's own rows, so the step's gradient is exactly that of sum_i w_i * loss_i / N
  (DPO rows are [chosen; rejected]: both rows of pair i get w_i), uneven micro-batches
  included. TRL's logged ``loss`` stays its own unweighted value.

Logged beside TRL's metrics: ``loss_weighted`` (sum_i w_i * l_i / N of each optimiser step,
averaged over the steps since the last log: the loss the update descends) and
``weight_mean`` / ``weight_min`` / ``weight_max``.

Without a ``weight`` column every example weighs 1. SFT then trains on the per-example mean
(not TRL's token mean); DPO and KTO train like stock TRL except in uneven accumulation
windows, where stock TRL weighs the examples of a short micro-batch more (a lone example of
a [2, 1] window counts double) and these trainers weigh every example once.

**Canaries.** The weighting relies on TRL and transformers internals that can change
without an error. Each is asserted while training, and a broken one raises
:class:`TrainerAssumptionError` naming it instead of training with wrong weights: the
step's example count is set for every optimiser step (``Trainer.get_batch_samples``); the
weight column reaches every batch of a weighted dataset; the collated rows follow the
examples (DPO: ``[chosen; rejected]``); the policy's ``log_probs`` have one row per batch
row and pass through the model given to ``compute_loss``; TRL's loss equals the per-example
decomposition the weights rely on (SFT's ``sum / label_mask.sum()``, DPO's and KTO's mean of
a per-example loss vector); and the loss type is on an allowlist of types that keep
examples apart.
"""

from east.training.grad import GradWeightedMixin
from east.training.mixin import RowWeightedModel, ScaleGrad, WeightedMixin, close_enough
from east.training.weights import (
    WEIGHT,
    TrainerAssumptionError,
    WeightCollator,
    check_rows,
    token_ids,
    validate_weights,
)

__all__ = [
    "WEIGHT",
    "GradWeightedMixin",
    "RowWeightedModel",
    "ScaleGrad",
    "TrainerAssumptionError",
    "WeightCollator",
    "WeightedMixin",
    "check_rows",
    "close_enough",
    "token_ids",
    "validate_weights",
]
