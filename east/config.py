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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

from east.checks import MAX_SEED, check_choice, check_int, check_real, fail, local_path_problem, unset
from east.data import ArithConfig, DatasetConfig
from east.errors import ConfigError
from east.grading import Fallback, GradingMode
from east.sampling_params import SamplingParams
from east.selection import FilterConfig

__all__ = [
    "ArithConfig",
    "Config",
    "DatasetConfig",
    "FilterConfig",
    "SamplingParams",
    "register_configs",
]

DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
#: A Hugging Face hub id: "name" or "organisation/name".
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
            problem = local_path_problem(self.path)
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
