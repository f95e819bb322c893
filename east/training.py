"""Per-example weighted SFT, DPO and KTO: thin subclasses of TRL's trainers.

Each training example may carry a float ``weight`` column (EAST's f(h) of its question).
TRL's own dataset preparation, collators, loss code and metrics run unchanged; the
weights enter through the policy's per-token log-probabilities, which all three TRL 1.16
trainers compute with a fused LM head:

* **SFT** — per-example loss = mean NLL over that example's completion tokens (prompt
  masked, final end-of-turn token included); the step loss is

      L = sum_i w_i * l_i / N

  where N counts the examples of the whole optimiser step (all micro-batches of the
  gradient-accumulation window, all ranks). So per-device batch size, accumulation steps
  and process count do not change the update. Row i's log-probs are scaled by a constant
  so that TRL's token-sum reduction yields exactly L (value and gradient). With all
  weights 1 this is a per-example mean, not TRL's token mean over the batch.
* **DPO / KTO** — an identity whose backward multiplies row i's gradient by w_i is applied
  to the policy's log-probs. Every supported loss type depends on the policy only
  through each example's own rows, so the gradient is exactly that of mean_i(w_i * loss_i)
  (DPO rows are [chosen; rejected]: both rows of pair i get w_i). TRL's logged ``loss``
  stays the unweighted mean; ``weight_mean/min/max`` are logged beside it. Loss types
  that mix rows across the batch are refused.

Without a ``weight`` column every example weighs 1 and DPO/KTO train exactly like stock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

__all__ = [
    "WeightedDPOTrainer",
    "WeightedKTOTrainer",
    "WeightedSFTTrainer",
    "validate_weights",
]

WEIGHT = "weight"


def validate_weights(dataset: Any, name: str = "train_dataset") -> None:
    """Reject NaN, infinite or negative weights before any training, naming the row."""
    if dataset is None or WEIGHT not in (getattr(dataset, "column_names", None) or []):
        return
    for i, w in enumerate(dataset[WEIGHT]):
        if w is None or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(
                f"{name}: row {i} has an invalid '{WEIGHT}' {w!r}; weights must be finite and >= 0"
            )


class _WeightCollator:
    """Wraps the collator TRL built: TRL's collators drop keys they do not know."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [float(e.get(WEIGHT, 1.0)) for e in examples]
        batch = self.inner([{k: v for k, v in e.items() if k != WEIGHT} for e in examples])
        batch[WEIGHT] = torch.tensor(weights, dtype=torch.float32)
        return batch

    def __getattr__(self, name: str) -> Any:  # TRL reads attributes of its collator
        return getattr(self.inner, name)


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies row i of the gradient by scale[i]."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1))), None


class _RowWeightedModel:
    """Calls the model and rewrites ``outputs.log_probs`` of the calls whose rows match."""

    def __init__(self, model: Any, transform: Callable[[torch.Tensor, Any], torch.Tensor], rows: int):
        self._model, self._transform, self._rows = model, transform, rows

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self._model(*args, **kwargs)
        log_probs = getattr(outputs, "log_probs", None)
        if log_probs is not None and log_probs.shape[0] == self._rows:
            outputs.log_probs = self._transform(log_probs, outputs)
        return outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class _WeightedMixin:
    """Shared plumbing: weight validation, the column through preparation and collation,
    and the weight statistics in the logs."""

    _east_unsupported: Callable[[Any], str | None] = staticmethod(lambda args: None)

    def __init__(self, *args: Any, **kwargs: Any):
        trainer_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        reason = self._east_unsupported(trainer_args)
        if reason:
            raise ValueError(f"{type(self).__name__}: {reason}")
        validate_weights(kwargs.get("train_dataset"), "train_dataset")
        eval_dataset = kwargs.get("eval_dataset")
        for name, ds in (
            eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
        ):
            validate_weights(ds, name)
        super().__init__(*args, **kwargs)
        self.data_collator = _WeightCollator(self.data_collator)
        self._east_weights: list[torch.Tensor] = []

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if WEIGHT not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHT]

    def _pop_weights(self, inputs: dict[str, Any], rows_per_example: int = 1) -> torch.Tensor:
        w = inputs.pop(WEIGHT, None)
        if w is None:
            w = torch.ones(_batch_rows(inputs) // rows_per_example)
        w = w.to(self.accelerator.device, torch.float32)
        if self.model.training:
            self._east_weights.append(self.accelerator.gather_for_metrics(w.detach()))
        return w

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> Any:
        # DPO/KTO precompute reference log-probs through the (wrapped) collator: not a model input.
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != WEIGHT})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._east_weights and self.model.training:
            w = torch.cat(self._east_weights).float()
            logs.update(weight_mean=w.mean().item(), weight_min=w.min().item(), weight_max=w.max().item())
            self._east_weights.clear()
        super().log(logs, start_time)


