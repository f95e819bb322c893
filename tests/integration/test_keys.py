"""Every setting that changes an artifact is in that artifact's key, and no other.

Each config field is flipped in turn and the pipeline's stage keys are computed without
building anything (every stage returns a stub artifact). The table below says, per field,
which stages it shapes directly; the test adds their downstream stages and asserts that
exactly those keys change. A new config field fails the completeness test until it is
classified here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from east import codeid
from east.cache import StageCache, StageResult, stage_key
from east.objectives import objective_names
from east.tracking import NullLogger
from east.validate import validate
from tests.helpers import compose as _compose

#: Which stages read which stages' artifacts (a changed input key changes the reader's key).
DEPS = {
    "sample": ["base_model"],
    "grade": ["sample"],
    "build": ["grade"],
    "train": ["base_model", "build"],
    "evaluate_trained_arith": ["train"],
    "evaluate_base_arith": ["base_model"],
    "evaluate_trained_test": ["train"],
    "evaluate_base_test": ["base_model"],
}
EVALS = ("evaluate_trained_arith", "evaluate_base_arith")
EVALS_JSONL = ("evaluate_trained_test", "evaluate_base_test")
_STUB = {
    "stats.json": {
        "questions": 1,
        "kept": 1,
        "dropped": {},
        "records": 1,
        "timeouts": 0,
        **{
            k: {"mean": 0.0, "min": 0.0, "max": 0.0}
            for k in ("entropy", "weight", "entropy_all", "accuracy_all")
        },
        "kept_entropy_values": [],
        "weight_values": [],
        "entropy_values": [],
    },
    "train_info.json": {},
    "metrics.json": {"accuracy": 0.0, "grading_timeouts": 0},
    "predictions.jsonl": {"id": "q0", "correct": True, "answer": "1"},  # one JSON line
}


def _downstream(direct: set[str]) -> set[str]:
    out = set(direct)
    changed = True
    while changed:
        changed = False
        for stage, inputs in DEPS.items():
            if stage not in out and out.intersection(inputs):
                out.add(stage)
                changed = True
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A tokenizer that knows the task and the chat templates' markup, so that prompts
    rendered by different templates or system prompts get different token ids."""
    from east.models import build_tiny_tokenizer
    from tests.conftest import TASK_TEXTS

    path = tmp_path_factory.mktemp("tokenizer")
    markup = ["<|im_start|>system\nAnswer in \\boxed{}.<|im_end|>\n<|im_start|>user\n<|im_start|>assistant\n"]
    build_tiny_tokenizer(TASK_TEXTS + markup * 20).save_pretrained(path)
    (path / "config.json").write_text('{"model_type": "llama"}')  # a weights folder, as model.path needs
    return path


@pytest.fixture
def stage_keys(monkeypatch, tmp_path, tokenizer_dir):
    """A function: overrides -> {stage label: key}, building nothing."""
    from east import pipeline

    def fake_run(
        self: StageCache, stage: str, config: Any, inputs: list[str], build: Any, label: str | None = None
    ) -> StageResult:
        key = stage_key(stage, config, inputs)
        path = tmp_path / "stubs" / stage / key
        path.mkdir(parents=True, exist_ok=True)
        for name, content in {**_STUB, "model.json": {"path": str(tokenizer_dir)}}.items():
            (path / name).write_text(json.dumps(content))
        return StageResult(stage, key, path, True, 0.0)

    monkeypatch.setattr(StageCache, "run", fake_run)

    def keys(overrides: list[str]) -> dict[str, str]:
        cfg = _compose(["logger=none", f"paths.cache_dir={tmp_path / 'cache'}", *overrides])
        stages = pipeline._run(validate(cfg), NullLogger())[0]["stages"]
        return {label: s["key"] for label, s in stages.items() if label != "evaluate"}

    return keys


