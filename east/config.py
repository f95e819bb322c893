"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore, and checks.

The schema is the first entry of ``conf/config.yaml``'s defaults list, so every config group
merges onto typed nodes: a misspelt key or a wrong type fails when the config is composed.
:func:`validate` then checks values (ranges, registry names, trainer keys) before any
work starts, naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from east.errors import ConfigError

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
    raise ConfigError(f"invalid config {key}={value!r}: {allowed}")


def _get(c: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        c = c[part]
    return c


#: Range checks: key -> (kind, low, high). Integers are whole numbers (not bools); reals are
#: finite. ``None`` bounds are open; an optional key may also be null.
_INTS_AT_LEAST_1 = (
    "sampling.n", "sampling.max_new_tokens", "evaluation.max_new_tokens", "sampler.batch_size",
    "sampler.tensor_parallel_size", "grading.processes", "rounds", "distributed.num_processes",
    "objective.sft_k", "objective.global_batch_size",
)  # fmt: skip
_OPTIONAL_INTS_AT_LEAST_1 = ("dataset.max_train", "dataset.max_test")
_INTS_AT_LEAST_0 = ("sampler.entropy_top_k", "evaluation.samples")
_TINY_INTS = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size", "warmup_steps",
              "warmup_batch_size")  # fmt: skip
_ARITH_INTS = ("steps", "max_number", "warmup_size", "train_size", "test_size")
MAX_SEED = 2**32 - 1  # numpy's and torch's seed range
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
#: A Hugging Face hub id: "name" or "organisation/name".
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _int(key: str, value: Any, low: int, high: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    allowed = f"must be an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    if optional:
        allowed += " (or null for all)"
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        _fail(key, value, allowed)


def _real(key: str, value: Any, low: float, high: float = math.inf, *, open_low: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if open_low else '['}{low}, {high}]" if math.isfinite(high) else (
            f"> {low}" if open_low else f">= {low}")  # fmt: skip
        _fail(key, value, f"must be a finite number {interval}".replace("[", "in [").replace("(", "in ("))


