"""Every option of every config group composes and instantiates; bad values fail fast."""

from __future__ import annotations

import importlib.util
import re
import sys

import hydra
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

import east.validate
from east.errors import ConfigError
from east.objectives import objective_names
from east.validate import apply_command_line_precedence, trainer_settings, validate
from tests.helpers import CONF, compose


def _compose(overrides=()):
    return compose(overrides)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUPS = [
    "model",
    "dataset",
    "objective",
    "mapping",
    "sampler",
    "logger",
    "scale",
    "distributed",
    "peft",
    "debug",
]


_CHECK_SAMPLER_INSTALLED = east.validate._check_sampler_installed
_CHECK_DEEPSPEED_INSTALLED = east.validate._check_deepspeed_installed


@pytest.fixture(autouse=True)
def _any_sampler_package(monkeypatch):
    """These tests check configs, not this machine: sampler=vllm validates here without vLLM
    installed (the package check itself is tested below)."""
    monkeypatch.setattr("east.validate._check_sampler_installed", lambda c: None)
    monkeypatch.setattr("east.validate._check_deepspeed_installed", lambda c: None)


def test_debug_fast_is_exactly_the_tests_small_loop(tmp_path):
    """README's `debug=fast` composes to the shrunken loop the end-to-end tests run (their
    SMALL overrides); with a real model chosen it is refused in one line (it shrinks the tiny
    model only)."""
    from tests.helpers import SMALL

    fast = _compose(["debug=fast", f"paths.cache_dir={tmp_path}"])
    assert fast == _compose([*SMALL, f"paths.cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="debug=fast"):
        validate(_compose(["model=llama-3.2-1b", "debug=fast", f"paths.cache_dir={tmp_path}"]))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_validates(group, option, tmp_path, monkeypatch):
    extra = [f"dataset.path={tmp_path}"] if (group, option) == ("dataset", "jsonl") else []
    if group == "distributed" and option in ("ddp", "fsdp", "zero3"):
        extra.append("model=llama-3.2-1b")  # 8 GPUs x 2 = the global batch 16 (tiny's 8 x 8 is not)
    if (group, option) in (("sampler", "vllm"), ("scale", "paper")):  # scale=paper samples with vLLM
        extra.append("model.tiny.num_heads=2")  # head_dim 32: what vLLM's CPU attention takes
    cfg = _compose([f"{group}={option}", f"paths.cache_dir={tmp_path}", *extra])
    if group == "distributed" and option in ("fsdp", "zero3"):
        # The GPU configs (bf16 autocast) are refused on a CPU machine, naming the CPU variant
        # that shards the same way in fp32; they validate where CUDA is visible.
        with pytest.raises(ValueError, match=f"needs CUDA devices.*distributed={option}_cpu"):
            validate(cfg)
        monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    if (
        group == "distributed"
        and option in ("zero3", "zero3_cpu")
        and importlib.util.find_spec("deepspeed") is None
    ):
        # Without DeepSpeed a ZeRO-3 config is refused in one line saying how to get it.
        with pytest.raises(ValueError, match=r"pip install 'east\[deepspeed\]'"):
            _CHECK_DEEPSPEED_INSTALLED(validate(cfg))
    if (group, option) == ("sampler", "vllm") and importlib.util.find_spec("vllm") is None:
        # Without vLLM this machine refuses the backend in one line; the config itself is fine.
        with pytest.raises(ValueError, match=r"pip install 'east\[vllm\]'"):
            _CHECK_SAMPLER_INSTALLED(validate(cfg))
    validate(cfg)
    if group == "logger":
        logger = hydra.utils.instantiate(cfg.logger)
        assert hasattr(logger, "log") and hasattr(logger, "finish")
    if group == "mapping":
        from east.weighting import get_mapping

        assert get_mapping(cfg.east.mapping).name == option
    if group == "sampler":
        module = cfg.sampler._target_.rsplit(".", 1)[0]
        assert module == {"hf": "east.samplers.hf", "vllm": "east.samplers.vllm"}[option]
        if option == "hf":
            from east.stages.driver import make_sampler

            sampler = make_sampler(validate(cfg))
            assert hasattr(sampler, "generate") and sampler.cache_key == "hf"
        else:  # the class loads without vLLM (the config check above reads it)
            monkeypatch.delitem(sys.modules, module, raising=False)  # a test's fake may be loaded
            assert importlib.import_module(module).VLLMSampler.own_process
    if group == "distributed" and cfg.distributed.accelerate_config:
        assert (CONF.parent / cfg.distributed.accelerate_config).is_file()


def test_mapping_composes_into_the_east_node():
    cfg = _compose(["mapping=accuracy", "east.sharpness=0.5"])
    assert (cfg.east.mapping, cfg.east.sharpness) == ("accuracy", 0.5)
    assert _compose(["mapping=power", "east.sharpness=2"]).east.sharpness == 2
    assert _compose(["mapping=uniform"]).east.sharpness == 0


BAD_VALUES = [
    (["sampling.n=0"], "sampling.n"),
    (["sampling.temperature=-1"], "sampling.temperature"),
    (["sampling.top_p=0"], "sampling.top_p"),
    # Objectives are registered (east.objectives), like mappings: checked after imports.
    (["objective.name=ppo"], "objective.name"),
    (["east.sharpness=nan"], "east.sharpness"),
    (["east.sharpness=inf"], "east.sharpness"),
    (
        ["east.mapping=powr"],
        "allowed: accuracy, exponential, local_uncertainty, power, rejected, uniform",
    ),
    (["+objective.trainer.learning_rat=1e-4"], "unknown SFTConfig key"),
    # The values a hostile user tried that used to be accepted (issue 10, section 4).
    (["sampling.temperature=nan"], r"sampling.temperature=nan: must be a finite number in \[0.0, 100.0\]"),
    (["sampling.top_p=nan"], "sampling.top_p"),
    (["seed=-1"], "seed=-1: must be an integer >= 0"),
    (["seed=4294967296"], "seed=4294967296"),
    (["grading.timeout_s=0"], r"grading.timeout_s=0.0: must be a finite number in \[0.01, 3600.0\]"),
    (["grading.timeout_s=-1"], "grading.timeout_s"),
    (["grading.timeout_s=inf"], "grading.timeout_s"),
    (["sampler.batch_size=0"], "sampler.batch_size=0: must be an integer >= 1"),
    (["sampler.batch_size=-4"], "sampler.batch_size=-4"),
    (["dataset.max_train=-5"], "dataset.max_train=-5: must be an integer >= 1"),
    (["dataset.max_test=0"], "dataset.max_test=0"),
    (["model.path=/nonexistent"], "model.path='/nonexistent'"),
    (["model=llama-3.2-1b", "model.path=/nonexistent"], "no such file or folder"),
    (["model=llama-3.2-1b", "model.path=./not/here/either"], "no such file or folder"),
    (["+east.sharpnes=2"], r"unknown config key\(s\): east.sharpnes \(did you mean east.sharpness\?\)"),
    (["+sampling.temprature=0.5"], "sampling.temprature"),
    (["+foo=1"], "unknown config key"),
    (
        ["objective.trainer.learning_rate=abc"],
        "objective.trainer.learning_rate='abc': SFTConfig.learning_rate takes float",
    ),
    (["objective.trainer.learning_rate=-1e-4"], "objective.trainer.learning_rate"),
    (["objective.trainer.num_train_epochs=0"], "num_train_epochs"),
    (["objective.trainer.lr_scheduler_type=cosinus"], "lr_scheduler_type"),
    (["model.dtype=float8"], "model.dtype"),
    (["model.tiny.num_heads=5"], "must divide model.tiny.hidden_size"),
    (["model.tiny.warmup_steps=0"], "model.tiny.warmup_steps"),
    (["dataset.arith.train_size=0"], "dataset.arith.train_size"),
    (["sampler=vllm", "sampler.gpu_memory_utilization=1.5"], "sampler.gpu_memory_utilization"),
    (["sampler=vllm", "sampler.entropy_top_k=-1"], "sampler.entropy_top_k"),
    (
        ["+sampler.batch_sise=8"],
        r"unknown config key\(s\): sampler.batch_sise \(did you mean sampler.batch_size\?\)",
    ),
    (["evaluation.samples=4", "evaluation.pass_k=[8]"], "evaluation.pass_k"),
    (["distributed.accelerate_config=conf/accelerate/nope.yaml"], "distributed.accelerate_config"),
    (["rounds=0"], "rounds=0"),
    # Values that validated and then failed late, or trained nothing sane (issue 21).
    (["sampling.temperature=1e-40"], "0 (greedy) or at least 1e-05"),
    (["grading.timeout_s=1e300"], r"grading.timeout_s=1e\+300"),
    (["objective.trainer.max_length=0"], "objective.trainer.max_length=0"),
    (["east.sharpness=1e308"], r"east.sharpness=1e\+308: must be a finite number in \[-20.0, 20.0\]"),
    (["+objective.trainer.seed=3"], "seed set by the train stage itself"),
    (["+objective.trainer.output_dir=/tmp/x"], "output_dir set by the train stage itself"),
    (["+objective.trainer.report_to=[wandb]"], "report_to set by the train stage itself"),
    (["+objective.trainer.save_strategy=steps"], "save_strategy set by the train stage itself"),
    (["+objective.trainer.bf16=false"], "bf16 set by the train stage itself"),
    (["paths.cache_dir=''"], "paths.cache_dir='': must name a folder"),
    (["model.tiny.vocab_size=1"], "model.tiny.vocab_size=1: must be an integer >= 259"),
    (["+objective.trainer.max_steps=0"], "must be -1 (epochs decide) or at least 1"),
    (["objective.trainer.learning_rate=2.0"], "objective.trainer.learning_rate=2.0"),
    (["paths.lock_timeout_s=0"], "paths.lock_timeout_s"),
    (["seed=${seed}"], "seed: Recursive interpolation detected"),
    (
        ["paths.cache_dir=${oc.env:EAST_UNSET_VARIABLE}"],
        "Environment variable 'EAST_UNSET_VARIABLE' not found",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES)
def test_invalid_values_fail_before_work_naming_the_key(overrides, message):
    cfg = _compose(overrides)
    pattern = message if "\\(" in message else message.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ConfigError, match=pattern):
        validate(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["objective=ppo"], "Available options in 'objective'"),
        (["mapping=powr"], "Available options in 'mapping'"),
        (["east.sharpnes=2"], "sharpnes"),
        (["sampling.n=many"], "sampling.n"),
        # Closed choices are Enums: a value outside them fails at composition.
        (["grading.mode=exact"], r"expected one of \[equivalence, string\]"),
        (["grading.fallback=first"], r"expected one of \[none, last_number\]"),
        (["dataset.on_bad_row=ignore"], r"expected one of \[error, skip\]"),
    ],
)
def test_unknown_options_and_typos_fail_at_compose(overrides, message):
    with pytest.raises(ConfigCompositionException) as err:
        _compose(overrides)
    assert re.search(message, f"{err.value} {err.value.__cause__}")


