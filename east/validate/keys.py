"""The composed config's keys: unknown ones named, the sampler node as its backend's schema,
and the command line's trainer keys over the model's (part of east.validate)."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any

import east.config as config_module
from east.config import Config
from east.errors import ConfigError
from east.samplers.base import sampler_class
from east.validate.trainer import _model_overrides


def omegaconf_message(error: Exception) -> str:
    """OmegaConf's error in one line: its first line, and the key it names."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    key = getattr(error, "full_key", None)
    return f"{key}: {text}" if key and key not in text else text


def backend_class(target: str) -> Any:
    """The sampler backend class ``target`` names; a ConfigError naming ``sampler._target_``
    where it cannot be imported or is not a backend."""
    try:
        return sampler_class(target)
    except (ImportError, TypeError) as e:
        raise ConfigError(f"invalid config sampler._target_={target!r}: {e}") from None


def sampler_config(node: Any) -> Any:
    """The ``sampler`` node as its backend's checked schema (``Config`` on its class); a
    backend without one as given (its constructor checks its keyword arguments)."""
    if dataclasses.is_dataclass(node):
        return node
    target = node.get("_target_")
    if not target:
        raise ConfigError("invalid config sampler: it names no _target_ (a east.samplers.Sampler class)")
    schema = backend_class(target).Config
    if schema is None:
        return node
    unknown = unknown_keys(node, schema, "sampler.")
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (for {target})")
    return schema(**node)


def unknown_keys(c: Any, schema: Any = None, prefix: str = "") -> list[str]:
    """Keys of ``c`` that the dataclass ``schema`` (default: :class:`Config`) does not have.

    A ``+key=value`` override adds keys that no schema checks (Hydra allows it on purpose),
    so ``+east.sharpnes=2`` would otherwise be silently ignored. Free-form fields (dicts
    such as ``objective.trainer``) are not descended into."""
    schema = schema or Config
    fields = {f.name: f for f in dataclasses.fields(schema)}
    out: list[str] = []
    for key, value in c.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            out.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
            continue
        sub = _dataclass_of(fields[key].type)
        if sub is not None and isinstance(value, dict):
            out += unknown_keys(value, sub, f"{prefix}{key}.")
    return out


def _dataclass_of(tp: Any) -> Any:
    if isinstance(tp, str):  # an annotation of the schema's module (east.config)
        tp = getattr(config_module, tp.split(" |")[0].strip(), None)
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


_TRAINER_OVERRIDE_RE = re.compile(r"^[+~]{0,2}objective\.trainer\.([A-Za-z_][\w]*)=")


def apply_command_line_precedence(c: Config, overrides: list[str]) -> list[str]:
    """Make ``objective.trainer.KEY=...`` given on the command line win over the model's
    ``trainer_overrides`` for KEY (which otherwise sit on top of the objective's settings).
    Returns the keys it moved, for the log."""
    model = _model_overrides(c)
    moved = []
    for override in overrides:
        m = _TRAINER_OVERRIDE_RE.match(override)
        if m and m.group(1) in model:
            model.pop(m.group(1))
            moved.append(m.group(1))
    return moved
