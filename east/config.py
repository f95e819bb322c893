"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore, and checks.

The schema is the first entry of ``conf/config.yaml``'s defaults list, so every config group
merges onto typed nodes: a misspelt key or a wrong type fails when the config is composed.
:func:`validate` then checks values (ranges, registry names, trainer keys) before any
work starts, naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

OBJECTIVES = ("sft", "dpo", "kto")
SAMPLER_NAMES = ("hf", "vllm")
GRADING_MODES = ("equivalence", "string")


@dataclass
class TinyModelConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    vocab_size: int = 384
    seed: int = 0
    # Supervised warm-up on the dataset's warm-up split: the tiny model's "pretraining".
    warmup_steps: int = 600
    warmup_batch_size: int = 32
    warmup_lr: float = 3e-3


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str | None = None  # hub id or local folder; None for the embedded tiny model
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    system_prompt: str | None = None
    # A name in east.prompts.CHAT_TEMPLATES (llama3_paper, chatml), literal Jinja text, or
    # None for the tokenizer's own template (which may stamp today's date into prompts).
    chat_template: str | None = None
    tiny: TinyModelConfig | None = None
    # Weights shipped as a GGUF file inside a pip package: converted once into a cached checkpoint.
    gguf: dict[str, str] | None = None
    # Per-objective trainer settings that this model needs on top of conf/objective/*.yaml.
    trainer_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArithConfig:
    steps: int = 2
    max_number: int = 20
    warmup_size: int = 4000
    train_size: int = 200
    test_size: int = 200
    seed: int = 1234


@dataclass
class DatasetConfig:
    name: str = MISSING
    path: str | None = None  # local folder ({split}.jsonl) or .jsonl file; None: hub_id
    hub_id: str | None = None
    hub_config: str | None = None
    train_split: str = "train"
    # test set name -> overrides of the fields below (split, path, answer_field, ...)
    tests: dict[str, Any] = field(default_factory=dict)
    test_sets: list[str] | None = None  # which entries of tests to evaluate on (None: all)
    question_field: str = "question"
    solution_field: str | None = None
    answer_field: str | None = None
    gold_format: str = "field"
    id_field: str | None = None
    max_train: int | None = None
    max_test: int | None = None
    on_bad_row: str = "error"
    arith: ArithConfig | None = None


@dataclass
class ObjectiveConfig:
    name: str = MISSING
    sft_k: int = 1  # SFT: correct responses per question
    # Examples per optimiser step across all processes; accumulation is derived from it.
    global_batch_size: int = 16
    # Passed to TRL's SFTConfig / DPOConfig / KTOConfig (keys are checked against it).
    trainer: dict[str, Any] = field(default_factory=dict)


@dataclass
class EastConfig:
    mapping: str = MISSING  # a name in east.weighting.MAPPINGS
    sharpness: float = 1.0  # the mapping's a


@dataclass
class SamplerConfig:
    name: str = "hf"
    batch_size: int = 64  # rows (prompt x sample) per generate call
    tensor_parallel_size: int = 1  # vllm
    gpu_memory_utilization: float = 0.9  # vllm
    entropy_top_k: int = 20  # vllm: log-probs per token for token entropies (0: none)


@dataclass
class SamplingConfig:
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256


@dataclass
class EvaluationConfig:
    max_new_tokens: int = 256
    base: bool = True  # also evaluate the model before self-training
    only: bool = False  # evaluate the base model and stop (the paper's "default" row)
    samples: int = 0  # > 0: also sample this many answers per test question for maj@n / pass@k
    pass_k: list[int] = field(default_factory=lambda: [1])  # k values for pass@k (each <= samples)


@dataclass
class GradingConfig:
    mode: str = "equivalence"  # or "string": the reference's exact-string clusters
    processes: int = 1
    timeout_s: float = 1.0
    # Responses that state no final answer: "none" (unanswered) or "last_number" (the
    # Qwen2.5-Math toolkit's rule, which the paper's evaluation used).
    fallback: str = "last_number"


@dataclass
class FilterSettings:
    drop_all_correct: bool = True
    require_boxed_correct: bool = True
    require_boxed_incorrect: bool = True


