"""Typed configuration: one dataclass per config group, used both as the Hydra schema and
as the runtime argument.

The schema is the first entry of ``conf/config.yaml``'s defaults list, so every config group
merges onto typed nodes: a misspelt key, a wrong type or a value outside a closed choice
(an Enum) fails when the config is composed. :func:`validate` turns the composed config
into a :class:`Config` once (``OmegaConf.to_object``); each dataclass checks its ranges in
``__post_init__``, and the checks that span groups (trainer keys, batch layout) follow. From
there on, code reads typed fields (``config.objective.name``), never string keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from east.checks import MAX_SEED, check_choice, check_int, check_real, fail, import_user_modules, unset
from east.data import ArithConfig, DatasetConfig
from east.errors import ConfigError
from east.grading import Fallback, GradingMode
from east.samplers.base import sampler_class
from east.sampling_params import SamplingParams
from east.selection import FilterConfig

__all__ = [
    "ArithConfig",
    "Config",
    "DatasetConfig",
    "FilterConfig",
    "SamplingParams",
    "batch_layout",
    "register_configs",
    "trainer_settings",
    "validate",
]

DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
#: A Hugging Face hub id: "name" or "organisation/name".
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
#: The project root, against which relative config paths (accelerate configs) resolve.
ROOT = Path(__file__).resolve().parents[1]


#: Upper bounds of the tiny model's sizes (a CPU model; far beyond: no run finishes).
TINY_LIMITS = {
    "hidden_size": 8192,
    "num_layers": 128,
    "num_heads": 256,
    "intermediate_size": 65536,
    "warmup_steps": 10_000_000,
    "warmup_batch_size": 65536,
}
#: |east.sharpness| at most this: beyond it the raw weights overflow float64 for entropies of
#: up to 10,000 samples (the paper sweeps -3 to 3).
MAX_SHARPNESS = 20.0


@dataclass
class TinyModelConfig:
    """``model.tiny``: the embedded LLaMA's shape and its supervised warm-up (its "pretraining")."""

    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 288
    vocab_size: int = 384
    seed: int = 0
    warmup_steps: int = 1000
    warmup_batch_size: int = 32
    warmup_lr: float = 3e-3

    def __post_init__(self) -> None:
        for key, high in TINY_LIMITS.items():
            check_int(f"model.tiny.{key}", getattr(self, key), 1, high)
        # The byte-level BPE starts from 256 byte tokens and 3 special ones: fewer is not a
        # vocabulary it can build (it would silently keep 259).
        check_int("model.tiny.vocab_size", self.vocab_size, 259, 1 << 20)
        check_int("model.tiny.seed", self.seed, 0, MAX_SEED)
        check_real("model.tiny.warmup_lr", self.warmup_lr, 1e-12, 1.0)
        if self.hidden_size % self.num_heads:
            fail("model.tiny.num_heads", self.num_heads, "must divide model.tiny.hidden_size")


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

    def __post_init__(self) -> None:
        from east.prompts import resolve_chat_template

        check_choice("model.dtype", self.dtype, DTYPES)
        if self.tiny is not None and (self.path or self.gguf):
            fail(
                "model.path",
                self.path or self.gguf,
                f"model.tiny is set (by model=tiny, or debug=fast or scale=testbed, which are for the tiny model) on "
                f"model {self.name!r}, which reads weights: model.tiny builds its own weights and "
                "reads no path; for real weights leave model.tiny null (model=llama-3.2-1b model.path=...)",
            )
        elif self.tiny is None and not self.path and not self.gguf:
            fail("model.path", self.path, "a hub id or local folder is required for non-tiny models")
        if self.path:
            problem = _local_path_problem(self.path)
            if problem:
                fail("model.path", self.path, problem)
        try:
            resolve_chat_template(self.chat_template)
        except ValueError as err:
            raise ConfigError(f"invalid config model.chat_template: {err}") from None


@dataclass
class ObjectiveConfig:
    name: str = MISSING  # a name in east.objectives.OBJECTIVES (registered, so open-ended)
    sft_k: int = 1  # SFT: correct responses per question
    # Examples per optimiser step across all processes; accumulation is derived from it.
    global_batch_size: int = 16
    # Passed to the objective's TRL config (SFTConfig, DPOConfig, ...; keys are checked against it).
    trainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from east.objectives import OBJECTIVES

        if not unset(self.name) and self.name not in OBJECTIVES:
            fail(
                "objective.name",
                self.name,
                f"allowed: {', '.join(OBJECTIVES)}; to add one, register it with "
                "east.objectives.register_objective in a module of yours and list that module in imports "
                "(README: Add your own objective)",
            )
        check_int("objective.sft_k", self.sft_k, 1, 10_000)
        check_int("objective.global_batch_size", self.global_batch_size, 1, 1 << 20)


