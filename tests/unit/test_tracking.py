"""W&B never takes a run down, and its settings follow the W&B conventions."""

from __future__ import annotations

import pytest

from east.errors import ConfigError
from east.tracking import WandbLogger


@pytest.mark.parametrize(
    ("env", "explicit", "expected"),
    [
        ({}, {}, ("offline", "east", None)),
        ({"WANDB_MODE": "disabled"}, {}, ("disabled", "east", None)),
        ({"WANDB_MODE": "online", "WANDB_PROJECT": "p", "WANDB_ENTITY": "me"}, {}, ("online", "p", "me")),
        (
            {"WANDB_MODE": "disabled", "WANDB_PROJECT": "p"},
            {"mode": "offline", "project": "q"},
            ("offline", "q", None),
        ),
    ],
)
def test_the_environment_applies_unless_the_config_sets_a_value(monkeypatch, env, explicit, expected):
    for k in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import os

    before = os.environ.get("WANDB_MODE")
    logger = WandbLogger(**explicit)
    assert (logger.mode, logger.project, logger.entity) == expected
    assert os.environ.get("WANDB_MODE") == before  # the environment is left as the user set it


def test_bad_modes_are_refused(monkeypatch):
    """By the run's config check (east.validate: run.py checks a sweep's every cell before
    any starts, WANDB_MODE on the machine that runs it), and by the logger itself."""
    from east.validate import validate
    from tests.helpers import compose

    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(ConfigError, match="logger.mode='loud'"):
        validate(compose(["logger=wandb", "logger.mode=loud"]), devices=False)
    with pytest.raises(ConfigError, match=r"logger._target_='east.tracking.Nope'"):
        validate(compose(["logger=wandb", "logger._target_=east.tracking.Nope"]), devices=False)
    with pytest.raises(ValueError, match="logger.mode='loud'"):
        WandbLogger(mode="loud")
    monkeypatch.setenv("WANDB_MODE", "loud")
    validate(compose(["logger=wandb"]), devices=False)  # a login node's environment is not the job's
    with pytest.raises(ConfigError, match="WANDB_MODE='loud'"):
        validate(compose(["logger=wandb"]))
    with pytest.raises(ValueError, match="WANDB_MODE='loud'"):
        WandbLogger()


class _Broken:
    """A W&B run whose service has died: every call raises."""

    def __init__(self):
        self.calls = 0
        self.summary = self

    def _raise(self, *args, **kwargs):
        self.calls += 1
        raise ConnectionResetError("wandb-core is gone")

    log = update = finish = _raise


def test_a_dead_service_is_reported_once_and_never_called_again(caplog):
    logger = WandbLogger(mode="offline")
    broken = _Broken()
    logger.run = broken
    logger.log({"a": 1})
    logger.log({"a": 2})
    logger.summary({"b": 1})
    logger.finish()
    assert broken.calls == 2  # the failing log, then one attempt to close the run; nothing after
    assert caplog.text.count("W&B log failed") == 1 and "results.json is still written" in caplog.text


def test_tags_reach_the_run_and_the_summary_says_where_the_offline_run_is(tmp_path):
    """logger.tags (README) tag the W&B run; the printed summary names the offline run folder
    and the command that uploads it."""
    with pytest.raises(ValueError, match=r"logger.tags: 'x{65}': a tag is 1 to 64 characters"):
        WandbLogger(tags=["x" * 65])
    logger = WandbLogger(mode="offline", tags=["ablation", 2])
    logger.start({"a": 1}, name="t", group=None, directory=str(tmp_path))
    try:
        assert logger.run is not None and set(logger.run.tags) == {"ablation", "2"}
        (label, folder), (how, command) = logger.where()
        assert label == "W&B (offline)" and folder.startswith(str(tmp_path / "wandb" / "offline-run-"))
        assert command == f"wandb sync {folder}"
    finally:
        logger.finish()
    assert (tmp_path / "wandb").is_dir()


@pytest.mark.parametrize("weights", [True, False])
def test_the_step_line_shows_weights_only_for_a_weighted_run(weights, caplog):
    """The compact training line names the batch's weights; the warm-up, which weights
    nothing, leaves them out rather than print "weights 1.00-1.00" at every step."""
    import logging
    from types import SimpleNamespace

    from transformers import PrinterCallback, ProgressCallback

    from east.tracking import console_progress

    class Trainer:
        def __init__(self):
            self.callbacks = [PrinterCallback, ProgressCallback]

        def remove_callback(self, cb):
            self.callbacks.remove(cb)

        def add_callback(self, cb):
            self.callbacks.append(cb)

    trainer = Trainer()
    console_progress(trainer, "run", weights=weights)
    step_log = trainer.callbacks[-1]
    args = SimpleNamespace(logging_steps=1)
    state = SimpleNamespace(global_step=0, max_steps=4, epoch=0.0, is_world_process_zero=True)
    step_log.on_train_begin(args, state, None)
    state.global_step, state.epoch = 4, 1.0
    logs = {"loss": 0.5, "learning_rate": 1e-4, "weight_min": 0.5, "weight_max": 1.5}
    with caplog.at_level(logging.INFO, logger="east.tracking"):
        step_log.on_log(args, state, None, logs=logs)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("run: step 4/4, epoch 1.00, loss 0.5, lr 1.00e-04")
    assert ("weights 0.50-1.50" in line) is weights
