"""The per-example weighting every weighted trainer shares: the weight column through TRL's
preparation and collation, the examples of each optimiser step (exact per-step
normalisation), the weighted loss and weight statistics in the logs, and the canaries (part
of east.training)."""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from east.training.weights import (
    WEIGHT,
    TrainerAssumptionError,
    WeightCollator,
    has_weight_column,
    validate_weights,
    weight_value,
)

__all__ = ["RowWeightedModel", "ScaleGrad", "WeightedMixin", "close_enough"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model wrapper


class ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass; multiplies row i of the gradient by scale[i]."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype).view(-1, *([1] * (grad.dim() - 1))), None


class RowWeightedModel:
    """Calls the model and rewrites ``outputs.<field>`` (``log_probs``: TRL's fused LM head;
    ``logits``: trainers that read the logits) of every forward that carries a gradient (a forward under ``no_grad``, such as KTO's KL estimate, has no gradient to
    weigh); every fused forward must have one row per batch row (canary). Counts the
    forwards it rewrote."""

    def __init__(
        self,
        model: Any,
        transform: Callable[[torch.Tensor, Any], torch.Tensor],
        rows: int,
        field: str = "log_probs",
    ):
        self._model, self._transform, self._rows, self._field = model, transform, rows, field
        self.rewritten = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self._model(*args, **kwargs)
        values = getattr(outputs, self._field, None)
        if values is not None:
            if values.shape[0] != self._rows:
                raise TrainerAssumptionError(
                    f"the policy's {self._field} having one row per batch row",
                    f"a forward returned {values.shape[0]} rows for a batch of {self._rows}",
                )
            if values.requires_grad:
                setattr(outputs, self._field, self._transform(values, outputs))
                self.rewritten += 1
        return outputs

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_model":  # copy / pickle probe before __init__ ran
            raise AttributeError(name)
        return getattr(self._model, name)


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class _Window:
    """One optimiser step: its examples over all ranks, this rank's not yet through
    ``compute_loss``, and sum_i w_i * l_i gathered so far."""

    total: int
    left: int
    weighted_loss: torch.Tensor | float = 0.0


@dataclass
class _LogWindow:
    """What the next log reports: each finished step's sum_i w_i l_i / N, and the weights."""

    step_losses: list[torch.Tensor] = field(default_factory=list)
    weight_stats: list[torch.Tensor] = field(default_factory=list)  # rows [sum, count, min, max]


def _parallelism_problem(config: Any) -> str | None:
    if config is None:
        return None
    if getattr(config, "sp_enabled", False) or getattr(config, "cp_enabled", False):
        return (
            "sequence / context parallelism shards each example's tokens over ranks, and the "
            "weights are per example; train without sp_size / cp_size"
        )
    if getattr(config, "tp_size", 1) > 1:
        return (
            "tensor parallelism replicates batches over ranks, which the step's example count does not model"
        )
    return None


class WeightedMixin:
    """Shared plumbing: weight validation, the column through preparation and collation, the
    examples of each optimiser step (exact per-step normalisation), the weighted loss and the
    weight statistics in the logs, and the canaries."""

    _east_unsupported: Callable[[Any], str | None] = staticmethod(lambda args: None)
    _east_layout: Callable[[list[dict[str, Any]], dict[str, Any]], None] | None = None
    _east_rows_per_example = 1
    # Each objective normalises by the examples of the whole optimiser step itself.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, **kwargs: Any):
        # Bind to the parent's signature: TRL's trainers differ in their positional order
        # (DPO/KTO take ref_model second), and a dataset passed positionally must be checked.
        bound = inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments
        train_dataset, eval_dataset = bound.get("train_dataset"), bound.get("eval_dataset")
        eval_sets = (
            eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]
        )
        reason = self._east_unsupported(bound.get("args")) or self._east_unsupported_data(
            bound.get("args"), train_dataset, dict(eval_sets)
        )
        if reason:
            raise ValueError(f"{type(self).__name__}: {reason}")
        validate_weights(train_dataset, "train_dataset")
        for name, ds in eval_sets:
            validate_weights(ds, name)
        super().__init__(*args, **kwargs)
        reason = _parallelism_problem(getattr(self.accelerator, "parallelism_config", None))
        if reason:
            raise ValueError(f"{type(self).__name__}: {reason}")
        self._east_raw_train = train_dataset
        #: Whether batches must carry weights, per mode (None: unknown until the data is read).
        self._east_expect = {
            "train": has_weight_column(self.train_dataset),
            "eval": any(has_weight_column(ds) for _, ds in eval_sets),
        }
        self.data_collator = WeightCollator(self.data_collator, type(self)._east_layout)
        self._east_window: _Window | None = None
        self._east_log = _LogWindow()
        self._east_in_train = False

    @staticmethod
    def _east_unsupported_data(args: Any, train: Any, evals: dict[str, Any]) -> str | None:
        return None

    @staticmethod
    def _east_batch_rows(inputs: dict[str, Any]) -> int:
        return batch_rows(inputs)

    # ------------------------------------------------------------ data

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if WEIGHT not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHT]

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._east_check_iterable()
        self._east_in_train = True
        try:
            return super().train(*args, **kwargs)
        finally:
            self._east_in_train = False
            self._east_window = None

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """A resume loads the checkpoint with ``strict=False``: a tied output layer loaded
        through its tie is not reported missing (:func:`loaded_through_tie`)."""
        model = getattr(self.accelerator, "unwrap_model", lambda m: m)(self.model)
        missing = [k for k in load_result.missing_keys if not loaded_through_tie(model, k)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def _east_check_iterable(self) -> None:
        weighted = check_iterable_weights(self._east_raw_train, self.args, self.accelerator.num_processes)
        if weighted is not None:
            self._east_expect["train"] = weighted

    def _pop_weights(self, inputs: dict[str, Any]) -> torch.Tensor:
        w = inputs.pop(WEIGHT, None)
        rows = self._east_batch_rows(inputs)
        mode = "train" if self.model.training else "eval"
        if w is None:
            if self._east_expect.get(mode):
                raise TrainerAssumptionError(
                    "the 'weight' column reaching every batch",
                    f"the {mode} dataset has a '{WEIGHT}' column but a batch arrived without it "
                    "(dropped by column removal or by a collator)",
                )
            w = torch.ones(rows // self._east_rows_per_example)
        if w.shape[0] * self._east_rows_per_example != rows:
            raise TrainerAssumptionError(
                f"{self._east_rows_per_example} batch row(s) per example",
                f"{w.shape[0]} weights for {rows} rows",
            )
        return w.to(self.accelerator.device, torch.float32)

    # ------------------------------------------------------------ the optimiser step

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        """The micro-batches of one optimiser step; counts their examples over all ranks."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._east_close_window()
        local = sum(
            len(b[WEIGHT]) if WEIGHT in b else self._east_batch_rows(b) // self._east_rows_per_example
            for b in batch_samples
        )
        total = torch.tensor(local, device=device)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        self._east_window = _Window(total=int(total.item()), left=local)
        # No token count: each objective normalises per example (see the module doc).
        return batch_samples, None

    def _east_close_window(self) -> None:
        win = self._east_window
        if win is None:
            return
        if win.left:
            raise TrainerAssumptionError(
                "every micro-batch of an optimiser step going through compute_loss",
                f"{win.left} example(s) fetched for the step were never trained on",
            )
        if win.total:
            loss = win.weighted_loss
            self._east_log.step_losses.append(
                torch.as_tensor(loss, dtype=torch.float32).reshape(1) / win.total
            )
        self._east_window = None

    def _east_share(self, batch_examples: int) -> float:
        """B / N_rank: this micro-batch's examples over the step's examples per rank (DDP then
        averages over ranks). 1 outside the training loop (evaluation, direct calls)."""
        if not (self.model.training and self._east_in_train):
            return 1.0
        win = self._east_window
        if win is None or win.left < batch_examples:
            raise TrainerAssumptionError(
                "Trainer.get_batch_samples being called once per optimiser step",
                "a training micro-batch arrived outside the examples counted for its step, so the "
                "loss would not be divided by the step's examples",
            )
        win.left -= batch_examples
        return batch_examples * self.accelerator.num_processes / win.total

    def _east_record(self, w: torch.Tensor, weighted_sum: torch.Tensor) -> None:
        """This micro-batch's weights and sum_i w_i l_i, gathered over ranks (fixed-size, so
        ranks with batches of different sizes gather alike)."""
        if not (self.model.training and self._east_in_train and self._east_window is not None):
            return
        stats = torch.stack(
            [w.sum(), torch.tensor(float(w.numel()), device=w.device), w.min(), w.max(), weighted_sum.float()]
        ).detach()
        if self.accelerator.num_processes > 1:
            every = self.accelerator.gather(stats.reshape(1, 5)).reshape(-1, 5)
            stats = torch.stack(
                [
                    every[:, 0].sum(),
                    every[:, 1].sum(),
                    every[:, 2].min(),
                    every[:, 3].max(),
                    every[:, 4].sum(),
                ]
            )
        self._east_log.weight_stats.append(stats[:4])
        self._east_window.weighted_loss = self._east_window.weighted_loss + stats[4]

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> Any:
        # DPO/KTO precompute reference log-probs through the (wrapped) collator: not a model input.
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != WEIGHT})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            win = self._east_window
            if win is not None and not win.left:  # logged after the optimiser step
                self._east_close_window()
            if self._east_log.weight_stats:
                s = torch.stack(self._east_log.weight_stats)
                logs.update(
                    weight_mean=(s[:, 0].sum() / s[:, 1].sum()).item(),
                    weight_min=s[:, 2].min().item(),
                    weight_max=s[:, 3].max().item(),
                )
            if self._east_log.step_losses:
                # sum_i w_i * l_i / N per optimiser step, averaged over the steps since the
                # last log: the loss the updates descend, beside TRL's unweighted `loss`.
                logs["loss_weighted"] = torch.cat(self._east_log.step_losses).mean().item()
            self._east_log = _LogWindow()
        super().log(logs, start_time)

    def _east_wrapped_call(self, wrapped: RowWeightedModel, call: Callable[[], Any]) -> Any:
        out = call()
        if self.model.training and wrapped.rewritten == 0:
            raise TrainerAssumptionError(
                "the policy forward going through the model given to compute_loss",
                "compute_loss never called it, so no weight reached the loss",
            )
        return out


def batch_rows(inputs: dict[str, Any]) -> int:
    """The rows a collated batch feeds the policy: TRL 1.x's trainers key them by these names."""
    for key in ("input_ids", "prompt_ids", "completion_ids"):
        if key in inputs:
            return inputs[key].shape[0]
    raise KeyError(f"cannot tell the batch size from keys {sorted(inputs)}")


def close_enough(value: torch.Tensor, intended: torch.Tensor, dtype: torch.dtype) -> bool:
    """``value`` is ``intended`` up to the rounding of ``dtype`` (bf16 / fp16 sums round more)."""
    rtol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    a, b = float(value), float(intended)
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b))