@dataclass
class EastConfig:
    mapping: str = MISSING  # a name in east.weighting.MAPPINGS (registered, so open-ended)
    sharpness: float = 1.0  # the mapping's a

    def __post_init__(self) -> None:
        from east.weighting import MAPPINGS

        if not unset(self.mapping) and self.mapping not in MAPPINGS:
            fail(
                "east.mapping",
                self.mapping,
                f"allowed: {', '.join(sorted(MAPPINGS))}; to add one, register it with "
                "@east.weighting.register_mapping('name') in a module of yours and list that module "
                "in imports (README: Your own mapping)",
            )
        check_real("east.sharpness", self.sharpness, -MAX_SHARPNESS, MAX_SHARPNESS)


@dataclass
class EvaluationConfig:
    max_new_tokens: int = 256
    base: bool = True  # also evaluate the model before self-training
    only: bool = False  # evaluate the base model and stop (the paper's "default" row)
    samples: int = 0  # > 0: also sample this many answers per test question for maj@n / pass@k
    pass_k: list[int] = field(default_factory=lambda: [1])  # k values for pass@k (each <= samples)

    def __post_init__(self) -> None:
        check_int("evaluation.max_new_tokens", self.max_new_tokens, 1, 1 << 20)
        check_int("evaluation.samples", self.samples, 0, 10_000)
        if (
            self.samples
            and not unset(self.samples)
            and any(
                isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.samples
                for k in self.pass_k
            )
        ):
            fail(
                "evaluation.pass_k",
                list(self.pass_k),
                f"each k must be in 1..evaluation.samples ({self.samples})",
            )


@dataclass
class GradingConfig:
    mode: GradingMode = GradingMode.equivalence  # or string: the reference's exact-string clusters
    processes: int = 1
    timeout_s: float = 1.0
    # Responses that state no final answer: none (unanswered) or last_number (the Qwen2.5-Math
    # toolkit's rule, which the paper's evaluation used).
    fallback: Fallback = Fallback.last_number

    def __post_init__(self) -> None:
        check_int("grading.processes", self.processes, 1, 1024)
        # Below 10 ms every parse is cut; above an hour the timer itself overflows nothing but
        # patience (and 1e300 overflowed setitimer).
        check_real("grading.timeout_s", self.timeout_s, 0.01, 3600.0)


@dataclass
class DistributedConfig:
    num_processes: int = 1  # > 1: the train stage runs under `accelerate launch`
    accelerate_config: str | None = None  # relative to the project root, or absolute
    launch_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_int("distributed.num_processes", self.num_processes, 1, 4096)
        if self.accelerate_config and not self.accelerate_config_path().is_file():
            fail(
                "distributed.accelerate_config",
                self.accelerate_config,
                f"no such file ({self.accelerate_config_path()})",
            )

    def accelerate_config_path(self) -> Path:
        path = Path(self.accelerate_config or "")
        return path if path.is_absolute() else ROOT / path

    def accelerate_settings(self) -> dict[str, Any]:
        """The accelerate config's settings ({} without one)."""
        if not self.accelerate_config:
            return {}
        import yaml

        return yaml.safe_load(self.accelerate_config_path().read_text()) or {}

    def distributed_type(self) -> str | None:
        """The accelerate config's ``distributed_type`` (``DEEPSPEED``, ``FSDP``, ...), or None."""
        return self.accelerate_settings().get("distributed_type")


@dataclass
class PeftConfig:
    """Parameter-efficient training (conf/peft/): ``none`` trains every weight; ``lora`` trains
    low-rank adapters on the frozen policy (PEFT's LoraConfig), the DPO / KTO reference being
    the same model with its adapters off, and the train stage saves the merged model."""

    method: str = "none"  # none | lora
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # "all-linear" (every linear layer but the output head) or a list of module names.
    target_modules: Any = "all-linear"

    def __post_init__(self) -> None:
        check_choice("peft.method", self.method, ("none", "lora"))
        check_int("peft.r", self.r, 1, 65536)
        check_real("peft.alpha", self.alpha, 1e-6, 1e6)
        check_real("peft.dropout", self.dropout, 0.0, 0.99)
        modules = self.target_modules
        if isinstance(modules, str):
            ok = bool(modules.strip())
        else:
            modules = (
                list(modules) if isinstance(modules, list | tuple) or hasattr(modules, "__iter__") else None
            )
            ok = bool(modules) and all(isinstance(m, str) and m.strip() for m in modules)
            if ok:
                self.target_modules = [str(m) for m in modules]
        if not ok:
            fail(
                "peft.target_modules", self.target_modules, '"all-linear" or a non-empty list of module names'
            )

    @property
    def enabled(self) -> bool:
        return self.method != "none"


