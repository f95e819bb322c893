"""The package's shape: no import cycles between east's modules (counting imports inside
functions), no import back up from the library into its stages, and the stage workers reach
neither the Hydra-side pipeline nor Hydra."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "east"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """east module -> the east modules it imports anywhere in its body."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert not node.level, f"{path}: use absolute imports"
                base = node.module or ""
                # "from east.grading import pool" imports the submodule; "from east.grading
                # import QuestionGrade" the package.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_no_import_cycles():
    graph = _graph()
    cycles = [m for m in graph if m in _closure(graph, m)]
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


#: Modules above the stages: they run them (the Hydra-side pipeline).
ABOVE_STAGES = {"east.pipeline"}


def test_no_back_arrows_from_the_library_into_its_stages():
    """east.stages runs the library's modules; a library module that imports from east.stages
    (counting imports inside functions) points back up, and is a cycle waiting to happen."""
    graph = _graph()
    back = sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        if not (m == "east.stages" or m.startswith("east.stages.")) and m not in ABOVE_STAGES
        for d in deps
        if d == "east.stages" or d.startswith("east.stages.")
    )
    assert not back, f"library modules importing their stages: {back}"


@pytest.mark.parametrize("worker", ["east.stages.train", "east.stages.generate", "east.stages.base_model"])
def test_stage_workers_import_only_what_they_run(worker):
    """A worker process (python -m east.stages.X, or accelerate launch) reads a resolved spec:
    it reaches neither the Hydra-side pipeline nor Hydra, and the stages package's own
    import is empty (a worker imports only its own modules)."""
    reached = _closure(_graph(), worker)
    assert not reached & {
        "east.pipeline",
        "east.stages.driver",
        "east.config",
        "east.hydra_callbacks",
        "east.results",
    }
    for module in reached | {worker}:
        text = _path(module).read_text()
        assert "import hydra" not in text and "from hydra" not in text, module
    init = ast.parse((PACKAGE / "stages" / "__init__.py").read_text())
    assert not [n for n in ast.walk(init) if isinstance(n, ast.Import | ast.ImportFrom)]


def _path(module: str) -> Path:
    path = ROOT / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@pytest.mark.parametrize(
    "module", ["east.training", *(f"east.objectives.{n}.trainer" for n in ("sft", "dpo", "kto"))]
)
def test_the_weighted_trainers_stand_on_their_own(module):
    """east.training and the objectives' weighted trainers need nothing of the pipeline: no
    Hydra, no stage cache, no config, no stage; east.training needs nothing else of east."""
    reached = _closure(_graph(), module) | {module}
    if module == "east.training":
        assert all(m.startswith("east.training") for m in reached), sorted(reached)
    pipeline = {"east.pipeline", "east.config", "east.cache", "east.codeid", "east.results"}
    assert not reached & pipeline and not any(m.startswith("east.stages") for m in reached), sorted(reached)
    for name in reached:
        text = _path(name).read_text()
        for banned in ("hydra", "omegaconf"):
            assert f"import {banned}" not in text and f"from {banned}" not in text, (name, banned)


