"""What ``run.py`` checks before Hydra starts any job: every job of the command composes and
validates. A typo, an unknown option, a value of the wrong type or out of range, in any cell
of a sweep, is one line naming it (with "did you mean"), exit code 2, and no cell starts.

Hydra itself would print its own multi-line messages and exit 1 for the composition errors,
and a sweep with one bad cell would run the cells before it and die at it with no table.
Device-dependent checks (FSDP or ZeRO-3 without CUDA) are left to the job: a SLURM sweep is
submitted from a node without GPUs.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

from east.errors import UserError

#: Hydra flags that do not run jobs: Hydra handles them as it does.
_NOT_RUNS = ("help", "hydra_help", "info", "shell_completion", "cfg")


def preflight(argv: list[str], config_dir: Path, config_name: str = "config") -> None:
    """Compose and validate every job ``argv`` (run.py's arguments) would start; print one
    line per bad job and exit 2 if any is bad."""
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # Hydra reports its own argument errors
    if any(getattr(args, flag, None) for flag in _NOT_RUNS) or args.config_dir or args.config_path:
        return
    problems = problems_of(
        list(args.overrides), bool(args.multirun), config_dir, args.config_name or config_name
    )
    if problems:
        for line in problems:
            print(f"Error: {line}", file=sys.stderr)
        sys.exit(2)


def problems_of(
    overrides: list[str], multirun: bool, config_dir: Path, config_name: str = "config"
) -> list[str]:
    """One line per job of these overrides that fails to compose or validate."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import open_dict

    from east.validate import validate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        try:
            parsed = parser.parse_overrides(overrides)
        except HydraException as e:
            return [f"cannot read the overrides: {_first_line(e)}"]
        jobs = BasicSweeper.split_arguments(parsed, None)[0] if multirun else [overrides]
        swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
        problems = []
        run_dir = _run_dir_problem(config_name, list(jobs[0]) if jobs else overrides, multirun)
        if run_dir:
            return [run_dir]
        for job in jobs:
            named = [o for o in job if o.split("=", 1)[0] in swept] or list(job)
            label = f"cell {' '.join(named)}: " if multirun and len(jobs) > 1 else ""
            try:
                cfg = compose(config_name, overrides=list(job))
                with open_dict(cfg):
                    cfg.pop("hydra", None)
                validate(cfg, list(job), devices=False)
            except UserError as e:
                problems.append(f"{label}{e}")
            except Exception as e:  # Hydra's composition errors
                null = _null_parent(config_name, list(job)) if "Unexpected type for root" in str(e) else None
                problems.append(f"{label}{null or composition_message(e, config_dir)}")
    GlobalHydra.instance().clear()
    return problems


def _run_dir_problem(config_name: str, overrides: list[str], multirun: bool) -> str | None:
    """Why Hydra could not create the run's folder (``hydra.run.dir``, or ``hydra.sweep.dir``
    for a sweep): a file in its way, or a folder it cannot write; None when it can, or when it
    cannot be told before Hydra resolves it."""
    from hydra import compose
    from omegaconf import OmegaConf

    from east.errors import writable_problem

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        folder = OmegaConf.select(cfg, key)
    except Exception:  # a sweep's lists, a resolver only Hydra's run has: Hydra decides
        return None
    return writable_problem(str(folder), key) if folder else None


def _null_parent(config_name: str, overrides: list[str]) -> str | None:
    """The override that sets a key below a node that is null in this config (OmegaConf
    fails there with "Unexpected type for root: NoneType"), named in the user's terms."""
    from hydra import compose
    from omegaconf import OmegaConf

    groups = [o for o in overrides if "." not in o.split("=", 1)[0] and not o.startswith("hydra")]
    try:
        cfg = compose(config_name, overrides=groups)
    except Exception:
        return None
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        parts = key.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if OmegaConf.select(cfg, parent, default="missing") is None:
                chosen = ", ".join(groups) or "the defaults"
                return f"cannot set {key}: {parent} is null with {chosen} (it applies to other choices only)"
    return None


def _first_line(error: BaseException) -> str:
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def composition_message(error: BaseException, config_dir: Path) -> str:
    """Hydra's composition error in one line, with "did you mean" where it can tell."""
    text, cause = str(error), error.__cause__
    cause_text = str(cause) if cause is not None else ""
    m = re.match(r"(In '[^']+'): (\w+) raised while composing config:\s*\n\s*(.+)", text)
    if m:  # a config file whose values its schema refuses: Hydra puts the reason on line 2
        where, _, reason = m.groups()
        key = re.search(r"full_key: (\S+)", text)
        return f"{where}: {key.group(1) + ': ' if key else ''}{reason.strip()}"
    m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if m:
        group, option = m.groups()
        options = re.findall(
            r"^\t(\S+)$", text.split("Available options", 1)[-1].split("Config search path")[0], re.M
        )
        close = difflib.get_close_matches(option, options, n=1)
        hint = f" (did you mean {group}={close[0]}?)" if close else ""
        return f"unknown option {group}={option}{hint}; available: {', '.join(options)}"
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        groups = [d.name for d in config_dir.iterdir() if d.is_dir()] if config_dir.is_dir() else []
        close = _close_key(key, groups)
        hint = f" (did you mean {close}?)" if close else ""
        return f"unknown config key {key}{hint}"
    m = re.search(r"Error merging override (\S+?)=(.*)$", text.splitlines()[0] if text else "")
    if m and cause_text:
        key, value = m.groups()
        return f"invalid config {key}={value!r}: {_first_line(cause)}"
    if cause_text:
        return f"{_first_line(error)}: {_first_line(cause)}"
    return _first_line(error)


def _close_key(key: str, groups: list[str] = ()) -> str | None:
    """The schema key closest to a misspelt dotted ``key``: a top-level one among the schema's
    fields and the config groups (``mapings`` -> ``mapping``), a trainer setting among the
    TRL configs' fields (``objective.trainer.learnin_rate`` -> ``...learning_rate``)."""
    import dataclasses

    from east.config import Config
    from east.validate.keys import _dataclass_of

    parts = key.split(".")
    if len(parts) == 3 and parts[:2] == ["objective", "trainer"]:
        from east.objectives import OBJECTIVES

        configs = {spec.config_class() for spec in OBJECTIVES.values()}
        names = sorted({f.name for config in configs for f in dataclasses.fields(config)})
        close = difflib.get_close_matches(parts[-1], names, n=1)
        return f"objective.trainer.{close[0]}" if close else None
    schema, prefix = Config, []
    for part in parts[:-1]:
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if part not in fields:
            return None
        sub = _dataclass_of(fields[part].type)
        if sub is None:
            return None
        schema, prefix = sub, [*prefix, part]
    names = [f.name for f in dataclasses.fields(schema)]
    if not prefix:
        names += list(groups)
    close = difflib.get_close_matches(parts[-1], names, n=1)
    return ".".join([*prefix, close[0]]) if close else None
