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
    assert objective_names() == ["sft", "dpo", "kto"]
    for name in objective_names():
        spec = get_objective(name)
        assert spec.name == name and "weight" in spec.columns and "prompt" in spec.columns
        config = spec.config_class()
        assert "per_device_train_batch_size" in {f.name for f in dataclasses.fields(config)}
        trainer = spec.trainer_class()
        assert hasattr(trainer, "_east_unsupported")  # one of east.training's weighted trainers
        assert spec.reference_model is (name != "sft")
        assert spec.shuffle_records is (name == "kto")
    assert get_objective("sft").build_options(type("C", (), {"sft_k": 4})()) == {"k": 4}
    assert get_objective("dpo").build_options(None) == {}
    # KTO's KL term needs two examples per device batch; SFT has no such rule.
    assert "per_device_train_batch_size must be >= 2" in get_objective("kto").check({}, 1)
    assert get_objective("kto").check({"loss_type": "apo_zero_unpaired"}, 1) is None
    assert get_objective("sft").check({}, 1) is None


def _toy(name="toy_registry_test", **kw):
    fields = {
        "name": name,
        "build": build_sft,
        "columns": ("prompt", "completion", "weight"),
        "trainer": "east.training:WeightedSFTTrainer",
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
        assert code_modules("toy_registry_test")[:2] == (__name__, "east.training")
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