#: field -> (a valid other value, the stages it shapes directly). () = no artifact depends
#: on it. Composition: the default (tiny model, arith, sft).
FLIPS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "model.name": ("tiny2", ()),  # a label: the weights are keyed by what builds them
    "model.dtype": ("bfloat16", ("sample", "train", *EVALS)),
    "model.system_prompt": ("'Answer in \\boxed{}.'", ("base_model", "sample", *EVALS)),
    # (The tiny tokenizer's own template is ChatML: "chatml" would render the same ids.)
    "model.chat_template": ("llama3_paper", ("sample", "train", *EVALS)),
    **{
        f"model.tiny.{k}": (v, ("base_model",))
        for k, v in {
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 128,
            "vocab_size": 300,
            "seed": 3,
            "warmup_steps": 10,
            "warmup_batch_size": 16,
            "warmup_lr": 1e-3,
        }.items()
    },
    "model.trainer_overrides.sft.learning_rate": (1e-4, ("train",)),
    "model.trainer_overrides.sft.num_train_epochs": (4, ("train",)),
    "model.trainer_overrides.sft.per_device_train_batch_size": (4, ("train",)),
    "model.trainer_overrides.sft.gradient_checkpointing": (True, ("train",)),
    "model.trainer_overrides.sft.lr_scheduler_type": ("linear", ("train",)),
    "model.trainer_overrides.sft.save_steps": (7, ()),  # how often checkpoints go: no number moves
    # The embedded task is generated: file and hub fields are not read (test_jsonl_fields).
    **{
        f"dataset.{k}": (v, ())
        for k, v in {
            "hub_id": "org/data",
            "hub_config": "main",
            "train_split": "train2",
            "question_field": "q",
            "solution_field": "s",
            "answer_field": "a",
            "gold_format": "boxed",
            "id_field": "id",
            "on_bad_row": "skip",
        }.items()
    },
    "dataset.max_question_chars": (5000, ()),  # arith is generated: no rows to check
    "dataset.allow_test_in_train": (True, ()),  # a check of the data, not a change to it
    "dataset.max_train": (50, ("sample",)),
    "dataset.max_test": (50, EVALS),
    # Every generated split is drawn disjoint from the others: each size shapes all of them.
    **{
        f"dataset.arith.{k}": (v, ("base_model", "sample", *EVALS))
        for k, v in {
            "steps": 3,
            "max_number": 15,
            "warmup_size": 1000,
            "train_size": 100,
            "test_size": 100,
            "seed": 7,
        }.items()
    },
    # The slip rewrites warm-up solutions only: the questions of every split stay.
    "dataset.arith.warmup_short_share": (0.3, ("base_model",)),
    "dataset.arith.warmup_slip_items": ("[balls]", ("base_model",)),
    "objective.sft_k": (2, ("build",)),
    "objective.global_batch_size": (32, ("train",)),
    "east.mapping": ("accuracy", ("build",)),
    "east.sharpness": (2.0, ("build",)),
    "sampler.batch_size": (8, ()),  # hf: per-row seeds, so samples do not depend on batching
    # Nor on how many workers generate them, or in how many chunks.
    "sampler.data_parallel_size": (2, ()),
    "sampler.chunk_prompts": (5, ()),
    # Where stages run and what a cluster job asks for never shape an artifact.
    "isolate_stages": (True, ()),
    "resources.gpus": (8, ()),
    "resources.cpus_per_gpu": (4, ()),
    "resources.mem_gb_per_gpu": (32, ()),
    "sampling.n": (4, ("sample",)),
    "sampling.temperature": (0.8, ("sample",)),
    "sampling.top_p": (0.9, ("sample",)),
    "sampling.max_new_tokens": (32, ("sample",)),
    "evaluation.max_new_tokens": (32, EVALS),
    "evaluation.pass_k": ("[1]", ()),  # read only with evaluation.samples > 0
    "grading.mode": ("string", ("grade",)),
    "grading.processes": (2, ()),
    "grading.timeout_s": (2.0, ("grade", *EVALS)),
    "grading.fallback": ("none", ("grade", *EVALS)),
    "filters.drop_all_correct": (False, ("build",)),
    "filters.require_boxed_correct": (False, ("build",)),
    "filters.require_boxed_incorrect": (False, ("build",)),
    "distributed.num_processes": (2, ("train",)),
    # One process under accelerate launch (a one-process ZeRO-3 trains differently from none).
    "distributed.accelerate_config": ("conf/accelerate/ddp.yaml", ("train",)),
    "distributed.launch_args": ("['--main_process_port=29555']", ()),
    "peft.method": ("lora", ("train",)),
    # Read only with peft.method=lora (test_lora_settings_shape_the_train_key).
    "peft.r": (8, ()),
    "peft.alpha": (16, ()),
    "peft.dropout": (0.1, ()),
    "peft.target_modules": ("[q_proj]", ()),
    "paths.output_dir": ("/tmp/elsewhere", ()),
    "paths.data_dir": ("/tmp", ()),  # arith reads no files
    "paths.lock_timeout_s": (30, ()),  # how long to wait for another builder
    "seed": (1, ("sample", "build", "train")),
    "experiment_name": ("mine", ()),
    # Modules to import first: a mapping registered there is keyed by its own code (below).
    "imports": ("[json]", ()),
}
#: Fields that choose which stages run (checked by label, not by key).
#: field -> (value, labels removed, labels added, labels whose key changes).
STRUCTURAL = {
    "evaluation.base": ("false", {"evaluate_base_arith"}, set(), set()),
    "evaluation.only": (
        "true",
        {"sample", "grade", "build", "train", "evaluate_trained_arith"},
        set(),
        set(),
    ),
    # Phase A of a cluster sweep: the stages a sweep's cells share, under the cells' own keys.
    "stop_after": ("shared", {"build", "train", "evaluate_trained_arith"}, set(), set()),
    "evaluation.samples": (
        "2",
        set(),
        {"evaluate_trained_sampled_arith", "evaluate_base_sampled_arith"},
        set(),
    ),
    # Round 0 keeps its keys; the final evaluation is of the round-1 model.
    "rounds": (
        "2",
        set(),
        {"sample_r1", "grade_r1", "build_r1", "train_r1", "evaluate_arith_r0", "evaluate_arith_r1"},
        {"evaluate_trained_arith"},
    ),
}
#: Not flipped here, with the reason.
NOT_FLIPPED = {
    "model.path": "ignored by model=tiny (refused by validate); see test_jsonl_fields",
    "model.gguf": "a weights source (smollm2): its conversion is keyed by the file (test_smollm2)",
    "dataset.name": "chooses the loader: a different dataset",
    "dataset.path": "see test_jsonl_fields",
    "dataset.tests": "see test_jsonl_fields",
    "dataset.test_sets": "see test_jsonl_fields",
    "objective.name": "a different objective: every trainer setting changes with it",
    "objective.trainer": "per key: test_objective_trainer_keys_...",
    **{
        f"model.trainer_overrides.{name}": "another objective's settings: not read by sft"
        for name in objective_names()
        if name != "sft"
    },
    "sampler._target_": "the backend: its cache_key (hf; vllm with entropy_top_k) is in the keys",
    "logger._target_": "where metrics go, never what they are",
    "paths.cache_dir": "where artifacts live",
}


