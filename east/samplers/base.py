"""What a sampler backend is: :class:`Sampler`, the one base class the driver, the generate
worker and the stage keys read, and :func:`build_sampler`, the one way a backend is built from
its ``sampler`` config node (``_target_`` plus keyword arguments; conf/sampler/*.yaml).

The contract: ``generate(model_path, prompts, seeds, params, token_entropy)`` takes each
prompt as token ids (tokenized once by :func:`east.prompts.build_prompts`, so every backend
sees the same ids) and returns a :class:`Generation`: for prompt i, one response per seed in
``seeds[i]``, in that order. Temperature 0 is greedy decoding. Seeds come from
:func:`sample_seed` (run seed, question id, sample index, round). With ``token_entropy=True``
(asked only when a mapping reads it, and only of a backend that declares
``returns_token_entropy``) it also returns, per prompt and response, the mean entropy (nats)
of the sampling distribution over the response's tokens.

This module imports no torch: the config check reads a backend's class (its schema, its
packages) without loading a model library.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

from east.checks import check_int, locate
from east.sampling_params import SamplingParams
from east.selection import derive_seed

__all__ = [
    "DRIVER_FIELDS",
    "Generation",
    "Sampler",
    "SamplerConfig",
    "SamplingParams",
    "build_sampler",
    "check_token_ids",
    "sample_seed",
    "sampler_class",
]


@dataclass(frozen=True)
class Generation:
    """What ``generate`` returns: per prompt, its responses in seed order, and (backends that
    record it, when sampling) each response's mean token entropy in nats."""

    texts: list[list[str]]
    token_entropy: list[list[float]] | None = None


def sample_seed(base_seed: int, question_id: str, index: int, round_: int | str) -> int:
    """The seed of one response: a pure function of (run seed, question, sample index, round)."""
    return derive_seed(base_seed, question_id, index, round_) % (2**63)


def check_token_ids(prompts: list[list[int]], seeds: list[list[int]] | None = None) -> list[list[int]]:
    """Prompts must arrive tokenized (east.prompts.build_prompts), never as text, with (when
    ``seeds`` is given) one seed list per prompt."""
    if seeds is not None and len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seed lists")
    for i, p in enumerate(prompts):
        if isinstance(p, str) or not all(isinstance(t, int) for t in p):
            raise TypeError(
                f"prompt {i} is not a list of token ids; tokenize once with east.prompts.build_prompts "
                "so that every backend sees the same ids"
            )
    return prompts


#: Fields of a sampler config that the driver reads and the backend does not take.
DRIVER_FIELDS = ("data_parallel_size", "chunk_prompts")


@dataclass
class SamplerConfig:
    """The fields every shipped backend's schema has, read by the driver (not the backend)."""

    _target_: str = ""
    # Generate workers, each on its own device(s) with a contiguous shard of the prompts
    # (auto: one per visible device group, 1 on a CPU). Not in any key: responses depend on
    # seeds only.
    data_parallel_size: Any = "auto"
    chunk_prompts: int = 1024  # prompts per generate call; each chunk is written as it returns

    def __post_init__(self) -> None:
        if self.data_parallel_size != "auto":
            check_int("sampler.data_parallel_size", self.data_parallel_size, 1, 1024)
        check_int("sampler.chunk_prompts", self.chunk_prompts, 1, 1 << 24)


