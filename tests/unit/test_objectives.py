"""The objective registry (east.objectives): the only list of objectives, read by the config
check, the build and train stages and the report."""

from __future__ import annotations

import dataclasses

import pytest

from east.objectives import (
    OBJECTIVES,
    ObjectiveSpec,
    code_modules,
    get_objective,
    objective_names,
    register_objective,
)
from east.selection import build_sft


def test_the_built_ins_in_the_table_order_each_complete():
    assert objective_names() == ["sft", "dpo", "kto", "orpo", "simpo"]
    for name in objective_names():
        spec = get_objective(name)
        assert spec.name == name and "weight" in spec.columns and "prompt" in spec.columns
        config = spec.config_class()
        assert "per_device_train_batch_size" in {f.name for f in dataclasses.fields(config)}
        trainer = spec.trainer_class()
        assert hasattr(trainer, "_east_unsupported")  # one of east.training's weighted trainers
        assert spec.reference_model is (name in ("dpo", "kto"))  # ORPO, SimPO: reference-free
        assert spec.shuffle_records is (name == "kto")
    assert get_objective("sft").build_options(type("C", (), {"sft_k": 4})()) == {"k": 4}
    assert get_objective("dpo").build_options(None) == {}
    # KTO's KL term needs two examples per device batch; SFT has no such rule.
    assert "per_device_train_batch_size must be >= 2" in get_objective("kto").check({}, 1)
    assert get_objective("kto").check({"loss_type": "apo_zero_unpaired"}, 1) is None
    assert get_objective("sft").check({}, 1) is None
    # A loss type whose per-example loss is not its own is refused by the config check too.
    for name, bad in (("dpo", ["sigmoid", "aot"]), ("kto", "brand_new"), ("simpo", "brand_new")):
        assert "not among the types whose per-example loss" in get_objective(name).check(
            {"loss_type": bad}, 8
        )
    assert get_objective("simpo").check({"loss_type": "simpo"}, 1) is None


def test_each_built_in_is_a_package_of_its_spec_and_its_trainer():
    """east/objectives/<name>/__init__.py: the spec (no torch, no TRL: the config check and the
    report read it); <name>/trainer.py: its weighted trainer, named by the spec."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "east" / "objectives"
    for name in objective_names():
        spec = get_objective(name)
        assert spec.trainer.partition(":")[0] == f"east.objectives.{name}.trainer"
        imports = {
            n.module if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(ast.parse((root / name / "__init__.py").read_text()))
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
        assert not {m for m in imports if m and m.split(".")[0] in ("torch", "trl", "transformers")}, name


def test_nothing_outside_east_objectives_names_an_objective():
    """The registry is the only list: outside east/objectives/ no module names an objective,
    but for the paper's numbers (east.report.PAPER, its rows), the record builders' random
    stream tags (east.selection: changing them would change every record) and the tiny model's
    warm-up, which is SFT by definition (east.stages.base_model)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    allowed = {"east/report.py", "east/selection.py"}
    found = []
    for path in (root / "east").rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("east/objectives/") or rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in OBJECTIVES:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
            module = node.module if isinstance(node, ast.ImportFrom) else None
            warm_up = (rel, module) == ("east/stages/base_model.py", "east.objectives.sft.trainer")
            names_one = (module or "").split(".")[2:3] and module.split(".")[2] in OBJECTIVES
            if (module or "").startswith("east.objectives.") and names_one and not warm_up:
                found.append(f"{rel}:{node.lineno} imports {module}")
    assert not found, found


def _toy(name="toy_registry_test", **kw):
    fields = {
        "name": name,
        "build": build_sft,
        "columns": ("prompt", "completion", "weight"),
        "trainer": "east.objectives.sft.trainer:WeightedSFTTrainer",
        "config": "trl:SFTConfig",
        "label": "Toy",
        **kw,
    }
    return ObjectiveSpec(**fields)


def test_registering_checks_the_spec_and_the_name():
    try:
        spec = register_objective(_toy())
        assert register_objective(_toy()) == spec  # the same spec again: a no-op
        assert get_objective("toy_registry_test") == spec
        # Its code: the module that registered it, its trainer's and its builder's.
        assert code_modules("toy_registry_test")[0] == __name__
        # The trainer's code keys the training, not the records.
        assert "east.objectives.sft.trainer" in code_modules("toy_registry_test")
        assert "east.objectives.sft.trainer" not in code_modules("toy_registry_test", "build")
        assert "east.selection" in code_modules("toy_registry_test")
        with pytest.raises(ValueError, match="already registered"):
            register_objective(_toy(label="Other"))
    finally:
        OBJECTIVES.pop("toy_registry_test", None)
    for bad in ("default", "sft_east", "two words"):
        with pytest.raises(ValueError, match="use an identifier, not 'default'"):
            register_objective(_toy(bad))
    with pytest.raises(ValueError, match="'module:Class'"):
        _toy(trainer="east.training.WeightedSFTTrainer")
    with pytest.raises(ValueError, match="must include 'weight'"):
        _toy(columns=("prompt", "completion"))
    with pytest.raises(
        ValueError, match=r"unknown objective 'kt' \(did you mean 'kto'\?\); registered: sft, dpo, kto"
    ):
        get_objective("kt")
