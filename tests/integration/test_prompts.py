"""One prompt everywhere: the same on any day, and the same token ids (exactly one BOS) in
the sampler, the evaluator, TRL's trainers and the vLLM backend."""

from __future__ import annotations

import datetime as _dt
import sys
import types

import pytest
from transformers import AutoTokenizer, LlamaForCausalLM

from east.prompts import CHAT_TEMPLATES, LLAMA3_PAPER, build_prompts, resolve_chat_template
from tests.conftest import assistant

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QUESTIONS = ["What is 3 plus 4?", "What is 10 plus 2?"]

# Llama-3.2's own template, reduced to what matters here: it stamps today's date.
DATED = (
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: {{ strftime_now('%d %b %Y') }}\n\n"
    "{{ messages[0]['content'] }}<|eot_id|>"
    "{% for message in messages[1:] %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _on_day(monkeypatch, day: int) -> None:
    from transformers.utils import chat_template_utils

    class Frozen(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, day, 9, 0)

    monkeypatch.setattr(chat_template_utils, "datetime", Frozen)


def _render_on(monkeypatch, path, template, day):
    _on_day(monkeypatch, day)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = resolve_chat_template(template)
    return build_prompts(tok, QUESTIONS, SYSTEM)


def test_paper_template_gives_the_same_prompt_on_any_day(monkeypatch, llama3_dir):
    monday, tuesday = (_render_on(monkeypatch, llama3_dir, "llama3_paper", d) for d in (23, 24))
    assert monday.texts == tuesday.texts and monday.digest == tuesday.digest
    assert "Date" not in monday.texts[0]
    # The tokenizer's own kind of template changes overnight; the digest (in the sample and
    # evaluate keys) notices, so a cache never mixes Monday's prompts with Tuesday's.
    dated = [_render_on(monkeypatch, llama3_dir, DATED, d) for d in (23, 24)]
    assert dated[0].texts != dated[1].texts and dated[0].digest != dated[1].digest


def test_sample_and_evaluate_keys_carry_the_prompt_digest(monkeypatch, llama3_dir, tmp_path):
    from east.data import Problem
    from east.samplers.hf import HFSampler
    from east.stages import driver_generate
    from east.stages.driver import Stages
    from east.tracking import NullLogger
    from east.validate import validate
    from tests.helpers import compose as _compose

    monkeypatch.setattr(driver_generate, "model_path", lambda _: str(llama3_dir))

    def keys(template: str, day: int) -> tuple[str, str]:
        _on_day(monkeypatch, day)
        overrides = ["sampling.n=1", "sampling.max_new_tokens=1", "evaluation.max_new_tokens=1"]
        c = validate(_compose([f"paths.cache_dir={tmp_path}", *overrides]))
        c.model.system_prompt, c.model.chat_template = SYSTEM, template
        stages = Stages(c, NullLogger(), HFSampler(batch_size=8, progress=False))
        model = types.SimpleNamespace(path=tmp_path / "none", key="base")
        problems = [Problem(f"q{i}", q, "7") for i, q in enumerate(QUESTIONS)]
        return stages.sample(model, problems).key, stages.evaluate(model, "t", problems, "evaluate_t").key

    assert keys("llama3_paper", 23) == keys("llama3_paper", 24)
    assert keys(DATED, 23) != keys(DATED, 24)
    assert keys("llama3_paper", 23) != keys("chatml", 23)


def test_unknown_template_name_is_refused():
    assert resolve_chat_template(None) is None
    assert resolve_chat_template("llama3_paper") == LLAMA3_PAPER
    assert set(CHAT_TEMPLATES) >= {"llama3_paper", "chatml"}
    with pytest.raises(ValueError, match="model.chat_template='llama3'.*llama3_paper"):
        resolve_chat_template("llama3")


@pytest.fixture
def seen_by_generate(monkeypatch):
    """Records the (unpadded) prompt ids every call of the model's generate receives."""
    seen: list[list[int]] = []
    original = LlamaForCausalLM.generate

    def spy(self, input_ids=None, attention_mask=None, **kwargs):
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            seen.append([t for t, m in zip(row, mask) if m])
        return original(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "generate", spy)
    return seen


def test_sampler_evaluator_trainer_and_vllm_see_the_same_prompt_ids(
    llama3_dir, seen_by_generate, monkeypatch
):
    from datasets import Dataset
    from trl import DPOConfig, SFTConfig

    from east.models import load_tokenizer
    from east.objectives.dpo.trainer import WeightedDPOTrainer
    from east.objectives.sft.trainer import WeightedSFTTrainer
    from east.prompts import messages
    from east.samplers import SamplingParams
    from east.samplers.hf import HFSampler

    tok = load_tokenizer(str(llama3_dir), "llama3_paper")
    prompts = build_prompts(tok, QUESTIONS, SYSTEM)
    bos = tok.bos_token_id
    for ids in prompts.token_ids:
        assert ids[0] == bos and ids.count(bos) == 1
    # The trap this guards against: tokenizing the rendered text with special tokens.
    assert tok(prompts.texts[0])["input_ids"][:2] == [bos, bos]

    sampler = HFSampler(batch_size=3, progress=False)
    sampler.generate(
        str(llama3_dir), prompts.token_ids, [[1, 2], [3, 4]], SamplingParams(n=2, max_new_tokens=3)
    )
    sampled = list(seen_by_generate)
    seen_by_generate.clear()
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=3)  # what the evaluate stage runs
    sampler.generate(str(llama3_dir), prompts.token_ids, [[0]] * len(QUESTIONS), greedy)
    evaluated = list(seen_by_generate)
    assert sorted(sampled) == sorted(prompts.token_ids * 2)
    assert sorted(evaluated) == sorted(prompts.token_ids)

    common = dict(output_dir="/tmp/east-bos", report_to=[], use_cpu=True, bf16=False, max_steps=1)
    sft = WeightedSFTTrainer(
        model=LlamaForCausalLM.from_pretrained(llama3_dir),
        processing_class=tok,
        args=SFTConfig(**common),
        train_dataset=Dataset.from_list(
            [{"prompt": messages(q, SYSTEM), "completion": assistant("\\boxed{7}")} for q in QUESTIONS]
        ),
    )
    dpo = WeightedDPOTrainer(
        model=LlamaForCausalLM.from_pretrained(llama3_dir),
        processing_class=tok,
        args=DPOConfig(**common),
        train_dataset=Dataset.from_list(
            [
                {
                    "prompt": messages(q, SYSTEM),
                    "chosen": assistant("\\boxed{7}"),
                    "rejected": assistant("\\boxed{8}"),
                }
                for q in QUESTIONS
            ]
        ),
    )
    for i, ids in enumerate(prompts.token_ids):
        sft_ids = sft.train_dataset[i]["input_ids"]
        assert sft_ids[: len(ids)] == ids and sft_ids.count(bos) == 1
        assert dpo.train_dataset[i]["prompt_ids"] == ids

    calls = {}
    module = types.ModuleType("vllm")

    class LLM:
        def __init__(self, model, **kwargs):
            pass

        def generate(self, requests, params, use_tqdm=True):
            calls["requests"] = requests
            out = types.SimpleNamespace(text="", token_ids=[], logprobs=None)
            return [types.SimpleNamespace(outputs=[out]) for _ in requests]

    module.LLM, module.SamplingParams = LLM, lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.delitem(sys.modules, "east.samplers.vllm", raising=False)
    from east.samplers.vllm import VLLMSampler

    VLLMSampler().generate(str(llama3_dir), prompts.token_ids, [[0]] * 2, SamplingParams(n=1, temperature=0))
    assert [r["prompt_token_ids"] for r in calls["requests"]] == prompts.token_ids
