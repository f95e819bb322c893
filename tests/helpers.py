"""What the test tiers share: the project's paths, Hydra composition outside an app, and the
embedded default shrunk to seconds."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from east.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
register_configs()

# The embedded default, shrunk to seconds: a smaller model, a short warm-up, easy questions.
SMALL = [
    "logger=none",
    "model.tiny.hidden_size=64",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=128",
    "model.tiny.warmup_steps=150",
    "model.tiny.warmup_batch_size=16",
    "dataset.arith.steps=1",
    "dataset.arith.warmup_short_share=0",
    "dataset.arith.max_number=5",
    "dataset.arith.warmup_size=600",
    "dataset.arith.train_size=24",
    "dataset.arith.test_size=16",
    "sampling.n=6",
    "sampling.max_new_tokens=24",
    "evaluation.max_new_tokens=24",
]


def compose(overrides=()):
    """The composed config (outside @hydra.main there is no run directory to interpolate: one
    is given)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=["paths.output_dir=/tmp/east-test", *overrides])


def weighted_sft_spec(tmp_path, tiny_dir, name, **overrides):
    """A train worker's spec: weighted SFT of ``tiny_dir`` on 8 rows (weights 0.5 / 1.5), one
    epoch at a step size that moves the model; ``overrides`` replace spec keys, and
    ``settings=`` adds trainer settings."""
    from east.cache import write_jsonl
    from tests.conftest import assistant, prompt

    rows = [
        {"prompt": prompt(a, 2), "completion": assistant(f"\\boxed{{{a + 2}}}"), "weight": w}
        for a, w in zip(range(8), [0.5, 1.5] * 4)
    ]
    write_jsonl(tmp_path / "records.jsonl", rows)
    settings = {
        "per_device_train_batch_size": 4,
        "num_train_epochs": 1,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "gradient_checkpointing": False,
        **overrides.pop("settings", {}),
    }
    return {
        "objective": "sft",
        "base_path": str(tiny_dir),
        "out_dir": str(tmp_path / name),
        "work_dir": str(tmp_path / f"{name}-work"),
        "records": str(tmp_path / "records.jsonl"),
        "settings": settings,
        "seed": 0,
        "chat_template": None,
        "dtype": "float32",
        "report_to": [],
        **overrides,
    }


def kill_at_first_checkpoint(proc, cache: Path, settle_s: float = 0.0, poll_s: float = 0.02) -> Path:
    """SIGKILL ``proc``'s process group (the run, its workers, its ranks) once a train stage in
    ``cache`` has a complete checkpoint (its ``manifest.json`` is written last), ``settle_s``
    later; returns that checkpoint. Fails if training ends first."""
    import os
    import signal
    import time

    deadline = time.time() + 600
    checkpoint = None
    while time.time() < deadline and proc.poll() is None:
        states = sorted((cache / "train").glob(".work-*/checkpoint-*/manifest.json"))
        if states:
            checkpoint = states[0].parent
            time.sleep(settle_s)
            break
        time.sleep(poll_s)
    assert proc.poll() is None, "training ended before it could be killed"
    assert checkpoint is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return checkpoint
