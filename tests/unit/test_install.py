"""What the install allows is what CI tests: the lower-bound pins the trainer tests run on
(.ci/lower-bounds.txt) are setup.cfg's floors, and CI also tests the set the `vllm` extra
resolves to (.ci/trainer_envs)."""

from __future__ import annotations

import configparser

from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers import ROOT


def _requirements(section: str, key: str) -> dict[str, Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg[section][key].splitlines()]
    reqs = [Requirement(line) for line in lines if line and not line.startswith("#")]
    return {r.name.lower(): r for r in reqs}


def _floor(req: Requirement) -> str:
    floors = [s.version for s in req.specifier if s.operator in (">=", "==")]
    assert len(floors) == 1, f"{req} has no single lower bound"
    return floors[0]


def test_lower_bound_pins_are_the_floors_of_setup_cfg():
    install = _requirements("options", "install_requires")
    pins = {}
    for line in (ROOT / ".ci" / "lower-bounds.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    assert set(pins) == {"transformers", "trl", "accelerate", "datasets", "peft"}
    for name, version in pins.items():
        floor = _floor(install[name])
        assert Version(version) == Version(floor), name


def test_ci_runs_the_trainer_tests_on_both_ends():
    run = (ROOT / ".ci" / "run").read_text()
    assert ".ci/trainer_envs" in run and "--dry-run" in run and "[vllm]" in run
    envs = (ROOT / ".ci" / "trainer_envs").read_text()
    assert "lower-bounds.txt" in envs and "pins_from_report.py" in envs


def test_the_vllm_extra_pins_vllm_alone():
    """vLLM pins its own torch and transformers; the extra adds no second, narrower pin."""
    vllm = _requirements("options.extras_require", "vllm")
    assert set(vllm) == {"vllm"} and str(vllm["vllm"].specifier).startswith("==")
