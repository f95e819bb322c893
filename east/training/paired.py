"""ORPO / CPO-style weighting (TRL's ``trl.experimental`` trainers that read the policy's
logits for a [chosen; rejected] batch): pair i's rows get its weight on the gradient, the
supervised term becomes a per-example mean, and the per-example losses are read off the
trainer's own loss function to log the weighted loss and check the decomposition (part of
east.training).

The per-example loss of pair i is what the trainer's loss would be on pair i alone:
l_i = c_pref * pref_i + c_nll * nll_i, with pref_i the entry of the per-pair preference-loss
vector the trainer averages (ORPO: ``odds_ratio_loss``'s, entering with c_pref = -1; CPO /
SimPO: ``cpo_loss``'s, c_pref = 1) and nll_i the mean cross-entropy over pair i's chosen tokens
(c_nll = 1 for ORPO, ``cpo_alpha`` for CPO). TRL takes the cross-entropy as one token mean over
the whole batch, which weighs long examples more and depends on the batch; here each
example's token mean enters once, as east's SFT does. With one example per batch the two agree.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from east.training.mixin import RowWeightedModel, ScaleGrad, WeightedMixin, close_enough
from east.training.weights import TrainerAssumptionError, check_rows, token_ids

__all__ = ["PairedLogitsMixin", "PerExampleNLL", "paired_layout"]


class PerExampleNLL(torch.Tensor):
    """Logits marked so that a mean cross-entropy over ``rows`` examples' tokens (TRL's
    ``nn.CrossEntropyLoss()`` on the chosen rows, flattened) returns the mean over examples of
    each example's token mean instead, and records those per-example values. Every other
    operation runs unchanged."""

    sink: list[torch.Tensor] | None = None
    rows = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.cross_entropy and cls.sink is not None:
            return cls._per_example(*args, **kwargs)
        return super().__torch_function__(func, types, args, kwargs)

    @classmethod
    def _per_example(
        cls,
        input,
        target,
        weight=None,
        size_average=None,
        ignore_index=-100,
        reduce=None,
        reduction="mean",
        label_smoothing=0.0,
    ) -> torch.Tensor:
        if (
            weight is not None
            or size_average is not None
            or reduce is not None
            or reduction != "mean"
            or label_smoothing
        ):
            raise TrainerAssumptionError(
                "the trainer's supervised term being a plain mean cross-entropy",
                f"cross_entropy was called with reduction={reduction!r}, label_smoothing={label_smoothing}, "
                f"class weights {'set' if weight is not None else 'unset'}",
            )
        plain_input = input.as_subclass(torch.Tensor)
        per_token = F.cross_entropy(plain_input, target, ignore_index=ignore_index, reduction="none")
        if cls.rows <= 0 or per_token.numel() % cls.rows:
            raise TrainerAssumptionError(
                "the supervised cross-entropy covering the chosen rows of the batch, flattened",
                f"{per_token.numel()} token losses for {cls.rows} examples",
            )
        mask = (target != ignore_index).reshape(cls.rows, -1).to(per_token.dtype)
        per_example = (per_token.reshape(cls.rows, -1) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        cls.sink.append(per_example.detach())
        return per_example.mean()


@contextlib.contextmanager
def _per_example_nll(rows: int):
    sink: list[torch.Tensor] = []
    PerExampleNLL.sink, PerExampleNLL.rows = sink, rows
    try:
        yield sink
    finally:
        PerExampleNLL.sink = None


def paired_layout(examples: list[dict[str, Any]], batch: dict[str, Any]) -> None:
    """The collated chosen and rejected rows follow the examples (TRL's paired collator)."""
    if "chosen_input_ids" not in examples[0]:
        return
    check_rows([token_ids(e["chosen_input_ids"]) for e in examples], batch, prefix="chosen_")
    check_rows([token_ids(e["rejected_input_ids"]) for e in examples], batch, prefix="rejected_")


class PairedLogitsMixin(WeightedMixin):
    """For a TRL trainer whose ``compute_loss`` runs the policy once on [chosen; rejected]
    rows and reads ``outputs.logits``. A subclass names the trainer's per-pair loss function
    (``_east_pref_function``, wrapped to read its per-pair vector) and gives
    :meth:`_east_coefficients` (c_pref, c_nll)."""

    _east_rows_per_example = 2
    _east_layout = staticmethod(paired_layout)
    _east_pref_function = ""
    #: The per-pair loss vectors of the batch in compute_loss (None outside it).
    _east_pref: list[torch.Tensor] | None = None

    @staticmethod
    def _east_batch_rows(inputs: dict[str, Any]) -> int:
        if "chosen_input_ids" not in inputs:
            raise KeyError(f"cannot tell the batch size from keys {sorted(inputs)}")
        return 2 * inputs["chosen_input_ids"].shape[0]

    def _east_coefficients(self) -> tuple[float, float]:
        raise NotImplementedError

    def _east_capture_pref(self, out: Any) -> Any:
        """Called with what the per-pair loss function returned (its first item: the vector)."""
        if self._east_pref is not None:
            self._east_pref.append(out[0].detach().as_subclass(torch.Tensor).float())
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = self._pop_weights(inputs)
        row_weights = w.repeat(2)  # rows are [chosen; rejected]

        def transform(logits: torch.Tensor, _: Any) -> torch.Tensor:
            return ScaleGrad.apply(logits, row_weights).as_subclass(PerExampleNLL)

        wrapped = RowWeightedModel(model, transform, rows=row_weights.shape[0], field="logits")
        self._east_pref = pref = []
        try:
            with _per_example_nll(w.shape[0]) as nll:
                out = self._east_wrapped_call(
                    wrapped,
                    lambda: super(PairedLogitsMixin, self).compute_loss(
                        wrapped, inputs, return_outputs, num_items_in_batch
                    ),
                )
        finally:
            self._east_pref = None
        share = self._east_share(w.shape[0])
        loss = out[0] if return_outputs else out
        loss = loss.as_subclass(torch.Tensor) if isinstance(loss, PerExampleNLL) else loss
        if self.model.training:
            per_example = self._east_per_example(pref, nll, loss)
            self._east_record(w, (w * per_example).nansum())
        return (loss * share, out[1]) if return_outputs else loss * share

    def _east_per_example(
        self, pref: list[torch.Tensor], nll: list[torch.Tensor], loss: torch.Tensor
    ) -> torch.Tensor:
        c_pref, c_nll = self._east_coefficients()
        name = f"{self._east_pref_function} (the trainer's per-pair loss)"
        if len(pref) != 1:
            raise TrainerAssumptionError(
                f"{name} computing the per-pair losses once per batch", f"{len(pref)} calls"
            )
        if c_nll and len(nll) != 1:
            raise TrainerAssumptionError(
                "the supervised term being one cross-entropy over the chosen rows", f"{len(nll)} such calls"
            )
        per_example = c_pref * pref[0] + (c_nll * nll[0] if c_nll else 0.0)
        if not getattr(self, "aux_loss_enabled", False) and not close_enough(
            loss.detach(), per_example.mean(), loss.dtype
        ):
            raise TrainerAssumptionError(
                f"the trainer's loss being {c_pref:g} * mean(per-pair loss) + {c_nll:g} * NLL",
                f"its loss {float(loss):.6g} is not the captured combination {float(per_example.mean()):.6g}",
            )
        return per_example