def _choice(key: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        _fail(key, value, f"allowed: {', '.join(allowed)}")


def unknown_keys(c: Any, schema: Any = None, prefix: str = "") -> list[str]:
    """Keys of ``c`` that the dataclass ``schema`` (default: :class:`Config`) does not have.

    A ``+key=value`` override adds keys that no schema checks (Hydra allows it on purpose),
    so ``+east.sharpnes=2`` would otherwise be silently ignored. Free-form fields (dicts
    such as ``objective.trainer``) are not descended into."""
    schema = schema or Config
    fields = {f.name: f for f in dataclasses.fields(schema)}
    out: list[str] = []
    for key, value in c.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            out.append(f"{prefix}{key}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
            continue
        sub = _dataclass_of(fields[key].type)
        if sub is not None and isinstance(value, dict):
            out += unknown_keys(value, sub, f"{prefix}{key}.")
    return out


def _dataclass_of(tp: Any) -> Any:
    if isinstance(tp, str):
        tp = globals().get(tp.split(" |")[0].strip())
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _local_path_problem(value: str) -> str | None:
    """Why ``value`` is neither an existing local path nor a hub id, or None."""
    path = Path(value).expanduser()
    if path.exists():
        return None
    if value.startswith(("/", ".", "~")) or value.count("/") > 1 or not _HUB_ID_RE.fullmatch(value):
        return "no such file or folder (and not a hub id such as org/name)"
    return None


def validate(cfg: DictConfig | dict[str, Any]) -> None:
    """Every value the run depends on, checked before any stage runs. Raises
    :class:`~east.errors.ConfigError` naming the key, the value and what is allowed."""
    from east.grading import FALLBACKS
    from east.weighting import MAPPINGS

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    unknown = unknown_keys(c)
    if unknown:
        raise ConfigError(
            f"unknown config key(s): {', '.join(unknown)}. A '+' override adds keys that the schema "
            "(east/config.py) does not have, and nothing would read them"
        )
    _choice("objective.name", c["objective"]["name"], OBJECTIVES)
    _choice("east.mapping", c["east"]["mapping"], sorted(MAPPINGS))
    _real("east.sharpness", c["east"]["sharpness"], -math.inf)
    for key in _INTS_AT_LEAST_1:
        _int(key, _get(c, key), 1)
    for key in _OPTIONAL_INTS_AT_LEAST_1:
        _int(key, _get(c, key), 1, optional=True)
    for key in _INTS_AT_LEAST_0:
        _int(key, _get(c, key), 0)
    _int("seed", c["seed"], 0, MAX_SEED)
    _real("sampling.temperature", c["sampling"]["temperature"], 0.0)
    _real("sampling.top_p", c["sampling"]["top_p"], 0.0, 1.0, open_low=True)
    _real("sampler.gpu_memory_utilization", c["sampler"]["gpu_memory_utilization"], 0.0, 1.0, open_low=True)
    _real("grading.timeout_s", c["grading"]["timeout_s"], 0.0, open_low=True)
    _choice("sampler.name", c["sampler"]["name"], SAMPLER_NAMES)
    _choice("grading.mode", c["grading"]["mode"], GRADING_MODES)
    _choice("grading.fallback", c["grading"]["fallback"], FALLBACKS)
    e = c["evaluation"]
    if e["samples"] and any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= e["samples"]
                            for k in e["pass_k"]):  # fmt: skip
        _fail("evaluation.pass_k", e["pass_k"], f"each k must be in 1..evaluation.samples ({e['samples']})")
    _validate_model(c["model"])
    _validate_dataset(c["dataset"])
    accelerate = c["distributed"]["accelerate_config"]
    if accelerate:
        path = (
            Path(accelerate)
            if Path(accelerate).is_absolute()
            else Path(__file__).resolve().parents[1] / accelerate
        )
        if not path.is_file():
            _fail("distributed.accelerate_config", accelerate, f"no such file ({path})")
    _check_trainer_settings(c)
    batch_layout(c)


def _validate_model(m: dict[str, Any]) -> None:
    from east.prompts import resolve_chat_template

    _choice("model.dtype", m["dtype"], DTYPES)
    if m["tiny"] is not None and (m["path"] or m["gguf"]):
        _fail("model.path", m["path"] or m["gguf"], "model=tiny builds its own weights and reads no path; for "
              "real weights choose a model config (model=llama-3.2-1b model.path=...)")  # fmt: skip
    if m["tiny"] is not None:
        for key in _TINY_INTS:
            _int(f"model.tiny.{key}", m["tiny"][key], 1)
        _int("model.tiny.seed", m["tiny"]["seed"], 0, MAX_SEED)
        _real("model.tiny.warmup_lr", m["tiny"]["warmup_lr"], 0.0, open_low=True)
        if m["tiny"]["hidden_size"] % m["tiny"]["num_heads"]:
            _fail("model.tiny.num_heads", m["tiny"]["num_heads"], "must divide model.tiny.hidden_size")
    elif not m["path"] and not m["gguf"]:
        _fail("model.path", m["path"], "a hub id or local folder is required for non-tiny models")
    if m["path"]:
        problem = _local_path_problem(m["path"])
        if problem:
            _fail("model.path", m["path"], problem)
    try:
        resolve_chat_template(m["chat_template"])
    except ValueError as err:
        raise ConfigError(f"invalid config model.chat_template: {err}") from None


def _validate_dataset(d: dict[str, Any]) -> None:
    from east.data.loaders import GOLD_FORMATS

    _choice("dataset.on_bad_row", d["on_bad_row"], ("error", "skip"))
    _choice("dataset.gold_format", d["gold_format"], GOLD_FORMATS)
    for name, override in (d["tests"] or {}).items():
        if override and override.get("gold_format") is not None:
            _choice(f"dataset.tests.{name}.gold_format", override["gold_format"], GOLD_FORMATS)
    if d["test_sets"] is not None:
        unknown = sorted(set(d["test_sets"]) - set(d["tests"] or {}))
        if unknown or not d["test_sets"]:
            _fail(
                "dataset.test_sets",
                d["test_sets"],
                f"allowed: a non-empty subset of {', '.join(d['tests'] or {})}",
            )
    if d["path"] and not Path(d["path"]).expanduser().exists():
        _fail(
            "dataset.path",
            d["path"],
            "no such file or folder (set paths.data_dir or dataset.path to local copies)",
        )
    if d["name"] != "arith" and not d["path"] and not d["hub_id"]:
        _fail("dataset.path", d["path"], "a local path or dataset.hub_id is required")
    if d["arith"] is not None:
        for key in _ARITH_INTS:
            _int(f"dataset.arith.{key}", d["arith"][key], 1)
        _int("dataset.arith.seed", d["arith"]["seed"], 0, MAX_SEED)


def batch_layout(c: dict[str, Any]) -> dict[str, int]:
    """How the objective's global batch is laid out over processes and accumulation steps.

    gradient_accumulation_steps = global_batch_size / (per_device_train_batch_size x
    processes); raises ValueError naming the keys when it does not divide.
    """
    from east.training import TRAINERS

    name = c["objective"]["name"]
    settings = trainer_settings(c)
    if "gradient_accumulation_steps" in settings:
        raise ConfigError(
            "invalid config: gradient_accumulation_steps is derived from objective.global_batch_size "
            "(global / (per-device batch x processes)); set objective.global_batch_size instead"
        )
    per_device = settings.get("per_device_train_batch_size")
    if per_device is None:
        per_device = TRAINERS[name][1].__dataclass_fields__["per_device_train_batch_size"].default
    processes = c["distributed"]["num_processes"]
    total = c["objective"]["global_batch_size"]
    if total < 1 or per_device < 1 or total % (per_device * processes):
        raise ConfigError(
            f"invalid config objective.global_batch_size={total}: it must be a multiple of "
            f"per_device_train_batch_size ({per_device}) x distributed.num_processes ({processes})"
        )
    if name == "kto" and settings.get("loss_type", "kto") == "kto" and per_device < 2:
        raise ConfigError(
            f"invalid config: KTO's loss_type 'kto' estimates its KL term within a batch, so "
            f"per_device_train_batch_size must be >= 2 (got {per_device})"
        )
    return {"global_batch_size": total, "per_device_train_batch_size": per_device, "processes": processes,
            "gradient_accumulation_steps": total // (per_device * processes)}  # fmt: skip


def trainer_settings(c: dict[str, Any]) -> dict[str, Any]:
    """The TRL settings of the run's objective. Precedence, lowest first: the objective's
    ``objective.trainer``, then the model's ``model.trainer_overrides.<objective>``, then
    whatever the command line set (see :func:`apply_command_line_precedence`)."""
    name = c["objective"]["name"]
    return {**c["objective"]["trainer"], **((c["model"]["trainer_overrides"] or {}).get(name) or {})}


_TRAINER_OVERRIDE_RE = re.compile(r"^[+~]{0,2}objective\.trainer\.([A-Za-z_][\w]*)=")


def apply_command_line_precedence(c: dict[str, Any], overrides: list[str]) -> list[str]:
    """Make ``objective.trainer.KEY=...`` given on the command line win over the model's
    ``trainer_overrides`` for KEY (which otherwise sit on top of the objective's settings).
    Returns the keys it moved, for the log."""
    name = c["objective"]["name"]
    model = (c["model"]["trainer_overrides"] or {}).get(name) or {}
    moved = []
    for override in overrides:
        m = _TRAINER_OVERRIDE_RE.match(override)
        if m and m.group(1) in model:
            model.pop(m.group(1))
            moved.append(m.group(1))
    return moved


def _check_trainer_settings(c: dict[str, Any]) -> None:
    from east.training import TRAINERS

    name = c["objective"]["name"]
    config_cls = TRAINERS[name][1]
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    sources = {"objective.trainer": c["objective"]["trainer"],
               f"model.trainer_overrides.{name}": (c["model"]["trainer_overrides"] or {}).get(name) or {}}  # fmt: skip
    for where, settings in sources.items():
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            close = sorted({m for u in unknown for m in difflib.get_close_matches(u, list(fields), n=3)})
            raise ConfigError(
                f"invalid config {where}: unknown {config_cls.__name__} key(s) {unknown}"
                + (f"; did you mean one of {close}?" if close else "")
            )
        for key, value in settings.items():
            expected = _type_of(config_cls, fields[key])
            if expected is not None and not _type_ok(value, expected):
                _fail(f"{where}.{key}", value, f"{config_cls.__name__}.{key} takes {_type_name(expected)}")
            if key in ("learning_rate", "num_train_epochs"):
                _real(f"{where}.{key}", value, 0.0, open_low=True)
            elif key == "per_device_train_batch_size":
                _int(f"{where}.{key}", value, 1)


def _type_of(cls: Any, f: Any) -> Any:
    if not isinstance(f.type, str):
        return f.type
    try:
        return typing.get_type_hints(cls)[f.name]
    except Exception:  # an annotation this Python cannot resolve: not checked
        return None


def _type_ok(value: Any, tp: Any) -> bool:
    import enum
    import types

    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # Union[SchedulerType, str]: a string names a member
            return any(_type_ok(value, e) for e in enums)
        return any(_type_ok(value, a) for a in args)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp) or value in {m.value for m in tp}
    if origin in (list, dict, tuple):
        return isinstance(value, list | tuple) if origin in (list, tuple) else isinstance(value, dict)
    return True  # anything richer is left to TRL


def _type_name(tp: Any) -> str:
    import enum

    enums = [a for a in (tp, *typing.get_args(tp)) if isinstance(a, type) and issubclass(a, enum.Enum)]
    if enums:
        return "one of " + ", ".join(str(m.value) for m in enums[0])
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