@dataclass
class DistributedConfig:
    num_processes: int = 1  # > 1: the train stage runs under `accelerate launch`
    accelerate_config: str | None = None  # relative to the project root, or absolute
    launch_args: list[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    cache_dir: str = MISSING
    output_dir: str = MISSING
    # A folder holding gsm8k/ and math/ ({split}.jsonl): datasets load from it instead of the hub.
    data_dir: str | None = None


@dataclass
class Config:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    objective: ObjectiveConfig = MISSING
    east: EastConfig = field(default_factory=EastConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    logger: Any = MISSING
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    grading: GradingConfig = field(default_factory=GradingConfig)
    filters: FilterSettings = field(default_factory=FilterSettings)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    rounds: int = 1  # iterative self-training: sample -> grade -> weight -> train, R times
    experiment_name: str | None = None  # set by experiment configs; names the W&B run group
    paper_reference: dict[str, Any] | None = None  # experiment configs: the numbers they reproduce


def _local_data(data_dir: str | None, name: str) -> str | None:
    """``${east_data:${paths.data_dir},gsm8k}``: the dataset's folder under paths.data_dir, or
    None (load from the hub) when no data_dir is set."""
    if data_dir in (None, "", "None", "null"):
        return None
    return str(Path(data_dir).expanduser() / name)


def register_configs() -> None:
    ConfigStore.instance().store(name="east_schema", node=Config)
    OmegaConf.register_new_resolver("east_data", _local_data, replace=True)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"invalid config {key}={value!r}: {allowed}")


def validate(cfg: DictConfig | dict[str, Any]) -> None:
    """Value checks that a type cannot express. Raises ValueError naming the key."""
    from east.answers import FALLBACKS
    from east.weighting import MAPPINGS

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    if c["objective"]["name"] not in OBJECTIVES:
        _fail("objective.name", c["objective"]["name"], f"allowed: {', '.join(OBJECTIVES)}")
    if c["east"]["mapping"] not in MAPPINGS:
        _fail("east.mapping", c["east"]["mapping"], f"allowed: {', '.join(sorted(MAPPINGS))}")
    a = c["east"]["sharpness"]
    if not isinstance(a, int | float) or not math.isfinite(a):
        _fail("east.sharpness", a, "must be a finite number")
    s = c["sampling"]
    if s["n"] < 1:
        _fail("sampling.n", s["n"], "must be >= 1")
    if s["temperature"] < 0:
        _fail("sampling.temperature", s["temperature"], "must be >= 0")
    if not 0 < s["top_p"] <= 1:
        _fail("sampling.top_p", s["top_p"], "must be in (0, 1]")
    for key in ("sampling.max_new_tokens", "evaluation.max_new_tokens"):
        group, name = key.split(".")
        if c[group][name] < 1:
            _fail(key, c[group][name], "must be >= 1")
    if c["sampler"]["name"] not in SAMPLER_NAMES:
        _fail("sampler.name", c["sampler"]["name"], f"allowed: {', '.join(SAMPLER_NAMES)}")
    if c["grading"]["mode"] not in GRADING_MODES:
        _fail("grading.mode", c["grading"]["mode"], f"allowed: {', '.join(GRADING_MODES)}")
    if c["grading"]["fallback"] not in FALLBACKS:
        _fail("grading.fallback", c["grading"]["fallback"], f"allowed: {', '.join(FALLBACKS)}")
    if c["grading"]["processes"] < 1:
        _fail("grading.processes", c["grading"]["processes"], "must be >= 1")
    if c["rounds"] < 1:
        _fail("rounds", c["rounds"], "must be >= 1")
    e = c["evaluation"]
    if e["samples"] < 0:
        _fail("evaluation.samples", e["samples"], "must be >= 0")
    if e["samples"] and any(not 1 <= k <= e["samples"] for k in e["pass_k"]):
        _fail("evaluation.pass_k", e["pass_k"], f"each k must be in 1..evaluation.samples ({e['samples']})")
    if c["distributed"]["num_processes"] < 1:
        _fail("distributed.num_processes", c["distributed"]["num_processes"], "must be >= 1")
    if c["objective"]["sft_k"] < 1:
        _fail("objective.sft_k", c["objective"]["sft_k"], "must be >= 1")
    if c["model"]["tiny"] is None and not c["model"]["path"] and not c["model"]["gguf"]:
        _fail("model.path", c["model"]["path"], "a hub id or local folder is required for non-tiny models")
    from east.prompts import resolve_chat_template

    resolve_chat_template(c["model"]["chat_template"])
    _check_trainer_keys(c)
    batch_layout(c)


def batch_layout(c: dict[str, Any]) -> dict[str, int]:
    """How the objective's global batch is laid out over processes and accumulation steps.

    gradient_accumulation_steps = global_batch_size / (per_device_train_batch_size x
    processes); raises ValueError naming the keys when it does not divide.
    """
    from east.training import TRAINERS

    name = c["objective"]["name"]
    settings = trainer_settings(c)
    if "gradient_accumulation_steps" in settings:
        raise ValueError(
            "invalid config: gradient_accumulation_steps is derived from objective.global_batch_size "
            "(global / (per-device batch x processes)); set objective.global_batch_size instead"
        )
    per_device = settings.get("per_device_train_batch_size")
    if per_device is None:
        per_device = TRAINERS[name][1].__dataclass_fields__["per_device_train_batch_size"].default
    processes = c["distributed"]["num_processes"]
    total = c["objective"]["global_batch_size"]
    if total < 1 or per_device < 1 or total % (per_device * processes):
        raise ValueError(
            f"invalid config objective.global_batch_size={total}: it must be a multiple of "
            f"per_device_train_batch_size ({per_device}) x distributed.num_processes ({processes})"
        )
    if name == "kto" and settings.get("loss_type", "kto") == "kto" and per_device < 2:
        raise ValueError(
            f"invalid config: KTO's loss_type 'kto' estimates its KL term within a batch, so "
            f"per_device_train_batch_size must be >= 2 (got {per_device})"
        )
    return {"global_batch_size": total, "per_device_train_batch_size": per_device, "processes": processes,
            "gradient_accumulation_steps": total // (per_device * processes)}  # fmt: skip


def trainer_settings(c: dict[str, Any]) -> dict[str, Any]:
    """The TRL settings of the run's objective: the objective's, then the model's overrides
    for that objective on top (the command line overrides either)."""
    name = c["objective"]["name"]
    return {**c["objective"]["trainer"], **((c["model"]["trainer_overrides"] or {}).get(name) or {})}


def _check_trainer_keys(c: dict[str, Any]) -> None:
    from east.training import TRAINERS

    name = c["objective"]["name"]
    fields = {f.name for f in dataclasses.fields(TRAINERS[name][1])}
    sources = {"objective.trainer": c["objective"]["trainer"],
               f"model.trainer_overrides.{name}": (c["model"]["trainer_overrides"] or {}).get(name) or {}}  # fmt: skip
    for where, settings in sources.items():
        unknown = sorted(set(settings) - fields)
        if unknown:
            close = sorted(k for k in fields if any(u[:5] in k for u in unknown))[:5]
            raise ValueError(
                f"invalid config {where}: unknown {TRAINERS[name][1].__name__} key(s) {unknown}"
                + (f"; did you mean one of {close}?" if close else "")
            )
