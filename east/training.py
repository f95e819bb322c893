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

import contextlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

from east.selection import Objective

__all__ = [
    "WeightedDPOTrainer",
    "WeightedKTOTrainer",
    "WeightedSFTTrainer",
    "validate_weights",
]

WEIGHT = "weight"


def validate_weights(dataset: Any, name: str = "train_dataset") -> None:
    """Reject NaN, infinite or negative weights before any training, naming the row. (An
    iterable dataset cannot be read ahead: its weights are checked batch by batch.)"""
    if dataset is None or WEIGHT not in (getattr(dataset, "column_names", None) or []):
        return
    if not hasattr(dataset, "__len__"):
        return
    for i, w in enumerate(dataset[WEIGHT]):
        _check_weight(w, f"{name}: row {i}")


def _check_weight(w: Any, where: str) -> float:
    if w is None or isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
        raise ValueError(f"{where} has an invalid '{WEIGHT}' {w!r}; weights must be finite and >= 0")
    return float(w)


class _WeightCollator:
    """Wraps the collator TRL built: TRL's collators drop keys they do not know. Every weight
    is checked here too, so no dataset (an IterableDataset, one passed positionally) can
    bring a NaN or negative weight into a step."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [
            _check_weight(e.get(WEIGHT, 1.0), f"a training example ({_describe(e)})") for e in examples
        ]
        batch = self.inner([{k: v for k, v in e.items() if k != WEIGHT} for e in examples])
        batch[WEIGHT] = torch.tensor(weights, dtype=torch.float32)
        return batch

    def __getattr__(self, name: str) -> Any:  # TRL reads attributes of its collator
        if name.startswith("__") or name == "inner":  # copy / pickle probe before __init__ ran
            raise AttributeError(name)
        return getattr(self.inner, name)


def _describe(example: dict[str, Any]) -> str:
    text = repr({k: v for k, v in example.items() if k != WEIGHT})
    return text if len(text) <= 120 else text[:117] + "..."


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
        if name.startswith("__") or name == "_model":  # copy / pickle probe before __init__ ran
            raise AttributeError(name)
        return getattr(self._model, name)


class _WeightedMixin:
    """Shared plumbing: weight validation, the column through preparation and collation, the
    examples of each optimiser step (for exact per-step normalisation), and the weight
    statistics and weighted loss in the logs."""

    _east_unsupported: Callable[[Any], str | None] = staticmethod(lambda args: None)
    # Each objective normalises by the examples of the whole optimiser step itself.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, **kwargs: Any):
        # Bind to the parent's signature: TRL's trainers differ in their positional order
        # (DPO/KTO take ref_model second), and a dataset passed positionally must be checked.
        bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments
        reason = self._east_unsupported(bound.get("args"))
        if reason:
            raise ValueError(f"{type(self).__name__}: {reason}")
        validate_weights(bound.get("train_dataset"), "train_dataset")
        eval_dataset = bound.get("eval_dataset")
        for name, ds in (
            eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
        ):
            validate_weights(ds, name)
        super().__init__(*args, **kwargs)
        self.data_collator = _WeightCollator(self.data_collator)
        self._east_weights: list[torch.Tensor] = []
        self._east_weighted_losses: list[torch.Tensor] = []
        self._east_window_examples: int | None = None

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if WEIGHT not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHT]

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        """The micro-batches of one optimiser step; counts their examples over all ranks."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        local = torch.tensor(sum(_batch_examples(b) for b in batch_samples), device=device)
        if self.accelerator.num_processes > 1:
            local = self.accelerator.gather(local).sum()
        self._east_window_examples = int(local.item())
        # No token count: each objective normalises per example (see the module doc).
        return batch_samples, None

    def _window_share(self, batch_examples: int) -> float:
        """B / N_rank: this micro-batch's examples over the step's examples per rank (DDP then
        averages over ranks). 1 outside a training step (evaluation, direct calls)."""
        if not (self.model.training and self._east_window_examples):
            return 1.0
        return batch_examples * self.accelerator.num_processes / self._east_window_examples

    def _pop_weights(self, inputs: dict[str, Any], rows_per_example: int = 1) -> torch.Tensor:
        w = inputs.pop(WEIGHT, None)
        if w is None:
            w = torch.ones(_batch_rows(inputs) // rows_per_example)
        w = w.to(self.accelerator.device, torch.float32)
        if self.model.training:
            self._east_weights.append(self.accelerator.gather_for_metrics(w.detach()))
        return w

    def _record_weighted_loss(self, value: torch.Tensor | None) -> None:
        if value is not None and self.model.training:
            self._east_weighted_losses.append(self.accelerator.gather_for_metrics(value.detach().reshape(1)))

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> Any:
        # DPO/KTO precompute reference log-probs through the (wrapped) collator: not a model input.
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != WEIGHT})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._east_weights and self.model.training:
            w = torch.cat(self._east_weights).float()
            logs.update(weight_mean=w.mean().item(), weight_min=w.min().item(), weight_max=w.max().item())
            self._east_weights.clear()
        if self._east_weighted_losses and self.model.training:
            # mean over micro-batches of mean_i(w_i * loss_i): the loss EAST optimises, beside
            # TRL's unweighted `loss`.
            logs["loss_weighted"] = torch.cat(self._east_weighted_losses).float().mean().item()
            self._east_weighted_losses.clear()
        super().log(logs, start_time)


