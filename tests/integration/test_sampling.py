"""Sampler contract: each response a pure function of its seed, for both backends."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

from east.samplers import SamplingParams, sample_seed
from east.samplers.hf import HFSampler


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
    a = HFSampler(batch_size=4, progress=False).generate(
        str(tiny_dir), prompts, seeds, params, token_entropy=True
    )
    b = HFSampler(batch_size=7, progress=False).generate(
        str(tiny_dir), prompts[::-1], seeds[::-1], params, token_entropy=True
    )
    assert a.texts == b.texts[::-1]
    plain = HFSampler(batch_size=4, progress=False).generate(str(tiny_dir), prompts, seeds, params)
    assert plain.texts == a.texts and plain.token_entropy is None  # entropies only when asked
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


FAKES = Path(__file__).resolve().parents[1] / "fakes"


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    """vLLM replaced by tests/fakes/vllm (its real signatures and checks); returns its log."""
    log = tmp_path / "vllm.jsonl"
    monkeypatch.setenv("EAST_FAKE_VLLM_LOG", str(log))
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.delitem(sys.modules, "east.samplers.vllm", raising=False)

    def events():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return events


def test_vllm_backend_keeps_the_seed_contract(fake_vllm):
    from east.samplers.vllm import VLLMSampler

    sampler = VLLMSampler(tensor_parallel_size=2, dtype="bf16", chunk_requests=3)
    seeds = [[11, 12], [21, 22]]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=5)
    out = sampler.generate("/models/x", [[1, 5], [1, 6, 9]], seeds, params)
    again = VLLMSampler(chunk_requests=100).generate("/models/x", [[1, 6, 9]], [[22]], params)
    assert out.texts[1][1] == again.texts[0][0]  # a response depends on its prompt and seed only
    assert out.token_entropy is None  # no mapping asked: no log-probs requested
    engine, *calls = fake_vllm()
    # What the engine is told, by vLLM's own names (vllm/config/model.py).
    assert engine["event"] == "engine" and engine["model"] == "/models/x"
    assert engine["tensor_parallel_size"] == 2 and engine["dtype"] == "bfloat16"
    assert engine["logprobs_mode"] == "raw_logprobs"
    assert engine["max_model_len"] == 3 + 5  # the longest prompt plus the new tokens
    # 4 requests in chunks of 3, none asking for log-probs.
    assert [c["requests"] for c in calls[:2]] == [3, 1] and calls[0]["logprobs"] == [None]
    entropic = sampler.generate("/models/x", [[1, 5]], [[11]], params, token_entropy=True)
    assert fake_vllm()[-1]["logprobs"] == [20]
    # local_uncertainty: entropies from the returned top-k log-probs (uniform over 20 tokens).
    assert entropic.token_entropy == [[pytest.approx(math.log(20))]]
    assert entropic.texts == [out.texts[0][:1]]
    assert sampler.cache_key == {"name": "vllm", "entropy_top_k": 20}
    assert VLLMSampler(batch_invariant=True).cache_key["batch_invariant"] is True
    with pytest.raises(TypeError, match="token ids"):
        sampler.generate("/models/x", ["text prompt"], [[1]], SamplingParams(n=1))
    with pytest.raises(ValueError, match="unknown dtype"):
        VLLMSampler(dtype="fp8")


def test_top_k_entropy_is_tempered_and_renormalised():
    from east.samplers.vllm import mean_top_k_entropy

    step = {1: math.log(0.6), 2: math.log(0.3), 3: -math.inf}
    p = [0.6 / 0.9, 0.3 / 0.9]
    assert mean_top_k_entropy([step], 1.0) == pytest.approx(-sum(q * math.log(q) for q in p))
    hot = [0.6**2, 0.3**2]
    hot = [q / sum(hot) for q in hot]
    assert mean_top_k_entropy([step, step], 0.5) == pytest.approx(-sum(q * math.log(q) for q in hot))
    assert mean_top_k_entropy([], 1.0) == 0.0


def test_missing_vllm_says_how_to_install(monkeypatch):
    """The module loads without vLLM (the config check reads its class); building an engine
    says how to install it."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    monkeypatch.delitem(sys.modules, "east.samplers.vllm", raising=False)
    module = importlib.import_module("east.samplers.vllm")
    with pytest.raises(ImportError, match=r"pip install 'east\[vllm\]'"):
        module.VLLMSampler()
