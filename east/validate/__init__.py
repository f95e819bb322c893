"""Every check of a run's config before any stage runs: :func:`validate` turns the composed
config into a :class:`~east.config.Config` and checks what spans groups (trainer keys against
the objective's TRL config, the batch layout, LoRA, placement, the sampler backend, DeepSpeed, the logger),
and :func:`check_sources` what the run reads from the hub. A problem is a
:class:`~east.errors.ConfigError` naming the key, the value and what is allowed.

Single fields are checked where they are declared (the schema's ``__post_init__``, with
east.checks' ``check_int`` and friends); run.py's check of a whole sweep (east.cli) runs
:func:`validate` on each job.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from east.checks import import_user_modules
from east.config import Config
from east.errors import ConfigError
from east.validate.keys import apply_command_line_precedence, omegaconf_message, sampler_config, unknown_keys
from east.validate.machine import (
    _check_deepspeed_installed,
    _check_logger,
    _check_peft,
    _check_placement,
    _check_sampler,
    _check_sampler_installed,
    check_sources,
    hub_problem,
)
from east.validate.trainer import _check_trainer_settings, batch_layout, trainer_settings

__all__ = [
    "apply_command_line_precedence",
    "batch_layout",
    "check_sources",
    "hub_problem",
    "trainer_settings",
    "unknown_keys",
    "validate",
]


def validate(cfg: DictConfig | Config, command_line: list[str] = (), devices: bool = True) -> Config:
    """The run's typed config: every value it depends on checked before any stage runs.
    Raises :class:`~east.errors.ConfigError` naming the key, the value and what is allowed.

    ``command_line``: the job's overrides; an ``objective.trainer.KEY`` among them wins over
    the model's ``trainer_overrides`` (see :func:`apply_command_line_precedence`).
    ``devices``: also check what depends on this machine (CUDA for FSDP / ZeRO-3, the sampler
    backend's package); run.py's check of a whole sweep, on a login node, leaves them out."""
    if isinstance(cfg, DictConfig):
        from omegaconf.errors import OmegaConfBaseException

        import_user_modules(OmegaConf.select(cfg, "imports", default=None) or [])
        try:
            unknown = unknown_keys(OmegaConf.to_container(cfg, resolve=True))
            if unknown:
                raise ConfigError(
                    f"unknown config key(s): {', '.join(unknown)}. A '+' override adds keys that the "
                    "schema (east/config.py) does not have, and nothing would read them"
                )
            c = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as e:  # ${oc.env:UNSET}, seed=${seed}, a wrong type
            raise ConfigError(f"invalid config: {omegaconf_message(e)}") from None
    else:
        c = cfg
    _check_logger(c.logger, environment=devices)
    c.sampler = sampler_config(c.sampler)
    apply_command_line_precedence(c, list(command_line))
    _check_trainer_settings(c)
    _check_peft(c)
    batch_layout(c)
    if devices:
        _check_placement(c)
        _check_sampler_installed(c)
        _check_sampler(c)
        _check_deepspeed_installed(c)
    return c
