"""Value checks for the config dataclasses' ``__post_init__``: each raises
:class:`~east.errors.ConfigError` naming the key, the value and what is allowed.

Values still unset (OmegaConf's ``"???"``, while Hydra builds the schema) are not checked.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from east.errors import ConfigError

#: numpy's and torch's seed range.
MAX_SEED = 2**32 - 1


def unset(value: Any) -> bool:
    return isinstance(value, str) and value == "???"


def fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"invalid config {key}={value!r}: {allowed}")


def check_int(key: str, value: Any, low: int, high: int | None = None, *, optional: bool = False) -> None:
    if unset(value) or (value is None and optional):
        return
    allowed = f"must be an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    if optional:
        allowed += " (or null for all)"
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        fail(key, value, allowed)


def check_real(key: str, value: Any, low: float, high: float = math.inf, *, open_low: bool = False) -> None:
    if unset(value):
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        if math.isfinite(high):
            interval = f"in {'(' if open_low else '['}{low}, {high}]"
        else:
            interval = f"> {low}" if open_low else f">= {low}"
        fail(key, value, f"must be a finite number {interval}")


def check_choice(key: str, value: Any, allowed: Any) -> None:
    if not unset(value) and value not in allowed:
        fail(key, value, f"allowed: {', '.join(map(str, allowed))}")


def locate(target: str) -> Any:
    """The object a ``_target_`` ("package.module.Name") names; an ImportError in one line
    when it cannot be imported (the caller names the config key)."""
    import importlib

    module, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ImportError(str(e)) from None


def import_user_modules(names: list[str]) -> None:
    """Import ``imports``: the modules where a user registers mappings, objectives (or anything
    else the config names), before the config is checked, and again in a stage worker (a child
    process starts without them). The current folder is searched too."""
    import importlib
    import os
    import sys

    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in names:
        try:
            importlib.import_module(str(name))
        except Exception as e:  # a missing module or one that fails: the user's to fix
            raise ConfigError(
                f"invalid config imports: cannot import {name!r} ({type(e).__name__}: {e})"
            ) from None


HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def local_path_problem(value: str) -> str | None:
    """Why ``value`` is neither an existing local path nor a hub id, or None."""
    path = Path(value).expanduser()
    if path.is_file():
        return "a file, not a folder of weights (a folder with config.json, *.safetensors and the tokenizer files)"
    if path.is_dir():
        if not (path / "config.json").is_file():
            return (
                "a folder without config.json: give a folder of Hugging Face weights (config.json, "
                "*.safetensors and the tokenizer files), e.g. from hf download ORG/NAME --local-dir DIR"
            )
        return None
    if path.exists():
        return None
    if value.startswith(("/", ".", "~")) or value.count("/") > 1 or not HUB_ID_RE.fullmatch(value):
        return "no such file or folder (and not a hub id such as org/name)"
    return None