def _batch_examples(batch: dict[str, Any]) -> int:
    return len(batch[WEIGHT]) if WEIGHT in batch else _batch_rows(batch)


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

    def __init__(self, *args: Any, compute_loss_func: Any = None, **kwargs: Any):
        if compute_loss_func is not None:
            raise ValueError("WeightedSFTTrainer computes its own loss; compute_loss_func is not supported")
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = self._pop_weights(inputs)
        # sum_i w_i * l_i / N: N = the step's examples per rank in training, the batch otherwise.
        denominator = w.shape[0] / self._window_share(w.shape[0])

        def reweight(log_probs: torch.Tensor, outputs: Any) -> torch.Tensor:
            mask = outputs.label_mask.to(log_probs.dtype)
            per_example_tokens = mask.sum(dim=1).clamp(min=1)
            # TRL computes sum(-log_probs) / mask.sum(); this scale turns it into
            # sum_i w_i * mean_t(nll_it) / denominator.
            scale = w.to(log_probs.dtype) * mask.sum().clamp(min=1) / (per_example_tokens * denominator)
            return log_probs * scale.detach().unsqueeze(1)

        wrapped = _RowWeightedModel(model, reweight, rows=w.shape[0])
        out = super().compute_loss(wrapped, inputs, return_outputs=return_outputs, num_items_in_batch=None)
        loss = out[0] if return_outputs else out
        # This micro-batch's share of the step loss, as a per-micro-batch weighted mean.
        self._record_weighted_loss(loss / self._window_share(w.shape[0]))
        return out


# --------------------------------------------------------------------------- DPO / KTO


class _LossCapture(torch.Tensor):
    """Log-probs marked so that TRL's reduction of its per-example loss vector can be read.

    Tensors computed from these log-probs stay of this class (only the loss code runs on
    them: the model forward is already done), and the first ``mean`` / ``nanmean`` of a
    vector of ``rows`` elements that carries a gradient — TRL's ``per_sequence_loss.mean()``
    (DPO) or ``losses.nanmean()`` (KTO) — is recorded. Reading it costs nothing extra.
    """

    sink: list[torch.Tensor] | None = None
    rows = 0
    _REDUCTIONS = (torch.Tensor.mean, torch.Tensor.nanmean, torch.mean, torch.nanmean)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if (
            cls.sink is not None
            and not cls.sink
            and func in cls._REDUCTIONS
            and len(args) == 1
            and not kwargs
        ):
            x = args[0]
            if x.dim() == 1 and x.shape[0] == cls.rows and x.requires_grad:
                cls.sink.append(x.detach().as_subclass(torch.Tensor).clone())
        return super().__torch_function__(func, types, args, kwargs)


