"""DPO / KTO-style weighting: each example's rows get its weight on the gradient, and TRL's
per-example loss vectors are read off its own reductions to log the weighted loss and check
the decomposition the weights rely on (part of east.training)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from east.training.mixin import RowWeightedModel, ScaleGrad, WeightedMixin, close_enough
from east.training.weights import TrainerAssumptionError

__all__ = ["GradWeightedMixin", "LossCapture", "capture_per_example_loss", "plain"]


class LossCapture(torch.Tensor):
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
def capture_per_example_loss(rows: int):
    sink: list[torch.Tensor] = []
    LossCapture.sink, LossCapture.rows = sink, rows
    try:
        yield sink
    finally:
        LossCapture.sink = None


def plain(x: Any) -> Any:
    return x.as_subclass(torch.Tensor) if isinstance(x, LossCapture) else x


class GradWeightedMixin(WeightedMixin):
    """DPO / KTO: row i's gradient times w_i, and the micro-batch loss times its share of the
    optimiser step, so that the step's gradient is exactly sum_i w_i * grad(loss_i) / N even
    when micro-batches are uneven ([2, 1]: stock TRL weighs the lone example double)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        w = self._pop_weights(inputs)
        order = self._loss_order(inputs, w)
        row_weights = w.repeat(self._east_rows_per_example)

        def transform(log_probs: torch.Tensor, _: Any) -> torch.Tensor:
            return ScaleGrad.apply(log_probs, row_weights).as_subclass(LossCapture)

        wrapped = RowWeightedModel(model, transform, rows=row_weights.shape[0])
        with capture_per_example_loss(w.shape[0]) as captured:
            out = self._east_wrapped_call(
                wrapped,
                lambda: super(GradWeightedMixin, self).compute_loss(
                    wrapped, inputs, return_outputs, num_items_in_batch
                ),
            )
        share = self._east_share(w.shape[0])
        loss = plain(out[0] if return_outputs else out)
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
        if not close_enough(loss.detach(), torch.as_tensor(reduced), loss.dtype):
            raise TrainerAssumptionError(
                what, f"its loss {float(loss):.6g} is not the captured combination {float(reduced):.6g}"
            )
