"""Sampler contract: each response a pure function of its seed, for both backends."""

from __future__ import annotations

import importlib
import math
import sys
import types

import pytest

from east.sampling import HFSampler, SamplingParams, sample_seed


def test_seeds_are_pure_functions_of_question_sample_and_round():
    assert sample_seed(0, "q1", 3, 0) == sample_seed(0, "q1", 3, 0)
    assert len({sample_seed(0, "q1", j, 0) for j in range(64)}) == 64
    assert sample_seed(0, "q1", 0, 0) != sample_seed(0, "q1", 0, 1) != sample_seed(1, "q1", 0, 0)


def test_hf_sampler_is_independent_of_batching_and_order(tiny_dir):
    from east.models import load_tokenizer
    from east.prompts import build_prompts

    tok = load_tokenizer(str(tiny_dir))
    prompts = build_prompts(tok, [f"What is {a} plus 3?" for a in range(5)], None).token_ids
    seeds = [[sample_seed(0, f"q{i}", j, 0) for j in range(3)] for i in range(5)]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10)
    a = HFSampler(batch_size=4, progress=False).generate(str(tiny_dir), prompts, seeds, params)
    b = HFSampler(batch_size=7, progress=False).generate(str(tiny_dir), prompts[::-1], seeds[::-1], params)
    assert a.texts == b.texts[::-1]
    # Entropies are float reductions over a batch's padded rows: equal to float precision.
    assert a.token_entropy == [[pytest.approx(t, rel=1e-5) for t in row] for row in b.token_entropy[::-1]]
    assert len({r for row in a.texts for r in row}) > 5  # real sampling, not one repeated string
    assert all(t > 0 for row in a.token_entropy for t in row)
    greedy_params = SamplingParams(n=1, temperature=0, max_new_tokens=10)
    greedy = HFSampler(progress=False).generate(
        str(tiny_dir), prompts, [[0], [1], [2], [3], [4]], greedy_params
    )
    again = HFSampler(progress=False).generate(str(tiny_dir), prompts, [[9]] * 5, greedy_params)
    assert greedy == again  # temperature 0 ignores seeds
    assert greedy.token_entropy is None


def test_invalid_sampling_params():
    with pytest.raises(ValueError, match="sampling.n=0: must be an integer >= 1"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-0.1)


@pytest.fixture
def fake_vllm(monkeypatch):
    """vLLM replaced at its import boundary: a module whose LLM echoes each request's seed."""
    calls = {}
    module = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, model, **kwargs):
            calls["init"] = (model, kwargs)

        def generate(self, prompts, params, use_tqdm=True):
            calls["generate"] = (prompts, params)
            # Two generated tokens; at each step the top-2 log-probs (uniform: ln 2 nats at T=1).
            steps = [
                {
                    7: types.SimpleNamespace(logprob=math.log(0.5)),
                    8: types.SimpleNamespace(logprob=math.log(0.5)),
                }
            ] * 2
            return [
                types.SimpleNamespace(
                    outputs=[
                        types.SimpleNamespace(
                            text=f" {p['prompt_token_ids']}|{sp.seed}|{sp.temperature} ",
                            token_ids=[1, 2],
                            logprobs=steps if sp.logprobs else None,
                        )
                    ]
                )
                for p, sp in zip(prompts, params)
            ]

    module.SamplingParams, module.LLM = SamplingParams, LLM
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.delitem(sys.modules, "east.sampling_vllm", raising=False)
    return calls


def test_vllm_backend_keeps_the_seed_contract(fake_vllm):
    from east.sampling_vllm import VLLMSampler

    sampler = VLLMSampler(tensor_parallel_size=2)
    seeds = [[11, 12], [21, 22]]
    out = sampler.generate(
        "/models/x", [[1, 5], [1, 6]], seeds, SamplingParams(n=2, temperature=1.0, max_new_tokens=5)
    )
    assert out.texts == [["[1, 5]|11|1.0", "[1, 5]|12|1.0"], ["[1, 6]|21|1.0", "[1, 6]|22|1.0"]]
    model, kwargs = fake_vllm["init"]
    assert model == "/models/x" and kwargs["tensor_parallel_size"] == 2
    prompts, params = fake_vllm["generate"]
    assert all(p.n == 1 and p.max_tokens == 5 and p.logprobs == 20 for p in params)
    # Token ids go in as they are: vLLM never tokenizes (and never adds a BOS) itself.
    assert prompts == [{"prompt_token_ids": [1, 5]}] * 2 + [{"prompt_token_ids": [1, 6]}] * 2
    # local_uncertainty works on this backend: entropies from the returned log-probs.
    assert out.token_entropy == [[pytest.approx(math.log(2))] * 2] * 2
    assert sampler.cache_key == {"name": "vllm", "entropy_top_k": 20}
    with pytest.raises(TypeError, match="token ids"):
        sampler.generate("/models/x", ["text prompt"], [[1]], SamplingParams(n=1))


def test_top_k_entropy_is_tempered_and_renormalised():
    from east.sampling_vllm import mean_top_k_entropy

    step = {1: math.log(0.6), 2: math.log(0.3), 3: -math.inf}
    p = [0.6 / 0.9, 0.3 / 0.9]
    assert mean_top_k_entropy([step], 1.0) == pytest.approx(-sum(q * math.log(q) for q in p))
    hot = [0.6**2, 0.3**2]
    hot = [q / sum(hot) for q in hot]
    assert mean_top_k_entropy([step, step], 0.5) == pytest.approx(-sum(q * math.log(q) for q in hot))
    assert mean_top_k_entropy([], 1.0) == 0.0


def test_missing_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    monkeypatch.delitem(sys.modules, "east.sampling_vllm", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'east\[vllm\]'"):
        importlib.import_module("east.sampling_vllm")