def test_an_empty_cache_dir_from_the_environment_is_refused(monkeypatch):
    """EAST_CACHE_DIR= (set but empty) would put the cache in the current folder."""
    monkeypatch.setenv("EAST_CACHE_DIR", "")
    with pytest.raises(ConfigError, match="paths.cache_dir='': must name a folder .*EAST_CACHE_DIR"):
        validate(_compose([]))


def test_print_config_is_plain_yaml():
    cfg = _compose()
    text = OmegaConf.to_yaml(cfg)
    assert "objective:" in text and "sharpness:" in text


def test_global_batch_that_the_gpu_count_cannot_hold_is_refused(tmp_path):
    cfg = _compose(["distributed=ddp", f"paths.cache_dir={tmp_path}"])  # tiny: 8 per device x 8
    with pytest.raises(ValueError, match=r"global_batch_size=16: .* \(8\) x distributed.num_processes \(8\)"):
        validate(cfg)
    validate(_compose(["distributed=ddp", "objective.global_batch_size=64", f"paths.cache_dir={tmp_path}"]))


def test_kto_needs_two_examples_per_device(tmp_path, monkeypatch):
    """Caught by the rehearsal: KTO's batch KL estimate fails at the first step with 1."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # the 8B cells train under ZeRO-3
    cfg = _compose(
        [
            "objective=kto",
            "model=llama-3.2-1b",
            "objective.trainer.per_device_train_batch_size=1",
            f"paths.cache_dir={tmp_path}",
        ]
    )
    with pytest.raises(ValueError, match="per_device_train_batch_size must be >= 2"):
        validate(cfg)
    for name in EXPERIMENTS_KTO:
        validate(_compose([f"experiment={name}", f"paths.cache_dir={tmp_path}"]))


EXPERIMENTS_KTO = sorted(p.stem for p in (CONF / "experiment").glob("*_kto*.yaml"))


def test_the_command_line_wins_over_the_model_trainer_overrides():
    """Precedence, lowest first: objective.trainer, model.trainer_overrides, the command line."""
    c = validate(_compose(["objective.trainer.learning_rate=1e-4", "paths.cache_dir=/tmp/x"]))
    assert trainer_settings(c)["learning_rate"] == 3e-4  # the tiny model's override, without the rule
    moved = apply_command_line_precedence(c, ["objective.trainer.learning_rate=1e-4", "seed=3"])
    assert moved == ["learning_rate"]
    assert trainer_settings(c)["learning_rate"] == 1e-4
    assert trainer_settings(c)["num_train_epochs"] == 3  # the model's other overrides stay


def test_the_default_and_the_testbed_are_the_calibrated_budgets():
    """docs/testbed.md: `python run.py` is a narrower tiny model (hidden 64) warmed up to its
    plateau on the task with a slip, trained by SFT for 3 epochs on 600 questions and tested on
    all 1,000; scale=testbed is the testbed's wider model (hidden 96) on the plain task with its
    500-step warm-up, 5 SFT epochs and every question. Both share the warm-up's batch and rate,
    the learning rate and the sampling budget."""
    default = validate(_compose(["paths.cache_dir=/tmp/x"]))
    testbed = validate(_compose(["scale=testbed", "paths.cache_dir=/tmp/x"]))
    for c, hidden, inter, epochs, train, test, warmup, slip in (
        (default, 64, 192, 3, 600, None, 1000, 0.6),
        (testbed, 96, 288, 5, None, None, 500, 0.0),
    ):
        assert (c.model.tiny.hidden_size, c.model.tiny.intermediate_size) == (hidden, inter)
        assert (c.model.tiny.warmup_steps, c.model.tiny.warmup_batch_size, c.model.tiny.warmup_lr) == (
            warmup,
            32,
            3e-3,
        )
        # The default's warm-up runs to its plateau on a task with a slip; the testbed keeps
        # the plain task and the 500-step warm-up its results were measured with.
        assert c.dataset.arith.warmup_short_share == slip
        assert c.dataset.arith.warmup_slip_items == ["apples", "pens", "cards", "coins"]
        assert trainer_settings(c)["num_train_epochs"] == epochs
        assert trainer_settings(c)["learning_rate"] == 3e-4
        assert (c.dataset.max_train, c.dataset.max_test) == (train, test)
        assert (c.sampling.n, c.sampling.temperature, c.objective.sft_k) == (8, 0.5, 8)
    # The testbed is for the tiny model: with real weights it is refused in one line.
    with pytest.raises(ConfigError, match="scale=testbed"):
        validate(_compose(["model=llama-3.2-1b", "scale=testbed", "paths.cache_dir=/tmp/x"]))


def _run_cli(*overrides, env=None):
    import os
    import subprocess

    return subprocess.run(
        [sys.executable, str(CONF.parent / "run.py"), "logger=none", *overrides],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_a_bad_value_is_one_line_without_traceback_and_exits_nonzero(tmp_path):
    out = _run_cli("grading.timeout_s=0", f"paths.cache_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "Error: invalid config grading.timeout_s=0.0: must be a finite number in [0.01, 3600.0]"
    )
    assert "Traceback" not in out.stderr + out.stdout
    assert not any(tmp_path.glob("*/*/stage.json"))  # nothing was built
    full = _run_cli(
        "grading.timeout_s=0",
        f"paths.cache_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}/run",
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert full.returncode != 0 and "Traceback" in full.stderr


#: Every numeric field of the config (vLLM's with sampler=vllm), tried at each extreme below.
NUMERIC_FIELDS = [
    *(
        f"model.tiny.{k}"
        for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size")
    ),
    *(f"model.tiny.{k}" for k in ("seed", "warmup_steps", "warmup_batch_size", "warmup_lr")),
    "dataset.max_train",
    "dataset.max_test",
    "dataset.max_question_chars",
    *(
        f"dataset.arith.{k}"
        for k in (
            "steps",
            "max_number",
            "warmup_short_share",
            "warmup_size",
            "train_size",
            "test_size",
            "seed",
        )
    ),
    "objective.sft_k",
    "objective.global_batch_size",
    *(f"objective.trainer.{k}" for k in ("learning_rate", "num_train_epochs", "per_device_train_batch_size")),
    *(f"objective.trainer.{k}" for k in ("warmup_steps", "save_steps", "logging_steps", "max_length")),
    "east.sharpness",
    "sampler.batch_size",
    "sampler.chunk_prompts",
    "sampler.data_parallel_size",
    *(f"vllm:sampler.{k}" for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len")),
    *(f"vllm:sampler.{k}" for k in ("entropy_top_k", "chunk_requests")),
    "sampling.n",
    "sampling.temperature",
    "sampling.top_p",
    "sampling.max_new_tokens",
    "evaluation.max_new_tokens",
    "evaluation.samples",
    "grading.processes",
    "grading.timeout_s",
    "distributed.num_processes",
    "paths.lock_timeout_s",
    "resources.gpus",
    "resources.cpus_per_gpu",
    "resources.mem_gb_per_gpu",
    "seed",
    "rounds",
]
EXTREMES = ["0", "-1", "1e-300", "1e300", str(2**62)]
#: The extremes that validate, each because it works, with what it does. Every other extreme
#: must be refused before any work: none may validate and then fail late or run wrong.
WORKS = {
    ("model.tiny.seed", "0"): "a seed",
    ("dataset.arith.seed", "0"): "a seed",
    ("dataset.arith.warmup_short_share", "0"): "the plain task: no slip",
    ("dataset.arith.warmup_short_share", "1e-300"): "rounds to no slipped solution: the plain task",
    ("seed", "0"): "a seed",
    ("dataset.max_train", str(2**62)): "a cap above the data: every row",
    ("dataset.max_test", str(2**62)): "a cap above the data: every row",
    ("objective.trainer.warmup_steps", "0"): "no learning-rate warm-up",
    ("objective.trainer.warmup_steps", "1e-300"): "a fraction of the steps, rounded up: one step",
    ("objective.trainer.save_steps", "0"): "no checkpoints",
    ("objective.trainer.logging_steps", "1e-300"): "a fraction of the steps, rounded up: every step",
    ("objective.trainer.num_train_epochs", "1e-300"): "epochs x steps rounded up: one optimiser step",
    ("east.sharpness", "0"): "vanilla self-training",
    ("east.sharpness", "-1"): "favours confident questions (the paper sweeps -3 to 3)",
    ("east.sharpness", "1e-300"): "h^a = 1 for h > 0: vanilla in effect",
    ("vllm:sampler.entropy_top_k", "0"): "no token entropies",
    ("sampling.temperature", "0"): "greedy decoding",
    ("sampling.top_p", "1e-300"): "only the most likely token: greedy in effect",
    ("evaluation.samples", "0"): "no maj@n / pass@k",
    ("paths.lock_timeout_s", "1e-300"): "fail at once when another process builds a stage",
}


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_numeric_extremes_are_refused_before_work_or_known_to_work(field, tmp_path, monkeypatch):
    """Each numeric field at 0, -1, 1e-300, 1e300 and 2^62: refused at composition or
    validation (one line from run.py), or listed in WORKS with why it works."""
    prefix = ["sampler=vllm", "model.tiny.num_heads=2"] if field.startswith("vllm:") else []
    key = field.removeprefix("vllm:")
    for value in EXTREMES:
        try:
            validate(_compose([*prefix, f"{key}={value}", f"paths.cache_dir={tmp_path}"]))
        except (ConfigError, ConfigCompositionException, ValidationError):
            assert (field, value) not in WORKS, f"{field}={value} is listed as working but refused"
            continue
        assert (field, value) in WORKS, f"{field}={value} validates: refuse it, or list in WORKS why it works"


def test_vllm_with_a_tiny_model_vllm_cannot_run_is_one_line(tmp_path):
    """vLLM's CPU attention needs head_dim >= 32: the default tiny model (64 / 4 = 16) is
    refused before its warm-up, naming head_dim; debug=fast's (64 / 2) and a GPU are fine."""
    from east.validate import _check_sampler

    c = validate(_compose(["sampler=vllm", f"paths.cache_dir={tmp_path}"]), devices=False)
    with pytest.raises(ConfigError, match=r"model.tiny.num_heads.*head_dim is 64 / 4 = 16.*head_dim >= 32"):
        _check_sampler(c)
    _check_sampler(
        validate(_compose(["sampler=vllm", "debug=fast", f"paths.cache_dir={tmp_path}"]), devices=False)
    )
    _check_sampler(validate(_compose([f"paths.cache_dir={tmp_path}"]), devices=False))  # the HF sampler


