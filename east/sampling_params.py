"""What every sampler backend's ``generate`` takes: the ``sampling`` config group (and, with
n=1 and temperature 0, greedy evaluation). Its own module: the generate worker reads it
without the rest of the config."""

from __future__ import annotations

from dataclasses import dataclass

from east.checks import check_int, check_real


@dataclass
class SamplingParams:
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        check_int("sampling.n", self.n, 1)
        check_real("sampling.temperature", self.temperature, 0.0)
        check_real("sampling.top_p", self.top_p, 0.0, 1.0, open_low=True)
        check_int("sampling.max_new_tokens", self.max_new_tokens, 1)
