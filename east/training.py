"""Per-example weighted SFT, DPO and KTO: thin subclasses of TRL's trainers.

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

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

__all__ = [
    "TrainerAssumptionError",
    "WeightedDPOTrainer",
    "WeightedKTOTrainer",
    "WeightedSFTTrainer",
    "validate_weights",
]

log = logging.getLogger(__name__)

WEIGHT = "weight"
#: The largest weight a float32 step can hold: a larger one trains as infinity.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class TrainerAssumptionError(RuntimeError):
    """A TRL / transformers internal that the per-example weighting relies on no longer holds:
    training on would silently use wrong weights."""

    def __init__(self, assumption: str, detail: str):
        import transformers
        import trl

        super().__init__(
            f"east.training relies on {assumption}, which no longer holds (trl {trl.__version__}, "
            f"transformers {transformers.__version__}): {detail}. The per-example weights would be "
            "silently wrong; use the versions setup.cfg allows (trl 1.16) or report it"
        )
        self.assumption = assumption


# --------------------------------------------------------------------------- weights


def _weight_value(w: Any, where: str | Callable[[], str]) -> float:
    """``w`` as a float, or a ValueError naming ``where`` (a callable is only called on an
    error): finite, >= 0, and finite in float32."""
    # A 0-d tensor (a torch-format dataset) or a NumPy scalar holds one number.
    if hasattr(w, "dtype") and getattr(w, "shape", None) in ((), (1,), torch.Size([])) and hasattr(w, "item"):
        w = w.item()
    if w is None or isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
        where = where() if callable(where) else where
        raise ValueError(f"{where} has an invalid '{WEIGHT}' {w!r}; weights must be finite and >= 0")
    if w > FLOAT32_MAX:
        where = where() if callable(where) else where
        raise ValueError(
            f"{where} has '{WEIGHT}' {w!r}, above float32's largest value ({FLOAT32_MAX:.4g}): training "
            "computes in float32 or less, where it is infinite"
        )
    return float(w)


def validate_weights(dataset: Any, name: str = "train_dataset") -> None:
    """Reject NaN, infinite, negative or float32-overflowing weights before any training,
    naming the row. (An iterable dataset cannot be indexed: see ``train``.)"""
    if dataset is None or not hasattr(dataset, "__len__") or not _has_weight_column(dataset):
        return
    column = dataset[WEIGHT]
    if isinstance(column, torch.Tensor):  # a torch-format dataset
        column = column.reshape(-1).tolist() if column.dim() <= 1 else list(column)
    for i, w in enumerate(column):
        _weight_value(w, f"{name}: row {i}")


def _has_weight_column(dataset: Any) -> bool | None:
    """Whether ``dataset`` has a weight column; None when it cannot tell (an iterable
    dataset whose features are unknown, a plain torch dataset)."""
    if dataset is None:
        return False
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        return None
    return WEIGHT in columns


# --------------------------------------------------------------------------- collation


class _WeightCollator:
    """Wraps the collator TRL built (TRL's collators drop keys they do not know): the batch
    gets a float ``weight`` tensor when its examples carry weights (all of them, or a
    ValueError), each checked as it arrives; ``layout`` checks that the collated rows follow
    the examples."""

    def __init__(
        self,
        inner: Callable[[list[dict[str, Any]]], dict[str, Any]],
        layout: Callable[[list[dict[str, Any]], dict[str, Any]], None] | None = None,
    ):
        self.inner = inner
        self.layout = layout

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weighted = [WEIGHT in e for e in examples]
        if any(weighted) and not all(weighted):
            missing = weighted.index(False)
            raise ValueError(
                f"{weighted.count(False)} of {len(examples)} examples of a batch have no '{WEIGHT}' "
                f"(e.g. {_describe(examples[missing])}); give every example a weight, or none"
            )
        weights = (
            [_weight_value(e[WEIGHT], lambda e=e: f"a training example ({_describe(e)})") for e in examples]
            if examples and all(weighted)
            else None
        )
        stripped = [{k: v for k, v in e.items() if k != WEIGHT} for e in examples]
        batch = self.inner(stripped)
        if self.layout is not None:
            self.layout(stripped, batch)
        if weights is not None:
            batch[WEIGHT] = torch.tensor(weights, dtype=torch.float32)
        return batch

    def __getattr__(self, name: str) -> Any:  # TRL reads attributes of its collator
        if name.startswith("__") or name in ("inner", "layout"):  # copy / pickle probe before __init__
            raise AttributeError(name)
        return getattr(self.inner, name)


def _describe(example: dict[str, Any]) -> str:
    text = repr({k: v for k, v in example.items() if k != WEIGHT})
    return text if len(text) <= 120 else text[:117] + "..."


def _check_rows(expected: list[list[int]], batch: dict[str, Any], prefix: str = "") -> None:
    """Each collated row's attended tokens are its example's sequence (or a truncation of it,
    kept from the start or the end): the rows follow the examples in order."""
    ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
    if ids.shape[0] != len(expected):
        raise TrainerAssumptionError(
            "one collated row per example sequence",
            f"{len(expected)} sequences gave {ids.shape[0]} rows",
        )
    for r, want in enumerate(expected):
        got = ids[r][mask[r].bool()].tolist()
        n = len(got)
        if n and got != want[:n] and got != want[-n:]:
            raise TrainerAssumptionError(
                "collated rows in the order of the examples",
                f"row {r} holds {got[:8]}... where {want[:8]}... was expected",
            )


def _ids(x: Any) -> list[int]:
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)


def _sft_layout(examples: list[dict[str, Any]], batch: dict[str, Any]) -> None:
    if "input_ids" not in examples[0]:  # a vision-language dataset: collated from raw inputs
        return
    _check_rows([_ids(e["input_ids"]) for e in examples], batch)


def _dpo_layout(examples: list[dict[str, Any]], batch: dict[str, Any]) -> None:
    if "prompt_ids" not in examples[0]:
        return
    chosen = [_ids(e["prompt_ids"]) + _ids(e["chosen_ids"]) for e in examples]
    rejected = [_ids(e["prompt_ids"]) + _ids(e["rejected_ids"]) for e in examples]
    _check_rows(chosen + rejected, batch)  # [chosen; rejected]: pair i is rows i and B + i


def _kto_layout(examples: list[dict[str, Any]], batch: dict[str, Any]) -> None:
    if "prompt_ids" not in examples[0]:
        return
    _check_rows([_ids(e["prompt_ids"]) + _ids(e["completion_ids"]) for e in examples], batch)


# --------------------------------------------------------------------------- model wrapper


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
    """Calls the model and rewrites ``outputs.log_probs`` of every fused forward that carries
    a gradient (a forward under ``no_grad``, such as KTO's KL estimate, has no gradient to
    weigh); every fused forward must have one row per batch row (canary). Counts the
    forwards it rewrote."""

    def __init__(self, model: Any, transform: Callable[[torch.Tensor, Any], torch.Tensor], rows: int):
        self._model, self._transform, self._rows = model, transform, rows
        self.rewritten = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self._model(*args, **kwargs)
        log_probs = getattr(outputs, "log_probs", None)
        if log_probs is not None:
            if log_probs.shape[0] != self._rows:
                raise TrainerAssumptionError(
                    "the policy's log_probs having one row per batch row",
                    f"a forward returned {log_probs.shape[0]} rows for a batch of {self._rows}",
                )
            if log_probs.requires_grad:
                outputs.log_probs = self._transform(log_probs, outputs)
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


class _WeightedMixin:
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
            "train": _has_weight_column(self.train_dataset),
            "eval": any(_has_weight_column(ds) for _, ds in eval_sets),
        }
        self.data_collator = _WeightCollator(self.data_collator, type(self)._east_layout)
        self._east_window: _Window | None = None
        self._east_log = _LogWindow()
        self._east_in_train = False

    @staticmethod
    def _east_unsupported_data(args: Any, train: Any, evals: dict[str, Any]) -> str | None:
        return None

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
        """A resume loads the checkpoint with ``strict=False``; a tied output layer
        (``lm_head.weight`` = the input embedding, which safetensors stores once) is then
        "missing", and HF Trainer warns unless the key is in ``_keys_to_ignore_on_save``
        (transformers/trainer.py), which transformers 5 leaves empty for ties. A key whose
        parameter is the very tensor of its tie's source was loaded: it is not reported."""
        model = getattr(self.accelerator, "unwrap_model", lambda m: m)(self.model)
        tied = getattr(model, "all_tied_weights_keys", None) or {}

        def loaded_through_tie(key: str) -> bool:
            try:
                return key in tied and model.get_parameter(key) is model.get_parameter(tied[key])
            except AttributeError:
                return False

        missing = [k for k in load_result.missing_keys if not loaded_through_tie(k)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def _east_check_iterable(self) -> None:
        """An iterable train dataset cannot be validated up front like a map-style one: read
        the weights of the rows the run will train on (the first max_steps x global batch of
        the stream) before any step, so a bad weight is refused before the first update.
        Rows beyond (shuffle buffers, later epochs) are checked batch by batch, before their
        step."""
        from datasets import IterableDataset

        raw = self._east_raw_train
        if not isinstance(raw, IterableDataset) or self.args.max_steps <= 0:
            return
        limit = (
            self.args.max_steps
            * self.args.per_device_train_batch_size
            * self.args.gradient_accumulation_steps
            * self.accelerator.num_processes
        )
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
                _weight_value(row[WEIGHT], f"train_dataset: row {n - 1}")
        if weighted is not None:
            self._east_expect["train"] = weighted
        log.info("checked the '%s' of the first %d rows of the iterable train dataset", WEIGHT, n)

    def _pop_weights(self, inputs: dict[str, Any]) -> torch.Tensor:
        w = inputs.pop(WEIGHT, None)
        rows = _batch_rows(inputs)
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
        local = sum(_batch_examples(b, self._east_rows_per_example) for b in batch_samples)
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

    def _east_wrapped_call(self, wrapped: _RowWeightedModel, call: Callable[[], Any]) -> Any:
        out = call()
        if self.model.training and wrapped.rewritten == 0:
            raise TrainerAssumptionError(
                "the policy forward (fused LM head, log_probs) going through the model given to compute_loss",
                "compute_loss never called it, so no weight reached the loss",
            )
        return out


def _batch_examples(batch: dict[str, Any], rows_per_example: int) -> int:
    return len(batch[WEIGHT]) if WEIGHT in batch else _batch_rows(batch) // rows_per_example


def _batch_rows(inputs: dict[str, Any]) -> int:
    for key in ("input_ids", "prompt_ids", "completion_ids"):
        if key in inputs:
            return inputs[key].shape[0]
    raise KeyError(f"cannot tell the batch size from keys {sorted(inputs)}")


def _close(value: torch.Tensor, intended: torch.Tensor, dtype: torch.dtype) -> bool:
    """``value`` is ``intended`` up to the rounding of ``dtype`` (bf16 / fp16 sums round more)."""
    rtol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    a, b = float(value), float(intended)
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b))


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


