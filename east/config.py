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
    chat_template: str | None = None  # overrides the tokenizer's template when set
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


def register_configs() -> None:
    ConfigStore.instance().store(name="east_schema", node=Config)


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"invalid config {key}={value!r}: {allowed}")


def validate(cfg: DictConfig | dict[str, Any]) -> None:
    """Value checks that a type cannot express. Raises ValueError naming the key."""
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
    _check_trainer_keys(c)


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