def test_a_grading_worker_does_not_import_torch_through_run_py():
    """Grading workers start through multiprocessing's forkserver, which first runs the main
    script as ``__mp_main__`` (multiprocessing/spawn.py, ``_fixup_main_from_path``). run.py
    must stay light at import: with east.pipeline imported at its top, every run's first
    grade paid for torch and transformers (loading the old run.py took 5.3 s, the new 0.32 s,
    6 alternating pairs: docs/testbed.md, "The default")."""
    import subprocess
    import sys

    code = (
        "import runpy, sys; runpy.run_path('run.py', run_name='__mp_main__'); "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'east.pipeline') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_library_module_is_reached_from_run_py_or_a_config():
    """The library holds what a run uses: each module of east is imported, directly or not, by
    run.py or by a config's ``_target_``. Experiment tooling (the paper table's rehearsal, the
    studies, the benchmarks) lives under experiments/ and imports east, not the reverse; the
    rehearsal used to sit in east/, reached from nothing a run does."""
    import re

    graph = _graph()
    roots = {
        node.module
        for node in ast.walk(ast.parse((ROOT / "run.py").read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("east")
    }
    for config in (ROOT / "conf").rglob("*.yaml"):
        roots |= {t.rsplit(".", 1)[0] for t in re.findall(r"_target_:\s*(east[\w.]+)", config.read_text())}
    # An objective's trainer is named in its spec ("module:Class") and imported where training runs.
    from east.objectives import get_objective, objective_names

    roots |= {get_objective(n).trainer.partition(":")[0] for n in objective_names()}
    assert roots <= set(graph), sorted(roots - set(graph))
    reached = set(roots)
    for root in roots:
        reached |= _closure(graph, root)
    packages = {_module(p) for p in PACKAGE.rglob("__init__.py")}
    assert set(graph) - packages - reached == set()


MAX_MODULE_LINES, MAX_CLASS_LINES = 400, 200


def test_no_module_over_400_lines_and_no_class_over_200():
    """A module a newcomer reads at once: at most 400 lines, each class at most 200."""
    over = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            over[rel] = lines
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    over[f"{_module(path)}.{node.name}"] = size
    assert not over, f"over {MAX_MODULE_LINES} lines a module / {MAX_CLASS_LINES} a class: {over}"


def test_the_driver_modules_codeid_digests_are_the_stages_parts():
    """east.codeid keys each stage by the driver definitions it reaches, one by one, in
    DRIVER_MODULES: every east.stages.driver* module is listed, and Stages is built only from
    classes there (a part elsewhere would be keyed whole, or its methods not found)."""
    import inspect

    from east import codeid
    from east.stages.driver import Stages

    listed = set(codeid.DRIVER_MODULES)
    assert listed == {_module(p) for p in (PACKAGE / "stages").glob("driver*.py")}
    parts = [c for c in Stages.__mro__ if c is not object]
    assert {c.__module__ for c in parts} <= listed
    assert [(c.__module__, c.__name__) for c in parts] == list(codeid.driver._stages_classes())
    for stage in codeid.STAGES:  # each stage's method is found among the parts' definitions
        defs, _ = codeid.stage_modules(stage)
        owner = next(c for c in parts if stage in vars(c))
        assert f"{owner.__module__}:{owner.__name__}.{stage}" in defs
        assert inspect.getmodule(owner).__name__ in listed


#: What experiments/ take from the stages package directly, beside east.pipeline (``run``,
#: ``stages_for``): a worker module where the script measures or checks that worker itself.
WORKER_USES = {
    ("experiments/testbed/warmup_curve.py", "east.stages.base_model"): "it measures the tiny model's warm-up",
    ("experiments/benchmarks/gpu_check.py", "east.stages.launch"): (
        "it kills and resumes the train worker (python -m east.stages.train) on the device group a run gives it"
    ),
}


def _script_imports() -> dict[str, list[tuple[str, str]]]:
    """experiments/*.py and the notebooks' code cells -> (module, name) of each east import."""
    import json

    sources = {p.relative_to(ROOT).as_posix(): p.read_text() for p in (ROOT / "experiments").rglob("*.py")}
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        sources[nb.relative_to(ROOT).as_posix()] = "\n".join(
            "\n".join(line for line in cell.splitlines() if not line.lstrip().startswith(("%", "!")))
            for cell in code
        )
    out: dict[str, list[tuple[str, str]]] = {}
    for rel, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "east":
                out.setdefault(rel, []).extend((node.module, a.name) for a in node.names)
            elif isinstance(node, ast.Import):
                out.setdefault(rel, []).extend(
                    (a.name, "") for a in node.names if a.name.split(".")[0] == "east"
                )
    return out


def test_experiments_and_notebooks_use_public_entry_points():
    """A study runs stages through east.pipeline, never by building the driver's Stages; it
    imports no private name; a worker module it uses directly is listed above with why."""
    imports = _script_imports()
    assert "experiments/testbed/gain_vs_weight.py" in imports  # the scan reads the scripts
    private = sorted(
        f"{rel}: {m}.{n}" for rel, pairs in imports.items() for m, n in pairs if n.startswith("_")
    )
    assert not private, f"private names imported by studies: {private}"
    stages = {
        (rel, m if m != "east.stages" else f"{m}.{n}")
        for rel, pairs in imports.items()
        for m, n in pairs
        if m == "east.stages" or m.startswith("east.stages.")
    }
    assert stages == set(WORKER_USES), (
        f"studies reaching into east.stages: {sorted(stages - set(WORKER_USES))}"
    )


#: Where a config problem becomes the one-line ConfigError: the run's checks (east/validate/),
#: the field checks the schemas call where each field is declared (east/checks.py), and the
#: schema's own checks of a value against the machine (east/config.py: a path, a template).
CONFIG_ERRORS_RAISED_IN = ("east/validate/", "east/checks.py", "east/config.py")


def test_input_checks_live_in_one_place():
    """Every ConfigError is made in east/validate/, east/checks.py or the schema: a check
    anywhere else (a logger's, a backend's) returns its problem, and east.validate, which
    run.py runs on every job of a sweep before any starts, raises it."""
    makers = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ConfigError":
                makers.append(rel)
    assert {m for m in makers if m.startswith("east/validate/")}  # the scan sees the checks
    stray = sorted({m for m in makers if not m.startswith(CONFIG_ERRORS_RAISED_IN)})
    assert not stray, f"config checks outside east/validate, east/checks.py and the schema: {stray}"