@dataclass
class PathsConfig:
    cache_dir: str = MISSING
    output_dir: str | None = None  # null: Hydra's run folder (outputs/<date>/<time>/)
    # A folder holding gsm8k/ and math/ ({split}.jsonl): datasets load from it instead of the hub.
    data_dir: str | None = None
    # Seconds to wait for another process building a stage this run needs (null: as long as
    # it takes; the wait is logged with the holder's pid every minute).
    lock_timeout_s: float | None = None

    def __post_init__(self) -> None:
        for key in ("cache_dir", "output_dir"):
            value = getattr(self, key)
            if key == "output_dir" and value is None:
                continue  # Hydra's run folder
            if not unset(value) and (value is None or not str(value).strip()):
                fail(
                    f"paths.{key}",
                    value,
                    "must name a folder (an empty value, e.g. from an empty EAST_CACHE_DIR, would "
                    "write into the current folder)",
                )
        if self.lock_timeout_s is not None:
            check_real("paths.lock_timeout_s", self.lock_timeout_s, 0.0, 1e7, open_low=True)
        from east.errors import writable_problem

        # The cache may be read-only (a finished sweep's, shared): a build that must write is
        # then one line at run time. The output folder is always written.
        checks = [("paths.cache_dir", self.cache_dir, False), ("paths.output_dir", self.output_dir, True)]
        for key, value, written in checks:
            if value is None or unset(value):
                continue
            problem = writable_problem(str(value), key)
            if problem and (written or "not writable" not in problem):
                raise ConfigError(problem)


@dataclass
class ResourcesConfig:
    """What one job of this config asks a cluster for (hydra/launcher=slurm reads it)."""

    gpus: int | None = None  # null: distributed.num_processes
    cpus_per_gpu: int = 8
    mem_gb_per_gpu: int = 64

    def __post_init__(self) -> None:
        check_int("resources.gpus", self.gpus, 1, 1024, optional=True)
        check_int("resources.cpus_per_gpu", self.cpus_per_gpu, 1, 1024)
        check_int("resources.mem_gb_per_gpu", self.mem_gb_per_gpu, 1, 8192)


#: ``stop_after``: where a run stops early. ``shared``: after the stages a sweep's cells
#: share (base model, samples, grades, base evaluations) — phase A of a cluster sweep.
STOP_AFTER = (None, "shared")


@dataclass
class Config:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    objective: ObjectiveConfig = MISSING
    east: EastConfig = field(default_factory=EastConfig)
    # A east.samplers.Sampler built from its _target_ by east.samplers.build_sampler, given
    # model.dtype (checked against the Config schema its class declares).
    sampler: Any = MISSING
    logger: Any = MISSING
    sampling: SamplingParams = field(default_factory=SamplingParams)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    grading: GradingConfig = field(default_factory=GradingConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    seed: int = 0
    rounds: int = 1  # iterative self-training: sample -> grade -> weight -> train, R times
    experiment_name: str | None = None  # set by experiment configs; names the W&B run group
    # Run each stage that loads weights in a child process that owns its devices and hands
    # them back when it exits (auto: when a CUDA device is visible).
    isolate_stages: Any = "auto"
    stop_after: str | None = None
    # Modules of yours imported before the config is checked (a mapping registered there with
    # @register_mapping is then an allowed east.mapping). Found on sys.path or in the current
    # folder.
    imports: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("rounds", self.rounds, 1, 100)
        if not unset(self.isolate_stages) and self.isolate_stages not in ("auto", True, False):
            fail("isolate_stages", self.isolate_stages, "allowed: auto, true, false")
        check_choice("stop_after", self.stop_after, STOP_AFTER)


def _local_data(data_dir: str | None, name: str) -> str | None:
    """``${east_data:${paths.data_dir},gsm8k}``: the dataset's folder under paths.data_dir, or
    None (load from the hub) when no data_dir is set."""
    if data_dir in (None, "", "None", "null"):
        return None
    return str(Path(data_dir).expanduser() / name)


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="east_schema", node=Config)
    OmegaConf.register_new_resolver("east_data", _local_data, replace=True)
    # For the SLURM launcher's resources (conf/hydra/launcher/slurm.yaml).
    OmegaConf.register_new_resolver(
        "east_or", lambda a, b: b if a in (None, "None", "null") else a, replace=True
    )
    OmegaConf.register_new_resolver("east_mul", lambda a, b: int(a) * int(b), replace=True)