def _sft_unsupported_data(args: SFTConfig | None, train: Any, evals: dict[str, Any]) -> str | None:
    if args is not None and getattr(args, "eval_packing", None):
        weighted = [name for name, ds in evals.items() if _has_weight_column(ds)]
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


class WeightedSFTTrainer(_WeightedMixin, SFTTrainer):
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

        wrapped = _RowWeightedModel(model, reweight, rows=w.shape[0])
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
            if self.model.training and not _close(loss.detach(), weighted_sum / denominator, loss.dtype):
                raise TrainerAssumptionError(
                    "SFTTrainer reducing the fused log_probs as sum(-log_probs) / label_mask.sum()",
                    f"its loss {float(loss):.6g} is not sum_i w_i l_i / D = {float(weighted_sum / denominator):.6g}",
                )
            self._east_record(w, weighted_sum)
        return out


# --------------------------------------------------------------------------- DPO / KTO


class _LossCapture(torch.Tensor):
    """Log-probs marked so that TRL's reductions of its per-example loss vectors can be read.

    Tensors computed from these log-probs stay of this class (only the loss code runs on
    them: the model forward is already done), and every ``mean`` / ``nanmean`` of a vector of
    ``rows`` elements that carries a gradient is recorded, in order: first DPO's
    ``per_sequence_loss.mean()`` per loss type, KTO's ``losses.nanmean()``, then their metrics'
    means (checked: the first ones must reproduce TRL's loss). Reading them costs nothing extra.
    """

    sink: list[torch.Tensor] | None = None
    rows = 0
    _REDUCTIONS = (torch.Tensor.mean, torch.Tensor.nanmean, torch.mean, torch.nanmean)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if cls.sink is not None and func in cls._REDUCTIONS and len(args) == 1 and not kwargs:
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