def _leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v and f"{prefix}{k}" not in NOT_FLIPPED:
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def test_every_config_field_is_classified():
    c = OmegaConf.to_container(_compose(["logger=none", "paths.cache_dir=/tmp/x"]), resolve=True)
    classified = set(FLIPS) | set(STRUCTURAL) | set(NOT_FLIPPED)
    missing = [f for f in _leaves(c) if f not in classified]
    assert not missing, f"classify these fields in tests/test_keys.py: {missing}"


@pytest.mark.parametrize("field", sorted(FLIPS))
def test_flipping_a_field_changes_exactly_the_keys_of_what_it_shapes(stage_keys, field):
    base = stage_keys([])
    value, direct = FLIPS[field]
    flipped = stage_keys([f"{field}={value}"])
    assert set(flipped) == set(base)
    changed = {label for label in base if flipped[label] != base[label]}
    assert changed == _downstream(set(direct)) & set(base)


def test_objective_trainer_keys_change_training_unless_the_model_overrides_them(stage_keys):
    c = OmegaConf.to_container(_compose(["logger=none", "paths.cache_dir=/tmp/x"]), resolve=True)
    overridden = set(c["model"]["trainer_overrides"]["sft"])
    base = stage_keys([])
    new = {
        "learning_rate": 1e-3,
        "num_train_epochs": 5,
        "per_device_train_batch_size": 4,
        "warmup_ratio": 0.2,
        "max_length": 64,
        "weight_decay": 0.1,
        "lr_scheduler_type": "constant",
        "gradient_checkpointing": True,
        "save_steps": 50,
        "logging_steps": 3,
        "max_grad_norm": 0.5,
        "warmup_steps": 10,
    }
    for key, old in c["objective"]["trainer"].items():
        value = (not old) if isinstance(old, bool) else new.get(key)
        assert value is not None and value != old, f"give objective.trainer.{key} a flip value in this test"
        flipped = stage_keys([f"objective.trainer.{key}={value}"])
        changed = {label for label in base if flipped[label] != base[label]}
        # How often a checkpoint is written does not change what is trained.
        expected = set() if key in overridden or key == "save_steps" else _downstream({"train"}) & set(base)
        assert changed == expected, key


