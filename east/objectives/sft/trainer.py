"""``WeightedSFTTrainer``: TRL's ``SFTTrainer`` whose loss is sum_i w_i * mean-NLL_i / N over
each optimiser step (east.training has the derivation and the canaries)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from trl import SFTConfig, SFTTrainer

from east.training import (
    RowWeightedModel,
    TrainerAssumptionError,
    WeightedMixin,
    check_rows,
    close_enough,
    token_ids,
)
from east.training.weights import has_weight_column

__all__ = ["SFTConfig", "WeightedSFTTrainer"]


def _sft_layout(examples: list[dict[str, Any]], batch: dict[str, Any]) -> None:
    if "input_ids" not in examples[0]:  # a vision-language dataset: collated from raw inputs
        return
    check_rows([token_ids(e["input_ids"]) for e in examples], batch)


def _sft_unsupported(args: SFTConfig | None) -> str | None:
    if args is None:
        return None
    if args.packing or getattr(args, "padding_free", False):
        return (
            "packing / padding-free merge examples into one row and drop the 'weight' column; "
            "set packing=False and padding_free=False"
        )
    if args.loss_type != "nll" or args.label_smoothing_factor:
        return f"per-example weighting needs loss_type='nll' without label smoothing (got {args.loss_type!r})"
    if args.completion_only_loss is False:
        return "per-example weighting is defined on completion tokens; keep completion_only_loss"
    return None


def _sft_unsupported_data(args: SFTConfig | None, train: Any, evals: dict[str, Any]) -> str | None:
    if args is not None and getattr(args, "eval_packing", None):
        weighted = [name for name, ds in evals.items() if has_weight_column(ds)]
        if weighted:
            return (
                f"eval_packing merges examples into one row and drops the 'weight' column of {weighted[0]}, "
                "so the eval loss would be unweighted; set eval_packing=False"
            )
    return None


@contextlib.contextmanager
def _no_compute_loss_func(trainer: Any):
    """transformers < 5.19 has no ``loss_is_scaled_for_ga``: TRL's shim
    (``trl/trainer/base_trainer.py``) then sets ``compute_loss_func`` to a string so that the
    Trainer does not divide by the accumulation steps, and SFT's ``compute_loss`` would call
    that string. The weighted SFT computes its own loss: hide it for the call."""
    saved = trainer.compute_loss_func
    trainer.compute_loss_func = None
    try:
        yield
    finally:
        trainer.compute_loss_func = saved


class WeightedSFTTrainer(WeightedMixin, SFTTrainer):
    """``SFTTrainer`` whose loss is sum_i w_i * mean-NLL_i / N over each optimiser step."""

    _east_unsupported = staticmethod(_sft_unsupported)
    _east_unsupported_data = staticmethod(_sft_unsupported_data)
    _east_layout = staticmethod(_sft_layout)

    def __init__(self, *args: Any, compute_loss_func: Any = None, **kwargs: Any):
        if compute_loss_func is not None:
            raise ValueError("WeightedSFTTrainer computes its own loss; compute_loss_func is not supported")
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = self._pop_weights(inputs)
        # sum_i w_i * l_i / D: D = the step's examples per rank in training, the batch otherwise.
        denominator = w.shape[0] / self._east_share(w.shape[0])
        seen: dict[str, torch.Tensor] = {}

        def reweight(log_probs: torch.Tensor, outputs: Any) -> torch.Tensor:
            mask = outputs.label_mask.to(log_probs.dtype)
            tokens = mask.sum(dim=1).clamp(min=1)
            # TRL computes sum(-log_probs) / mask.sum(); this scale turns it into
            # sum_i w_i * mean_t(nll_it) / D.
            scale = w.to(log_probs.dtype) * mask.sum().clamp(min=1) / (tokens * denominator)
            seen["nll"] = -(log_probs.detach().float() * mask.float()).sum(dim=1) / tokens.float()
            return log_probs * scale.detach().unsqueeze(1)

        wrapped = RowWeightedModel(model, reweight, rows=w.shape[0])
        with _no_compute_loss_func(self):
            out = self._east_wrapped_call(
                wrapped,
                lambda: super(WeightedSFTTrainer, self).compute_loss(
                    wrapped, inputs, return_outputs=return_outputs, num_items_in_batch=None
                ),
            )
        loss = out[0] if return_outputs else out
        if "nll" in seen:
            weighted_sum = (w * seen["nll"]).sum()
            if self.model.training and not close_enough(
                loss.detach(), weighted_sum / denominator, loss.dtype
            ):
                raise TrainerAssumptionError(
                    "SFTTrainer reducing the fused log_probs as sum(-log_probs) / label_mask.sum()",
                    f"its loss {float(loss):.6g} is not sum_i w_i l_i / D = {float(weighted_sum / denominator):.6g}",
                )
            self._east_record(w, weighted_sum)
        return out