class Sampler(abc.ABC):
    """A sampler backend. A subclass implements :meth:`generate` and :attr:`cache_key`, and
    declares on the class what the driver, the config check and the stage keys read:

    - ``Config``: its config schema, a :class:`SamplerConfig` subclass whose fields beyond the
      driver's are its constructor's keyword arguments (None: the node is passed as given);
    - ``own_process``: it always generates in a worker process (vLLM: its memory returns only
      when that process exits), whatever ``isolate_stages`` says;
    - ``returns_token_entropy``: it can return token entropies (log-probabilities), which
      ``mapping=local_uncertainty`` reads;
    - ``batch_invariant_mode``: it takes ``batch_invariant=True``, making a response
      independent of its batch; the driver asks for it in greedy evaluation on CUDA;
    - ``libraries`` / ``install_hint``: packages whose versions shape its samples (in the
      generating stages' keys; checked installed before any stage runs) and how to get them.

    Methods with defaults: :meth:`fit_prompts` and :meth:`required_device_memory` (sizing,
    and the memory it needs free), :attr:`devices_per_worker`, :meth:`close`,
    :meth:`config_problem` (its own check of a run). Its own code is in those keys too:
    :meth:`code_modules`.
    """

    Config: ClassVar[type[SamplerConfig] | None] = None
    own_process: ClassVar[bool] = False
    returns_token_entropy: ClassVar[bool] = False
    batch_invariant_mode: ClassVar[bool] = False
    libraries: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""

    @property
    @abc.abstractmethod
    def cache_key(self) -> Any:
        """What of this backend's settings shapes its samples (JSON): in the generating stages'
        keys. Batching and memory settings that change no response stay out."""

    @abc.abstractmethod
    def generate(
        self,
        model_path: str,
        prompts: list[list[int]],
        seeds: list[list[int]],
        params: SamplingParams,
        token_entropy: bool = False,
    ) -> Generation:
        """For prompt i, one response per seed in ``seeds[i]`` (see the module's contract)."""

    @property
    def devices_per_worker(self) -> int:
        """The devices one generate worker of this backend spans (vLLM: its tensor
        parallelism); the driver starts one worker per group of that many."""
        return 1

    def fit_prompts(self, longest: int) -> None:  # noqa: B027 (optional: most need no sizing)
        """Size the backend for prompts plus new tokens of up to ``longest`` tokens, before its
        first :meth:`generate` of a shard (vLLM sizes its KV reserve to it)."""

    def required_device_memory(self, model_path: str) -> int | None:
        """Bytes that must be free on the device before loading ``model_path`` (None: no check)."""
        return None

    def close(self) -> None:  # noqa: B027 (optional: a backend that holds nothing)
        """Release the loaded model."""

    @classmethod
    def code_modules(cls) -> tuple[str, ...]:
        """The modules of its class and its bases: the stage keys keep those that are own code
        (east.codeid), so a backend of yours is keyed by its code."""
        return tuple(dict.fromkeys(k.__module__ for k in cls.__mro__ if k not in (object, abc.ABC)))

    @classmethod
    def config_problem(cls, config: Any) -> tuple[str, Any, str] | None:
        """(key, value, why) when this backend cannot run the run's ``config`` on this machine,
        checked before any stage runs; None when it can."""
        return None


def sampler_class(target: str) -> type[Sampler]:
    """The backend class ``target`` ("package.module.Class") names: an ImportError when it
    cannot be imported, a TypeError when it is not a :class:`Sampler` (east.validate turns
    either into a line naming ``sampler._target_`` before any stage runs)."""
    cls = locate(target)
    if not (isinstance(cls, type) and issubclass(cls, Sampler)):
        raise TypeError("not a subclass of east.samplers.Sampler (README: Your own sampler backend)")
    return cls


def sampler_node(sampler: Any) -> dict[str, Any]:
    """What a backend is built from: ``_target_`` and the constructor's keyword arguments (the
    driver's own fields left out)."""
    import dataclasses

    node = dataclasses.asdict(sampler) if dataclasses.is_dataclass(sampler) else dict(sampler)
    return {k: v for k, v in node.items() if k not in DRIVER_FIELDS}


def build_sampler(node: Any, dtype: str) -> Sampler:
    """The backend a ``sampler`` config (a schema dataclass or a plain mapping) names, with the
    model's dtype: built the same way in the driver and in a generate worker."""
    kwargs = sampler_node(node)
    cls = sampler_class(kwargs.pop("_target_"))
    return cls(**kwargs, dtype=dtype)