@pytest.mark.parametrize("field", sorted(STRUCTURAL))
def test_fields_that_choose_stages_leave_the_others_keys_alone(stage_keys, field):
    value, removed, added, changed = STRUCTURAL[field]
    base = stage_keys([])
    flipped = stage_keys([f"{field}={value}"])
    assert set(base) - set(flipped) == removed
    assert set(flipped) - set(base) == added
    assert {label for label in set(base) & set(flipped) if flipped[label] != base[label]} == changed


def _write_jsonl_dataset(folder: Path, shift: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, offset in (("train", 0), ("train2", 100), ("test", 200), ("test2", 300)):
        rows = [
            {
                "question": f"What is {i + offset + shift}?",
                "q2": f"Say {i + offset}.",
                "answer": str(i),
                "a2": str(i + 1),
                "solution": f"so \\boxed{{{i + 2}}}",
                "id": f"r{i + offset}",
            }
            for i in range(6)
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


#: Composition: dataset=jsonl with a real-weights model config. field -> (value, direct stages).
JSONL_FLIPS = {
    "dataset.train_split": ("train2", ("sample",)),
    "dataset.question_field": ("q2", ("sample", *EVALS_JSONL)),
    "dataset.answer_field": ("a2", ("sample", *EVALS_JSONL)),
    "dataset.gold_format": ("boxed", ("sample", *EVALS_JSONL)),  # golds from solution_field below
    "dataset.id_field": ("id", ("sample", *EVALS_JSONL)),
    "dataset.tests.test.split": ("test2", EVALS_JSONL),
    "dataset.max_train": (3, ("sample",)),
    "dataset.max_test": (3, EVALS_JSONL),
    "dataset.on_bad_row": ("skip", ()),  # no bad rows here: the same problems
    "model.chat_template": ("chatml", ("base_model", "sample", "train", *EVALS_JSONL)),
}


def test_jsonl_fields(stage_keys, tmp_path, tokenizer_dir):
    """Dataset file fields, the data path and the model path, on a bring-your-own dataset."""
    import shutil

    d1 = _write_jsonl_dataset(tmp_path / "d1")
    d2 = _write_jsonl_dataset(tmp_path / "d2", shift=1)
    d3 = _write_jsonl_dataset(tmp_path / "d3")  # the same content as d1 elsewhere
    weights2 = tmp_path / "weights2"
    shutil.copytree(tokenizer_dir, weights2)
    common = [
        "dataset=jsonl",
        "model=llama-3.2-1b",
        f"model.path={tokenizer_dir}",
        "dataset.solution_field=solution",
    ]
    base = stage_keys([*common, f"dataset.path={d1}"])
    assert set(base) == {"base_model", "sample", "grade", "build", "train", *EVALS_JSONL}

    def changed(*overrides: str) -> set[str]:
        flipped = stage_keys([*common, f"dataset.path={d1}", *overrides])
        return {label for label in base if flipped.get(label) != base[label]}

    for field, (value, direct) in JSONL_FLIPS.items():
        assert changed(f"{field}={value}") == _downstream(set(direct)) & set(base), field
    assert changed(f"dataset.path={d2}") == _downstream({"sample", *EVALS_JSONL}) & set(base)
    assert changed(f"dataset.path={d3}") == set()  # keyed by content, not by where it lives
    # Weights are keyed by where they are (a hub id or folder names them; their bytes are not hashed).
    assert changed(f"model.path={weights2}") == _downstream({"base_model"}) & set(base)
    assert changed("dataset.test_sets=[test]") == set()


def test_vanilla_runs_share_their_records_and_model(stage_keys):
    """power (or any mapping uniform at a = 0) at sharpness 0 trains exactly what uniform
    trains: a sharpness sweep through 0 reuses the uniform run's build and train stages."""
    uniform = stage_keys(["mapping=uniform"])
    assert stage_keys(["mapping=power", "east.sharpness=0"]) == uniform
    assert stage_keys(["mapping=accuracy", "east.sharpness=0"]) == uniform
    assert stage_keys(["mapping=power", "east.sharpness=0.5"])["build"] != uniform["build"]


MAPPING_V1 = '''from east.weighting import register_mapping


@register_mapping("{name}")
def soft_power(h, a):
    """h^a, softened."""
    return (h + 0.1) ** a
'''


def test_a_mapping_of_yours_is_keyed_by_its_code(stage_keys, tmp_path, monkeypatch):
    """A mapping registered in a module listed in `imports`: editing its body rebuilds the
    records it weights (it used to reuse them: the key covered the config, not the code); a
    comment in it changes nothing."""
    import importlib
    import sys

    from east.weighting import MAPPINGS

    name = "soft_power_keytest"
    module = tmp_path / "my_mappings_keytest.py"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    def keys_with(source: str) -> dict[str, str]:
        MAPPINGS.pop(name, None)
        sys.modules.pop("my_mappings_keytest", None)
        module.write_text(source)
        importlib.invalidate_caches()
        return stage_keys(["imports=[my_mappings_keytest]", f"east.mapping={name}"])

    try:
        first = keys_with(MAPPING_V1.format(name=name))
        commented = keys_with(
            MAPPING_V1.format(name=name).replace("softened.", "softened (a comment).") + "# end\n"
        )
        edited = keys_with(MAPPING_V1.format(name=name).replace("0.1", "0.2"))
    finally:
        MAPPINGS.pop(name, None)
    assert commented == first
    assert edited["build"] != first["build"] and edited["train"] != first["train"]
    assert edited["sample"] == first["sample"]


def test_stage_keys_follow_the_code_that_builds_them(stage_keys, monkeypatch):
    """Code in a stage's modules is in its key; a comment anywhere, or code in a module no
    stage reads, is not."""
    from east import codeid

    base = stage_keys([])
    real = codeid.sources.read_source

    def reading(edits):
        def read(module):
            source = real(module)
            return edits[module](source) if module in edits and source else source

        return read

    def keys_after(edits):
        codeid.clear_caches()
        monkeypatch.setattr(codeid.sources, "read_source", reading(edits))
        try:
            return stage_keys([])
        finally:
            monkeypatch.setattr(codeid.sources, "read_source", real)
            codeid.clear_caches()

    comments = {
        m: (lambda s: "# a new comment\n" + s.replace("\n\n", "\n\n# and another\n", 1))
        for m in ("east.stages.train", "east.grading.grade", "east.samplers.hf")
    }
    assert keys_after(comments) == base
    assert keys_after({"east.report": lambda s: s + "\nUNUSED = 1\n"}) == base  # no stage reads it
    changed = keys_after({"east.stages.train": lambda s: s + "\nEXTRA = 1\n"})
    assert {k for k in base if changed[k] != base[k]} == _downstream({"train"}) & set(base)


def test_an_unknown_mapping_says_how_to_register_one():
    from east.errors import ConfigError
    from east.validate import validate

    with pytest.raises(ConfigError, match=r"register_mapping\('name'\) in a module of yours .* imports"):
        validate(_compose(["east.mapping=mine", "paths.cache_dir=/tmp/x"]))
    with pytest.raises(ConfigError, match="invalid config imports: cannot import 'no_such_module_xyz'"):
        validate(_compose(["imports=[no_such_module_xyz]", "paths.cache_dir=/tmp/x"]))


def test_lora_settings_shape_the_train_key(stage_keys):
    """With peft.method=lora each LoRA setting shapes what trains (and only that)."""
    base = stage_keys(["peft=lora"])
    for field, value in {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "[q_proj]"}.items():
        flipped = stage_keys(["peft=lora", f"peft.{field}={value}"])
        changed = {label for label in base if flipped[label] != base[label]}
        assert changed == _downstream({"train"}) & set(base), field


def test_a_lora_train_key_holds_the_peft_version(stage_keys, monkeypatch):
    """PEFT builds the adapters a LoRA model is merged from: its version is in the train key
    with peft=lora, and in no key of a full fine-tuning run."""
    import east.codeid as codeid

    lora, full = stage_keys(["peft=lora"]), stage_keys([])
    real = codeid._version
    monkeypatch.setattr(codeid, "_version", lambda p: "0.0.0-other" if p == "peft" else real(p))
    codeid.clear_caches()
    try:
        lora_other, full_other = stage_keys(["peft=lora"]), stage_keys([])
    finally:
        codeid.clear_caches()
    assert {label for label in lora if lora_other[label] != lora[label]} == _downstream({"train"}) & set(lora)
    assert full_other == full


def _keys_after(stage_keys, monkeypatch, edits):
    """The stage keys with ``edits`` (module -> source edit) applied to the code as read."""
    real = codeid.sources.read_source

    def read(module):
        source = real(module)
        return edits[module](source) if module in edits and source else source

    codeid.clear_caches()
    monkeypatch.setattr(codeid.sources, "read_source", read)
    try:
        return stage_keys([])
    finally:
        monkeypatch.setattr(codeid.sources, "read_source", real)
        codeid.clear_caches()


def _changed(base, after):
    return {k for k in base if after[k] != base[k]}


def test_an_edit_in_a_function_a_stage_calls_rebuilds_it_and_what_follows(stage_keys, monkeypatch):
    """What was missed before: entropy() in east.weighting is called by grading, and the
    bodies of the sample, grade and evaluate stages live in the driver. Each edit changes the
    key of the stage that runs it and of every stage after it, and no other."""
    base = stage_keys([])
    ln = _keys_after(
        stage_keys, monkeypatch, {"east.weighting": lambda s: s.replace("np.log2(p)", "np.log(p)")}
    )
    # Modules are keyed whole, with what they import: the data loaders import the grading
    # package, which imports east.weighting, so the warm-up is keyed by it too (more rebuilt
    # than strictly needed, never less).
    assert _changed(base, ln) >= _downstream({"grade"}) & set(base)

    def in_driver(old, new, module=codeid.DRIVER):
        def edit(source):
            assert old in source, old
            return source.replace(old, new, 1)

        return {module: edit}

    grade_body = _keys_after(
        stage_keys,
        monkeypatch,
        in_driver(
            'write_json(d / "stats.json", grading_stats(', "write_json(d / 'stats.json', grading_stats("
        ),
    )
    assert grade_body == base  # the same code, written differently
    grade_body = _keys_after(
        stage_keys,
        monkeypatch,
        in_driver(
            'grading_stats(grades, g.timeout_s, "grade")', 'grading_stats(grades, g.timeout_s * 2, "grade")'
        ),
    )
    assert _changed(base, grade_body) == _downstream({"grade"}) & set(base)
    # The stages' parts live in further driver modules, keyed definition by definition too.
    generating = "east.stages.driver_generate"
    sample_body = _keys_after(
        stage_keys,
        monkeypatch,
        in_driver('responses += len(g["texts"])', 'responses += 2 * len(g["texts"])', generating),
    )
    assert _changed(base, sample_body) == _downstream({"sample"}) & set(base)
    evaluate_body = _keys_after(
        stage_keys,
        monkeypatch,
        in_driver('"answers_not_boxed": sum(', '"answers_not_boxed": 0 + sum(', generating),
    )
    assert _changed(base, evaluate_body) == {k for k in base if k.startswith("evaluate_")}
    # A helper the parts share: only the stages that call it (grade, and the evaluations).
    helper = _keys_after(
        stage_keys,
        monkeypatch,
        in_driver("    if timeouts:\n", "    if timeouts > 0:\n", "east.stages.driver_common"),
    )
    assert _changed(base, helper) == (
        _downstream({"grade"}) | {k for k in base if k.startswith("evaluate")}
    ) & set(base)


USER_MAPPING = '''from east.weighting import register_mapping
from {helpers} import lift

SCALE = {scale}


@register_mapping("{name}")
def scaled(h, a):
    """A mapping of yours calling a helper of yours."""
    return lift(h, a) * SCALE + _offset()


def _offset():
    return 0.1
'''
USER_HELPERS = """import numpy as np


def lift(h, a):
    return np.power(h + {shift}, a)
"""


def test_a_mapping_is_keyed_by_all_the_user_code_it_runs(stage_keys, tmp_path, monkeypatch):
    """A helper's edit, a constant's edit and an edit in a user module the mapping imports
    each rebuild from the build stage on (they used to be served stale: only the mapping's
    own function was keyed); a comment rebuilds nothing."""
    import importlib

    from east.weighting import MAPPINGS

    name = "scaled_stagecode"
    mod, helpers = "my_mapping_stagecode", "my_helpers_stagecode"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    def keys_with(scale="2", shift="0.1", offset="0.1", comment=""):
        MAPPINGS.pop(name, None)
        for m in (mod, helpers):
            sys.modules.pop(m, None)
        (tmp_path / f"{mod}.py").write_text(
            USER_MAPPING.format(helpers=helpers, scale=scale, name=name).replace(
                "return 0.1", f"return {offset}"
            )
            + comment
        )
        (tmp_path / f"{helpers}.py").write_text(USER_HELPERS.format(shift=shift) + comment)
        importlib.invalidate_caches()
        codeid.clear_caches()
        return stage_keys([f"imports=[{mod}]", f"east.mapping={name}"])

    try:
        first = keys_with()
        assert keys_with(comment="\n# a comment\n") == first
        rebuilt = _downstream({"build"}) & set(first)
        for edit in ({"scale": "0.5"}, {"offset": "0.2"}, {"shift": "0.3"}):
            after = keys_with(**edit)
            assert _changed(first, after) == rebuilt, edit
    finally:
        MAPPINGS.pop(name, None)
        codeid.clear_caches()
