"""The objective registry: what the pipeline needs to know of a training objective."""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def loss_type_problem(types: Any, allowed: frozenset[str]) -> str | None:
    """Why ``types`` (a loss type or a list of them) cannot be weighted per example: the first
    not in ``allowed``, the types whose per-example loss reads only that example's rows."""
    for t in [types] if isinstance(types, str) else list(types):
        if t not in allowed:
            return (
                f"loss_type {t!r} is not among the types whose per-example loss reads only that "
                f"example's rows ({', '.join(sorted(allowed))}), so a per-example weight would not be exact"
            )
    return None


def _no_options(objective_config: Any) -> dict[str, Any]:
    return {}


def _no_check(settings: dict[str, Any], per_device: int) -> str | None:
    return None


@dataclass(frozen=True)
class ObjectiveSpec:
    """One training objective.

    - ``build(questions, weights, *, seed, **options)``: the training records of the kept
      questions, each carrying its question's weight (pure Python; see east.selection);
    - ``columns``: the record columns its trainer reads (the train stage keeps only these);
    - ``trainer`` / ``config``: ``"module:Class"`` of its weighted trainer and TRL config,
      imported only where they are used (the config check reads the config's fields);
    - ``label``: its row in the results table (its EAST row is labelled "+EAST");
    - ``reference_model``: it trains against a frozen copy of the base model (DPO, KTO);
    - ``shuffle_records``: its trainer reads rows in order, so the train stage shuffles them,
      seeded (KTO pairs examples for its KL term sequentially);
    - ``build_options(objective_config)``: keyword arguments of ``build`` from the run's
      ``objective`` config (SFT: ``k``, from ``objective.sft_k``);
    - ``check(settings, per_device_batch)``: a reason its trainer settings cannot work, or None.
    """

    name: str
    build: Callable[..., list[dict[str, Any]]]
    columns: tuple[str, ...]
    trainer: str
    config: str
    label: str
    reference_model: bool = False
    shuffle_records: bool = False
    build_options: Callable[[Any], dict[str, Any]] = _no_options
    check: Callable[[dict[str, Any], int], str | None] = _no_check

    def __post_init__(self) -> None:
        for what in ("trainer", "config"):
            target = getattr(self, what)
            if not isinstance(target, str) or target.count(":") != 1:
                raise ValueError(f"objective {self.name!r}: {what} must be 'module:Class', got {target!r}")
        if "weight" not in self.columns:
            raise ValueError(
                f"objective {self.name!r}: its columns must include 'weight' (got {self.columns})"
            )

    def trainer_class(self) -> type:
        return _load(self.trainer)

    def config_class(self) -> type:
        return _load(self.config)


def _load(target: str) -> type:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


#: name -> its spec, in registration order (the table's row order).
OBJECTIVES: dict[str, ObjectiveSpec] = {}
#: name -> the module that registered it (its code goes into the stage keys).
_REGISTERED_IN: dict[str, str] = {}


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add ``spec`` to the registry (a module listed in ``imports:`` calls this); a name taken
    by another spec is refused, re-registering the same spec is a no-op."""
    if not spec.name.isidentifier() or spec.name.endswith("_east") or spec.name == "default":
        raise ValueError(
            f"objective name {spec.name!r}: use an identifier, not 'default' and not ending in '_east' "
            "(the table's rows are <name> and <name>_east)"
        )
    known = OBJECTIVES.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"objective {spec.name!r} is already registered ({known.trainer})")
    OBJECTIVES[spec.name] = spec
    _REGISTERED_IN[spec.name] = sys._getframe(1).f_globals.get("__name__", "")
    return spec


def code_modules(name: str, stage: str = "train") -> tuple[str, ...]:
    """The modules whose code an objective runs in ``stage`` (their code goes into its key,
    with the modules of yours they import: east.codeid). ``build``: where it was registered and
    its builder's, options' and check's modules; ``train``: those and its trainer's and TRL
    config's. An edit to a trainer rebuilds the training, not the records."""
    spec = get_objective(name)
    modules = [
        _REGISTERED_IN.get(name, ""),
        *(getattr(f, "__module__", "") for f in (spec.build, spec.build_options, spec.check)),
    ]
    if stage != "build":
        modules += [spec.trainer.partition(":")[0], spec.config.partition(":")[0]]
    return tuple(dict.fromkeys(m for m in modules if m and m != "__main__"))


def objective_names() -> list[str]:
    return list(OBJECTIVES)


def get_objective(name: str) -> ObjectiveSpec:
    """The spec of ``name``; an unknown name is a ValueError naming the registered ones."""
    try:
        return OBJECTIVES[str(name)]
    except KeyError:
        close = difflib.get_close_matches(str(name), OBJECTIVES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown objective {name!r}{hint}; registered: {', '.join(OBJECTIVES)}. Register your own with "
            "east.objectives.register_objective in a module listed in imports (README: Add your own objective)"
        ) from None