def _plain(x: Any) -> Any:
    return x.as_subclass(torch.Tensor) if isinstance(x, _LossCapture) else x


class _GradWeightedMixin(_WeightedMixin):
    """DPO / KTO: row i's gradient times w_i, and the micro-batch loss times its share of the
    optimiser step, so that the step's gradient is exactly sum_i w_i * grad(loss_i) / N even
    when micro-batches are uneven ([2, 1]: stock TRL weighs the lone example double)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = self._pop_weights(inputs)
        order = self._loss_order(inputs, w)
        row_weights = w.repeat(self._east_rows_per_example)

        def transform(log_probs: torch.Tensor, _: Any) -> torch.Tensor:
            return _ScaleGrad.apply(log_probs, row_weights).as_subclass(_LossCapture)

        wrapped = _RowWeightedModel(model, transform, rows=row_weights.shape[0])
        with _capture_per_example_loss(w.shape[0]) as captured:
            out = self._east_wrapped_call(
                wrapped,
                lambda: super(_GradWeightedMixin, self).compute_loss(
                    wrapped, inputs, return_outputs, num_items_in_batch
                ),
            )
        share = self._east_share(w.shape[0])
        loss = _plain(out[0] if return_outputs else out)
        if self.model.training:
            per_type = self._per_example_losses(captured, loss)
            weighted_sum = sum(lw * (w[order] * lo).nansum() for lw, lo in per_type)
            self._east_record(w, torch.as_tensor(weighted_sum, device=w.device))
        return (loss * share, out[1]) if return_outputs else loss * share

    def _per_example_losses(
        self, captured: list[torch.Tensor], loss: torch.Tensor
    ) -> list[tuple[float, torch.Tensor]]:
        """(loss weight, per-example loss vector) pairs whose combination TRL returned
        (canary: they must reproduce its loss)."""
        raise NotImplementedError

    def _loss_order(self, inputs: dict[str, Any], w: torch.Tensor) -> torch.Tensor:
        """Example index of each entry of TRL's per-example loss vector."""
        return torch.arange(w.shape[0], device=w.device)

    def _check_decomposition(
        self, what: str, parts: list[tuple[float, torch.Tensor]], loss: torch.Tensor
    ) -> None:
        if getattr(self, "aux_loss_enabled", False):  # an MoE model adds a per-batch router loss
            return
        reduced = sum(lw * lo.nanmean() for lw, lo in parts)
        if not _close(loss.detach(), torch.as_tensor(reduced), loss.dtype):
            raise TrainerAssumptionError(
                what, f"its loss {float(loss):.6g} is not the captured combination {float(reduced):.6g}"
            )


