"""Sampler backends: :class:`Sampler` (east.samplers.base) and the shipped ``hf``
(east.samplers.hf) and ``vllm`` (east.samplers.vllm), each built from its
``conf/sampler/<name>.yaml`` by :func:`build_sampler`. Importing this package loads no model
library."""

from east.samplers.base import (
    Generation,
    Sampler,
    SamplerConfig,
    SamplingParams,
    build_sampler,
    check_token_ids,
    sample_seed,
    sampler_class,
)

__all__ = [
    "Generation",
    "Sampler",
    "SamplerConfig",
    "SamplingParams",
    "build_sampler",
    "check_token_ids",
    "sample_seed",
    "sampler_class",
]