@pytest.mark.parametrize("objective", objective_names())
def test_the_default_checkpoints_often_enough_to_resume(objective):
    # The default trains about 240 optimiser steps (SFT; DPO and KTO fewer): a checkpoint
    # every 200 left an interrupted run nothing to resume from. At least 4 in 240 now, and
    # the command line still wins.
    cfg = validate(_compose([f"objective={objective}"]))
    assert 0 < trainer_settings(cfg)["save_steps"] <= 240 // 4
    line = ["objective.trainer.save_steps=7"]
    cfg = validate(_compose([f"objective={objective}", *line]), command_line=line)
    assert trainer_settings(cfg)["save_steps"] == 7


def test_a_one_node_launch_takes_a_free_port_unless_the_user_chose_one(tmp_path):
    from east.stages.train import _port_chosen

    assert not _port_chosen(None, [])  # the driver then passes --main_process_port 0
    assert not _port_chosen(None, ["--multi_gpu", "--num_machines", "1"])
    for name in ("zero3_cpu", "fsdp_cpu", "zero3", "fsdp", "ddp"):
        assert not _port_chosen(CONF / "accelerate" / f"{name}.yaml", [])
    assert _port_chosen(None, ["--main_process_port", "29611"])
    assert _port_chosen(None, ["--num_machines=2"])
    config = tmp_path / "acc.yaml"
    config.write_text("main_process_port: 29611\nnum_machines: 1\n")
    assert _port_chosen(config, [])
    config.write_text("num_machines: 2\nmain_process_ip: 10.0.0.1\n")
    assert _port_chosen(config, [])
