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