def validate(cfg: DictConfig | Config, command_line: list[str] = (), devices: bool = True) -> Config:
    """The run's typed config: every value it depends on checked before any stage runs.
    Raises :class:`~east.errors.ConfigError` naming the key, the value and what is allowed.

    ``command_line``: the job's overrides; an ``objective.trainer.KEY`` among them wins over
    the model's ``trainer_overrides`` (see :func:`apply_command_line_precedence`).
    ``devices``: also check what depends on this machine (CUDA for FSDP / ZeRO-3, the sampler
    backend's package); run.py's check of a whole sweep, on a login node, leaves them out."""
    if isinstance(cfg, DictConfig):
        from omegaconf.errors import OmegaConfBaseException

        import_user_modules(OmegaConf.select(cfg, "imports", default=None) or [])
        try:
            unknown = unknown_keys(OmegaConf.to_container(cfg, resolve=True))
            if unknown:
                raise ConfigError(
                    f"unknown config key(s): {', '.join(unknown)}. A '+' override adds keys that the "
                    "schema (east/config.py) does not have, and nothing would read them"
                )
            c = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as e:  # ${oc.env:UNSET}, seed=${seed}, a wrong type
            raise ConfigError(f"invalid config: {omegaconf_message(e)}") from None
    else:
        c = cfg
    c.sampler = sampler_config(c.sampler)
    apply_command_line_precedence(c, list(command_line))
    _check_trainer_settings(c)
    _check_peft(c)
    batch_layout(c)
    if devices:
        _check_placement(c)
        _check_sampler_installed(c)
        _check_sampler(c)
        _check_deepspeed_installed(c)
    return c


def _check_deepspeed_installed(c: Config) -> None:
    """A ZeRO-3 config without DeepSpeed is one line saying how to install it, before any
    stage runs (not accelerate's ImportError once sampling and grading are done)."""
    import importlib.util

    dist = c.distributed
    if c.evaluation.only or c.stop_after == "shared" or not dist.accelerate_config:
        return
    if dist.distributed_type() == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        fail(
            "distributed.accelerate_config",
            dist.accelerate_config,
            "DeepSpeed is not installed: pip install 'east[deepspeed]' (on a CPU it also needs g++)",
        )


def _sampler_target(c: Config) -> str:
    return c.sampler._target_ if dataclasses.is_dataclass(c.sampler) else c.sampler.get("_target_", "")


def _check_sampler_installed(c: Config) -> None:
    """The packages the run's backend declares (``libraries``), installed: one line saying how
    to get them (``install_hint``), not an ImportError in a worker after the warm-up."""
    import importlib.util

    target = _sampler_target(c)
    cls = sampler_class(target)
    for package in cls.libraries:
        if importlib.util.find_spec(package) is None:
            hint = f": {cls.install_hint}" if cls.install_hint else ""
            fail("sampler._target_", target, f"it needs {package}, which is not installed{hint}")


def _check_sampler(c: Config) -> None:
    """What the run's backend declares (east.samplers.Sampler), checked before any stage runs:
    token entropies where the mapping reads them, and its own check of the run here."""
    from east.weighting import canonical, get_mapping

    target = _sampler_target(c)
    cls = sampler_class(target)
    reads = get_mapping(canonical(c.east.mapping, c.east.sharpness)[0]).signal
    if reads == "token_entropy" and not c.evaluation.only and not cls.returns_token_entropy:
        fail(
            "east.mapping",
            c.east.mapping,
            f"it reads token entropies, and the sampler {target} does not return them "
            "(returns_token_entropy); use sampler=hf or sampler=vllm",
        )
    problem = cls.config_problem(c)
    if problem is not None:
        fail(*problem)