@contextlib.contextmanager
def _capture_per_example_loss(rows: int):
    sink: list[torch.Tensor] = []
    _LossCapture.sink, _LossCapture.rows = sink, rows
    try:
        yield sink
    finally:
        _LossCapture.sink = None


def _grad_weighted_model(model: Any, w: torch.Tensor, repeat: int) -> _RowWeightedModel:
    rows = w.repeat(repeat)

    def transform(log_probs: torch.Tensor, _: Any) -> torch.Tensor:
        return _ScaleGrad.apply(log_probs, rows).as_subclass(_LossCapture)

    return _RowWeightedModel(model, transform, rows=rows.shape[0])


def _plain(x: Any) -> Any:
    return x.as_subclass(torch.Tensor) if isinstance(x, _LossCapture) else x


class _GradWeightedMixin(_WeightedMixin):
    """DPO / KTO: row i's gradient times w_i, and the micro-batch loss times its share of the
    optimiser step, so that the step's gradient is exactly sum_i w_i * grad(loss_i) / N even
    when micro-batches are uneven ([2, 1]: stock TRL weighs the lone example double)."""

    _rows_per_example = 1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = self._pop_weights(inputs, rows_per_example=self._rows_per_example)
        order = self._loss_order(inputs, w)
        wrapped = _grad_weighted_model(model, w, repeat=self._rows_per_example)
        with _capture_per_example_loss(w.shape[0]) as captured:
            out = super().compute_loss(wrapped, inputs, return_outputs, num_items_in_batch)
        share = self._window_share(w.shape[0])
        if return_outputs:
            loss, outputs = out
            out = (_plain(loss) * share, outputs)
        else:
            out = _plain(out) * share
        if captured:
            self._record_weighted_loss((w[order].to(captured[0].dtype) * captured[0]).nanmean())
        return out

    def _loss_order(self, inputs: dict[str, Any], w: torch.Tensor) -> torch.Tensor:
        """Example index of each entry of TRL's per-example loss vector."""
        return torch.arange(w.shape[0], device=w.device)


#: DPO loss types that mix rows across the batch, where a per-pair weight is not exact.
DPO_REFUSED = {
    "aot": "sorts log-ratios across the batch",
    "aot_unpaired": "sorts log-ratios across the batch",
    "sft": "is a token mean over the whole batch",
}


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


class WeightedDPOTrainer(_GradWeightedMixin, DPOTrainer):
    """``DPOTrainer`` with each pair's loss multiplied by its weight (in the gradient)."""

    _east_unsupported = staticmethod(_dpo_unsupported)
    _rows_per_example = 2  # rows are [chosen; rejected]


def _kto_unsupported(args: KTOConfig | None) -> str | None:
    if args is None:
        return None
    if getattr(args, "padding_free", False):
        return "padding_free drops the 'weight' column; set padding_free=False"
    return None


class WeightedKTOTrainer(_GradWeightedMixin, KTOTrainer):
    """``KTOTrainer`` with each example's loss (desirable and undesirable alike) multiplied by
    its weight, on top of TRL's class-level ``desirable_weight`` / ``undesirable_weight``."""

    _east_unsupported = staticmethod(_kto_unsupported)

    def _loss_order(self, inputs: dict[str, Any], w: torch.Tensor) -> torch.Tensor:
        # TRL concatenates the desirable examples' losses, then the undesirable ones'.
        label = inputs["label"].to(torch.bool).reshape(-1)
        index = torch.arange(w.shape[0], device=w.device)
        return torch.cat([index[label.to(w.device)], index[~label.to(w.device)]])


#: Per objective (:class:`east.selection.Objective`): its weighted trainer and TRL config class.
TRAINERS: dict[Objective, tuple[type, type]] = {
    Objective.sft: (WeightedSFTTrainer, SFTConfig),
    Objective.dpo: (WeightedDPOTrainer, DPOConfig),
    Objective.kto: (WeightedKTOTrainer, KTOConfig),
}
