"""What every sampler backend's ``generate`` takes: the ``sampling`` config group (and, with
n=1 and temperature 0, greedy evaluation). Its own module: the generate worker reads it
without the rest of the config."""

from __future__ import annotations

from dataclasses import dataclass

from east.checks import check_int, check_real, fail

#: Sampling temperatures: 0 is greedy; below MIN the logits divided by it overflow (vLLM's
#: own threshold for greedy, _SAMPLING_EPS, is 1e-5); above MAX sampling is uniform noise.
MIN_TEMPERATURE = 1e-5
MAX_TEMPERATURE = 100.0


@dataclass
class SamplingParams:
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        check_int("sampling.n", self.n, 1, 10_000)
        check_real("sampling.temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        if 0 < self.temperature < MIN_TEMPERATURE:
            fail(
                "sampling.temperature",
                self.temperature,
                f"0 (greedy) or at least {MIN_TEMPERATURE:g}: a smaller one divides the logits into "
                "infinities (vLLM treats it as greedy); use 0 for greedy decoding",
            )
        check_real("sampling.top_p", self.top_p, 0.0, 1.0, open_low=True)
        check_int("sampling.max_new_tokens", self.max_new_tokens, 1, 1 << 20)
