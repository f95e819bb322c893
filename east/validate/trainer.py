"""The objective's trainer settings: every key known to its TRL config, of the right type and
range, and the global batch laid out over processes and accumulation (part of east.validate)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from east.checks import check_int, check_real, fail
from east.config import Config
from east.errors import ConfigError

#: Ranges of the TRL settings a run may set, checked before any stage: key -> (type, low,
#: high, null allowed, low excluded). Outside them a value fails late (max_length 0) or trains
#: nothing sane (a learning rate above 1).
TRAINER_RANGES: dict[str, tuple[type, float, float, bool, bool]] = {
    # Below 1e-12 an update vanishes even in fp32: the "trained" model would be the base.
    "learning_rate": (float, 1e-12, 1.0, False, False),
    "num_train_epochs": (float, 0.0, 10_000.0, False, True),
    "per_device_train_batch_size": (int, 1, 1 << 16, False, False),
    "per_device_eval_batch_size": (int, 1, 1 << 16, False, False),
    "max_length": (int, 1, 1 << 20, True, False),
    "max_prompt_length": (int, 1, 1 << 20, True, False),
    "max_steps": (int, -1, 10**9, False, False),
    "save_steps": (int, 0, 10**9, False, False),
    "logging_steps": (float, 0.0, 10**9, False, True),
    "warmup_steps": (float, 0.0, 10**9, False, False),
    "weight_decay": (float, 0.0, 1.0, False, False),
    "max_grad_norm": (float, 0.0, 1e6, False, False),
    "beta": (float, 0.0, 1e6, False, True),
    "adam_epsilon": (float, 0.0, 1.0, False, True),
}


def _check_trainer_settings(c: Config) -> None:
    from east.objectives import get_objective
    from east.objectives.base import RESERVED

    name = c.objective.name
    config_cls = get_objective(name).config_class()
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    sources = {
        "objective.trainer": c.objective.trainer,
        f"model.trainer_overrides.{name}": _model_overrides(c),
    }
    for where, settings in sources.items():
        reserved = sorted(set(settings) & set(RESERVED))
        if reserved:
            raise ConfigError(
                f"invalid config {where}: {', '.join(reserved)} set by the train stage itself (seed from "
                "seed, precision from model.dtype: bf16 autocast over fp32 weights on a GPU, fp32 on a "
                "CPU; checkpoints from save_steps; outputs in the stage's folder); remove "
                + ("it" if len(reserved) == 1 else "them")
            )
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            close = sorted({m for u in unknown for m in difflib.get_close_matches(u, list(fields), n=3)})
            raise ConfigError(
                f"invalid config {where}: unknown {config_cls.__name__} key(s) {unknown}"
                + (f"; did you mean one of {close}?" if close else "")
            )
        for key, value in settings.items():
            expected = _type_of(config_cls, fields[key])
            if expected is not None and not _type_ok(value, expected):
                fail(f"{where}.{key}", value, f"{config_cls.__name__}.{key} takes {_type_name(expected)}")
            rule = TRAINER_RANGES.get(key)
            if rule is not None and not (value is None and rule[3]):
                kind, low, high, _, open_low = rule
                if kind is int:
                    check_int(f"{where}.{key}", value, low, high)
                else:
                    check_real(f"{where}.{key}", value, low, high, open_low=open_low)
            if key == "max_steps" and value == 0:
                fail(f"{where}.{key}", value, "must be -1 (epochs decide) or at least 1")


def _type_of(cls: Any, f: Any) -> Any:
    if not isinstance(f.type, str):
        return f.type
    try:
        return typing.get_type_hints(cls)[f.name]
    except Exception:  # an annotation this Python cannot resolve: not checked
        return None


def _type_ok(value: Any, tp: Any) -> bool:
    import enum
    import types

    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # Union[SchedulerType, str]: a string names a member
            return any(_type_ok(value, e) for e in enums)
        return any(_type_ok(value, a) for a in args)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp) or value in {m.value for m in tp}
    if origin in (list, dict, tuple):
        return isinstance(value, list | tuple) if origin in (list, tuple) else isinstance(value, dict)
    return True  # anything richer is left to TRL


def _type_name(tp: Any) -> str:
    import enum

    enums = [a for a in (tp, *typing.get_args(tp)) if isinstance(a, type) and issubclass(a, enum.Enum)]
    if enums:
        return "one of " + ", ".join(str(m.value) for m in enums[0])
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def batch_layout(c: Config) -> dict[str, int]:
    """How the objective's global batch is laid out over processes and accumulation steps.

    gradient_accumulation_steps = global_batch_size / (per_device_train_batch_size x
    processes); raises ValueError naming the keys when it does not divide.
    """
    from east.objectives import get_objective

    spec = get_objective(c.objective.name)
    settings = trainer_settings(c)
    if "gradient_accumulation_steps" in settings:
        raise ConfigError(
            "invalid config: gradient_accumulation_steps is derived from objective.global_batch_size "
            "(global / (per-device batch x processes)); set objective.global_batch_size instead"
        )
    per_device = settings.get("per_device_train_batch_size")
    if per_device is None:
        per_device = spec.config_class().__dataclass_fields__["per_device_train_batch_size"].default
    processes = c.distributed.num_processes
    total = c.objective.global_batch_size
    if total < 1 or per_device < 1 or total % (per_device * processes):
        raise ConfigError(
            f"invalid config objective.global_batch_size={total}: it must be a multiple of "
            f"per_device_train_batch_size ({per_device}) x distributed.num_processes ({processes})"
        )
    reason = spec.check(settings, per_device)
    if reason:
        raise ConfigError(f"invalid config: {reason}")
    return {
        "global_batch_size": total,
        "per_device_train_batch_size": per_device,
        "processes": processes,
        "gradient_accumulation_steps": total // (per_device * processes),
    }


def trainer_settings(c: Config) -> dict[str, Any]:
    """The TRL settings of the run's objective. Precedence, lowest first: the objective's
    ``objective.trainer``, then the model's ``model.trainer_overrides.<objective>``, then
    whatever the command line set (see :func:`apply_command_line_precedence`)."""
    return {**c.objective.trainer, **_model_overrides(c)}


def _model_overrides(c: Config) -> dict[str, Any]:
    return (c.model.trainer_overrides or {}).get(c.objective.name) or {}
