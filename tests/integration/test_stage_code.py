"""A stage's key holds the code it runs, derived from the code itself (east.codeid), and the
derivation is proved: every function a stage calls is in its digest.

The proof traces a whole run (every stage built, in this process) and records, per stage,
each function of the project or of the user that it calls; each must lie in a module of the
stage's derived closure, and a driver function (in any module of east.codeid.DRIVER_MODULES:
Stages and the classes it is built from) among the driver definitions the stage reaches. The grading pool's workers run in their own processes and are not traced: their
modules (east.grading.*) are in the grade and evaluate closures by import.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict
from pathlib import Path

import east
from east import codeid
from east.stages.driver import Stages
from tests.helpers import SMALL, compose

EAST_DIR = str(Path(east.__file__).resolve().parent) + "/"
#: The Stages methods that are stages (each builds the stage of the same name).
STAGE_METHODS = tuple(codeid.STAGES)


def test_every_function_a_stage_runs_is_in_its_key(tmp_path, monkeypatch):
    from east.pipeline import run

    calls: dict[str, set[tuple[str, str]]] = defaultdict(set)
    current: list[str | None] = [None]

    def wrap(method: str):
        real = getattr(Stages, method)

        def traced(self, *args, **kwargs):
            previous, current[0] = current[0], method
            try:
                return real(self, *args, **kwargs)
            finally:
                current[0] = previous

        monkeypatch.setattr(Stages, method, traced)

    for method in STAGE_METHODS:
        wrap(method)

    def tracer(frame, event, arg):
        stage = current[0]
        if stage is not None and frame.f_code.co_filename.startswith(EAST_DIR):
            calls[stage].add((frame.f_globals.get("__name__", "?"), frame.f_code.co_qualname))
        return None  # no line events

    overrides = [
        *SMALL,
        "isolate_stages=false",
        "evaluation.samples=2",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    cfg = compose(overrides)
    threading.settrace(tracer)
    sys.settrace(tracer)
    try:
        results = run(cfg)
    finally:
        sys.settrace(None)
        threading.settrace(None)
    assert not any(s["cached"] for s in results["stages"].values() if isinstance(s, dict) and "cached" in s)
    assert set(calls) == set(STAGE_METHODS)
    from east.objectives import code_modules
    from east.samplers.hf import HFSampler
    from east.weighting import get_mapping

    extra = {
        "sample": codeid.defining_module(HFSampler),
        "evaluate": codeid.defining_module(HFSampler),
        "evaluate_sampled": codeid.defining_module(HFSampler),
        "build": codeid.defining_module(get_mapping("power").raw),
        # The objective's trainer is imported by name (its spec's "module:Class"): the stage
        # names its modules (east.objectives.code_modules).
        "train": code_modules("sft"),
    }
    for stage, called in calls.items():
        defs, modules = codeid.stage_modules(stage, extra.get(stage, ()))
        outside = sorted(m for m, _ in called if m not in codeid.DRIVER_MODULES and m not in modules)
        assert not outside, f"{stage} runs code of modules not in its key: {outside}"
        driver = {f"{m}:{q.split('.<locals>')[0]}" for m, q in called if m in codeid.DRIVER_MODULES}
        # A method's own nested functions are part of its definition.
        missing = sorted(q for q in driver if q not in defs)
        assert not missing, f"{stage} runs driver definitions not in its key: {missing}"


def test_installed_packages_and_the_standard_library_are_not_own_code():
    assert codeid.is_own("east.weighting")
    assert not codeid.is_own("numpy") and not codeid.is_own("json") and not codeid.is_own("hydra")
    _, modules = codeid.stage_modules("grade")
    assert "east.weighting" in modules and all(m == "east" or m.startswith("east.") for m in modules)
