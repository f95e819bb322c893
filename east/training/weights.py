"""The weight column: its values checked, carried through TRL's collators, and the collated
rows checked against the examples (part of east.training)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "FLOAT32_MAX",
    "WEIGHT",
    "TrainerAssumptionError",
    "WeightCollator",
    "check_rows",
    "has_weight_column",
    "token_ids",
    "validate_weights",
    "weight_value",
]

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


def weight_value(w: Any, where: str | Callable[[], str]) -> float:
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
    if dataset is None or not hasattr(dataset, "__len__") or not has_weight_column(dataset):
        return
    column = dataset[WEIGHT]
    if isinstance(column, torch.Tensor):  # a torch-format dataset
        column = column.reshape(-1).tolist() if column.dim() <= 1 else list(column)
    for i, w in enumerate(column):
        weight_value(w, f"{name}: row {i}")


def has_weight_column(dataset: Any) -> bool | None:
    """Whether ``dataset`` has a weight column; None when it cannot tell (an iterable
    dataset whose features are unknown, a plain torch dataset)."""
    if dataset is None:
        return False
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        return None
    return WEIGHT in columns


# --------------------------------------------------------------------------- collation


class WeightCollator:
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
            [weight_value(e[WEIGHT], lambda e=e: f"a training example ({_describe(e)})") for e in examples]
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


def check_rows(expected: list[list[int]], batch: dict[str, Any], prefix: str = "") -> None:
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


def token_ids(x: Any) -> list[int]:
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)