def _batch_rows(inputs: dict[str, Any]) -> int:
    for key in ("input_ids", "prompt_ids", "completion_ids"):
        if key in inputs:
            return inputs[key].shape[0]
    raise KeyError(f"cannot tell the batch size from keys {sorted(inputs)}")


# --------------------------------------------------------------------------- SFT


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


class WeightedSFTTrainer(_WeightedMixin, SFTTrainer):
    """``SFTTrainer`` whose loss is sum_i w_i * mean-NLL_i / N over each optimiser step."""

    _east_unsupported = staticmethod(_sft_unsupported)
    # The loss is divided by the examples of the whole accumulation window (see module doc).
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, compute_loss_func: Any = None, **kwargs: Any):
        if compute_loss_func is not None:
            raise ValueError("WeightedSFTTrainer computes its own loss; compute_loss_func is not supported")
        super().__init__(*args, **kwargs)
        self._east_window_examples: int | None = None

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        local = torch.tensor(sum(_batch_rows(b) for b in batch_samples), device=device)
        if self.accelerator.num_processes > 1:
            local = self.accelerator.gather(local).sum()
        self._east_window_examples = int(local.item())
        # TRL then divides its token sum by the micro-batch's own label count (see compute_loss).
        return batch_samples, None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = self._pop_weights(inputs)
        if self.model.training and self._east_window_examples:
            # Divided by the window's examples already (loss_is_scaled_for_ga), but DDP still
            # averages gradients over ranks: undo that.
            denominator = self._east_window_examples / self.accelerator.num_processes
        else:  # evaluation: a per-batch weighted mean
            denominator = float(w.shape[0])

        def reweight(log_probs: torch.Tensor, outputs: Any) -> torch.Tensor:
            mask = outputs.label_mask.to(log_probs.dtype)
            per_example_tokens = mask.sum(dim=1).clamp(min=1)
            # TRL computes sum(-log_probs) / mask.sum(); this scale turns it into
            # sum_i w_i * mean_t(nll_it) / denominator.
            scale = w.to(log_probs.dtype) * mask.sum().clamp(min=1) / (per_example_tokens * denominator)
            return log_probs * scale.detach().unsqueeze(1)

        wrapped = _RowWeightedModel(model, reweight, rows=w.shape[0])
        return super().compute_loss(wrapped, inputs, return_outputs=return_outputs, num_items_in_batch=None)


# --------------------------------------------------------------------------- DPO / KTO


def _grad_weighted_model(model: Any, w: torch.Tensor, repeat: int) -> _RowWeightedModel:
    rows = w.repeat(repeat)
    return _RowWeightedModel(model, lambda lp, _: _ScaleGrad.apply(lp, rows), rows=rows.shape[0])


#: DPO loss types that mix rows across the batch, where a per-pair weight is not exact.
DPO_REFUSED = {"aot": "sorts log-ratios across the batch", "aot_unpaired": "sorts log-ratios across the batch",
               "sft": "is a token mean over the whole batch"}  # fmt: skip


def _dpo_unsupported(args: DPOConfig | None) -> str | None:
    if args is None:
        return None
    types = args.loss_type if isinstance(args.loss_type, list) else [args.loss_type]
    for t in types:
        if t in DPO_REFUSED:
            return f"loss_type {t!r} {DPO_REFUSED[t]}, so a per-pair weight is not exact; use e.g. 'sigmoid'"
    if getattr(args, "padding_free", False):
        return "padding_free drops the 'weight' column; set padding_free=False"
    return None


class WeightedDPOTrainer(_WeightedMixin, DPOTrainer):
    """``DPOTrainer`` with each pair's loss multiplied by its weight (in the gradient)."""

    _east_unsupported = staticmethod(_dpo_unsupported)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = self._pop_weights(inputs, rows_per_example=2)
        wrapped = _grad_weighted_model(model, w, repeat=2)  # rows are [chosen; rejected]
        return super().compute_loss(wrapped, inputs, return_outputs, num_items_in_batch)


def _kto_unsupported(args: KTOConfig | None) -> str | None:
    if args is None:
        return None
    if getattr(args, "padding_free", False):
        return "padding_free drops the 'weight' column; set padding_free=False"
    return None


class WeightedKTOTrainer(_WeightedMixin, KTOTrainer):
    """``KTOTrainer`` with each example's loss (desirable and undesirable alike) multiplied by
    its weight, on top of TRL's class-level ``desirable_weight`` / ``undesirable_weight``."""

    _east_unsupported = staticmethod(_kto_unsupported)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = self._pop_weights(inputs)
        wrapped = _grad_weighted_model(model, w, repeat=1)
        return super().compute_loss(wrapped, inputs, return_outputs, num_items_in_batch)


TRAINERS: dict[str, tuple[type, type]] = {
    "sft": (WeightedSFTTrainer, SFTConfig),
    "dpo": (WeightedDPOTrainer, DPOConfig),
    "kto": (WeightedKTOTrainer, KTOConfig),
}