def loaded_through_tie(model: Any, key: str) -> bool:
    """Whether ``key``, reported missing by a resume's ``strict=False`` load, was loaded through
    its tie: a tied output layer (``lm_head.weight`` = the input embedding, which safetensors
    stores once) is "missing", and HF Trainer warns unless the key is in
    ``_keys_to_ignore_on_save`` (transformers/trainer.py), which transformers 5 leaves empty for
    ties. A key whose parameter is the very tensor of its tie's source was loaded."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    try:
        return key in tied and model.get_parameter(key) is model.get_parameter(tied[key])
    except AttributeError:
        return False


def check_iterable_weights(raw: Any, args: Any, processes: int) -> bool | None:
    """An iterable train dataset cannot be validated up front like a map-style one: read the
    weights of the rows the run will train on (the first max_steps x global batch of the
    stream) before any step, so a bad weight is refused before the first update. Rows beyond
    (shuffle buffers, later epochs) are checked batch by batch, before their step. Returns
    whether the rows carry weights (None: not an iterable dataset, or nothing read)."""
    from datasets import IterableDataset

    if not isinstance(raw, IterableDataset) or args.max_steps <= 0:
        return None
    limit = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
    weighted = None
    n = 0
    for n, row in enumerate(itertools.islice(raw, limit), 1):
        has = WEIGHT in row and row[WEIGHT] is not None
        if weighted is None:
            weighted = has
        elif has != weighted:
            raise ValueError(
                f"train_dataset: row {n - 1} {'has' if has else 'has no'} '{WEIGHT}', unlike row 0"
            )
        if has:
            weight_value(row[WEIGHT], f"train_dataset: row {n - 1}")
    log.info("checked the '%s' of the first %d rows of the iterable train dataset", WEIGHT, n)
    return weighted