#: DPO loss types whose loss for pair i depends on the policy only through pair i's rows, so
#: that a per-pair weight on the gradient is exact. Not allowed: aot / aot_unpaired (sort
#: log-ratios across the batch), sft (a token mean over the whole batch), and any type TRL
#: adds later until it is checked.
DPO_ALLOWED = frozenset(
    {
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "apo_zero",
        "apo_down",
        "discopop",
        "sigmoid_norm",
    }
)
#: KTO loss types: each example's loss reads only its own rows (kto's KL term is detached).
KTO_ALLOWED = frozenset({"kto", "apo_zero_unpaired"})


def _refused_types(types: list[str], allowed: frozenset[str]) -> str | None:
    for t in types:
        if t not in allowed:
            return (
                f"loss_type {t!r} is not among the types whose per-example loss reads only that "
                f"example's rows ({', '.join(sorted(allowed))}), so a per-example weight would not be exact"
            )
    return None


def _dpo_unsupported(args: DPOConfig | None) -> str | None:
    if args is None:
        return None
    types = args.loss_type if isinstance(args.loss_type, list) else [args.loss_type]
    reason = _refused_types(list(types), DPO_ALLOWED)
    if reason:
        return reason
    if getattr(args, "padding_free", False):
        return "padding_free drops the 'weight' column; set padding_free=False"
    return None


class WeightedDPOTrainer(_GradWeightedMixin, DPOTrainer):
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


def _kto_unsupported(args: KTOConfig | None) -> str | None:
    if args is None:
        return None
    reason = _refused_types([args.loss_type], KTO_ALLOWED)
    if reason:
        return reason
    if getattr(args, "padding_free", False):
        return "padding_free drops the 'weight' column; set padding_free=False"
    return None


class WeightedKTOTrainer(_GradWeightedMixin, KTOTrainer):
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


#: Trainer settings the train stage (east.stages.train) sets itself: a config value for one is
#: refused by the config check.
RESERVED = (
    "output_dir",
    "seed",
    "data_seed",
    "report_to",
    "use_cpu",
    "save_strategy",
    "bf16",
    "fp16",
    "logging_nan_inf_filter",
)