def _check_peft(c: Config) -> None:
    """LoRA trains on whole-model processes (one, or DDP): its merged checkpoint is written from
    an unsharded model."""
    dist = c.distributed
    if not c.peft.enabled or not dist.accelerate_config:
        return
    kind = dist.distributed_type()
    if kind in ("FSDP", "DEEPSPEED"):
        fail(
            "peft.method",
            c.peft.method,
            f"LoRA with {kind} is not supported here (the merged model is written from an unsharded "
            "policy); LoRA's frozen base fits where full training does not: use distributed=none or ddp",
        )


def _check_placement(c: Config) -> None:
    """Settings whose devices do not exist here, or that would train on the wrong ones."""
    import torch

    cuda = torch.cuda.is_available()
    dist = c.distributed
    trains = not (c.evaluation.only or c.stop_after == "shared")
    if trains and dist.accelerate_config:
        accel = dist.accelerate_settings()
        kind = accel.get("distributed_type")
        if kind in ("FSDP", "DEEPSPEED") and not cuda and accel.get("mixed_precision", "no") != "no":
            # A CPU trains in fp32 (bf16 autocast there is slow, and DeepSpeed's bf16 engine
            # conflicts with fp32 training): the CPU variants shard the same way without it.
            variant = {"FSDP": "fsdp_cpu", "DEEPSPEED": "zero3_cpu"}[kind]
            fail(
                "distributed.accelerate_config",
                dist.accelerate_config,
                f"{kind} with {accel['mixed_precision']} autocast needs CUDA devices, and none is visible; "
                f"on a CPU use distributed={variant} ({kind} over CPU processes, fp32)",
            )
    if c.isolate_stages is False and dist.num_processes == 1 and cuda and torch.cuda.device_count() > 1:
        fail(
            "isolate_stages",
            False,
            f"{torch.cuda.device_count()} GPUs are visible: training in the driver would run under "
            "nn.DataParallel over all of them (a larger batch than configured); keep isolate_stages=auto "
            "(each stage sees the devices it needs) or set CUDA_VISIBLE_DEVICES to one device",
        )


def omegaconf_message(error: Exception) -> str:
    """OmegaConf's error in one line: its first line, and the key it names."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    key = getattr(error, "full_key", None)
    return f"{key}: {text}" if key and key not in text else text


def sampler_config(node: Any) -> Any:
    """The ``sampler`` node as its backend's checked schema (``Config`` on its class); a
    backend without one as given (its constructor checks its keyword arguments)."""
    if dataclasses.is_dataclass(node):
        return node
    target = node.get("_target_")
    if not target:
        raise ConfigError("invalid config sampler: it names no _target_ (a east.samplers.Sampler class)")
    schema = sampler_class(target).Config
    if schema is None:
        return node
    unknown = unknown_keys(node, schema, "sampler.")
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (for {target})")
    return schema(**node)


def _local_path_problem(value: str) -> str | None:
    """Why ``value`` is neither an existing local path nor a hub id, or None."""
    path = Path(value).expanduser()
    if path.is_file():
        return "a file, not a folder of weights (a folder with config.json, *.safetensors and the tokenizer files)"
    if path.is_dir():
        if not (path / "config.json").is_file():
            return (
                "a folder without config.json: give a folder of Hugging Face weights (config.json, "
                "*.safetensors and the tokenizer files), e.g. from hf download ORG/NAME --local-dir DIR"
            )
        return None
    if path.exists():
        return None
    if value.startswith(("/", ".", "~")) or value.count("/") > 1 or not _HUB_ID_RE.fullmatch(value):
        return "no such file or folder (and not a hub id such as org/name)"
    return None


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


def batch_layout(c: Config) -> dict[str, int]:
    """How the objective's global batch is laid out over processes and accumulation steps.

    gradient_accumulation_steps = global_batch_size / (per_device_train_batch_size x
    processes); raises ValueError naming the keys when it does not divide.
    """
    from east.objectives import get_objective

    spec = get_objective(c.objective.name)
    settings = trainer_settings(c)
    if "gradient_accumulation_steps" in settings:
        raise ConfigError(
            "invalid config: gradient_accumulation_steps is derived from objective.global_batch_size "
            "(global / (per-device batch x processes)); set objective.global_batch_size instead"
        )
    per_device = settings.get("per_device_train_batch_size")
    if per_device is None:
        per_device = spec.config_class().__dataclass_fields__["per_device_train_batch_size"].default
    processes = c.distributed.num_processes
    total = c.objective.global_batch_size
    if total < 1 or per_device < 1 or total % (per_device * processes):
        raise ConfigError(
            f"invalid config objective.global_batch_size={total}: it must be a multiple of "
            f"per_device_train_batch_size ({per_device}) x distributed.num_processes ({processes})"
        )
    reason = spec.check(settings, per_device)
    if reason:
        raise ConfigError(f"invalid config: {reason}")
    return {
        "global_batch_size": total,
        "per_device_train_batch_size": per_device,
        "processes": processes,
        "gradient_accumulation_steps": total // (per_device * processes),
    }


def trainer_settings(c: Config) -> dict[str, Any]:
    """The TRL settings of the run's objective. Precedence, lowest first: the objective's
    ``objective.trainer``, then the model's ``model.trainer_overrides.<objective>``, then
    whatever the command line set (see :func:`apply_command_line_precedence`)."""
    return {**c.objective.trainer, **_model_overrides(c)}


def _model_overrides(c: Config) -> dict[str, Any]:
    return (c.model.trainer_overrides or {}).get(c.objective.name) or {}


_TRAINER_OVERRIDE_RE = re.compile(r"^[+~]{0,2}objective\.trainer\.([A-Za-z_][\w]*)=")


def apply_command_line_precedence(c: Config, overrides: list[str]) -> list[str]:
    """Make ``objective.trainer.KEY=...`` given on the command line win over the model's
    ``trainer_overrides`` for KEY (which otherwise sit on top of the objective's settings).
    Returns the keys it moved, for the log."""
    model = _model_overrides(c)
    moved = []
    for override in overrides:
        m = _TRAINER_OVERRIDE_RE.match(override)
        if m and m.group(1) in model:
            model.pop(m.group(1))
            moved.append(m.group(1))
    return moved


#: Ranges of the TRL settings a run may set, checked before any stage: key -> (type, low,
#: high, null allowed, low excluded). Outside them a value fails late (max_length 0) or trains
#: nothing sane (a learning rate above 1).
TRAINER_RANGES: dict[str, tuple[type, float, float, bool, bool]] = {
    # Below 1e-12 an update vanishes even in fp32: the "trained" model would be the base.
    "learning_rate": (float, 1e-12, 1.0, False, False),
    "num_train_epochs": (float, 0.0, 10_000.0, False, True),
    "per_device_train_batch_size": (int, 1, 1 << 16, False, False),
    "per_device_eval_batch_size": (int, 1, 1 << 16, False, False),
    "max_length": (int, 1, 1 << 20, True, False),
    "max_prompt_length": (int, 1, 1 << 20, True, False),
    "max_steps": (int, -1, 10**9, False, False),
    "save_steps": (int, 0, 10**9, False, False),
    "logging_steps": (float, 0.0, 10**9, False, True),
    "warmup_steps": (float, 0.0, 10**9, False, False),
    "weight_decay": (float, 0.0, 1.0, False, False),
    "max_grad_norm": (float, 0.0, 1e6, False, False),
    "beta": (float, 0.0, 1e6, False, True),
    "adam_epsilon": (float, 0.0, 1.0, False, True),
}


def _check_trainer_settings(c: Config) -> None:
    from east.objectives import get_objective
    from east.objectives.base import RESERVED

    name = c.objective.name
    config_cls = get_objective(name).config_class()
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    sources = {
        "objective.trainer": c.objective.trainer,
        f"model.trainer_overrides.{name}": _model_overrides(c),
    }
    for where, settings in sources.items():
        reserved = sorted(set(settings) & set(RESERVED))
        if reserved:
            raise ConfigError(
                f"invalid config {where}: {', '.join(reserved)} set by the train stage itself (seed from "
                "seed, precision from model.dtype: bf16 autocast over fp32 weights on a GPU, fp32 on a "
                "CPU; checkpoints from save_steps; outputs in the stage's folder); remove "
                + ("it" if len(reserved) == 1 else "them")
            )
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
                fail(f"{where}.{key}", value, f"{config_cls.__name__}.{key} takes {_type_name(expected)}")
            rule = TRAINER_RANGES.get(key)
            if rule is not None and not (value is None and rule[3]):
                kind, low, high, _, open_low = rule
                if kind is int:
                    check_int(f"{where}.{key}", value, low, high)
                else:
                    check_real(f"{where}.{key}", value, low, high, open_low=open_low)
            if key == "max_steps" and value == 0:
                fail(f"{where}.{key}", value, "must be -1 (epochs decide) or at least 1")


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
