"""HF generate against vLLM on the same requests, side by side, through east's two sampler
backends (east.samplers.hf.HFSampler, east.samplers.vllm.VLLMSampler) on one machine.

    python experiments/benchmarks/sampler_throughput.py [--prompts 200] [--n 8] [--tokens 32] [--pairs 3]

Needs vLLM (on a CPU: the engines tier's environment, .ci/engines; set VLLM_CPU_KVCACHE_SPACE).
The model is debug=fast's shape (hidden 64, 2 layers, 2 heads: head_dim 32, which vLLM's
CPU attention takes) with random weights, so every response runs to ``--tokens`` (no
end-of-turn is ever likely): both backends generate exactly the same number of tokens. Each
of ``--pairs`` rounds times one generate call of each backend (alternating which goes first)
on the same prompts and seeds (each counts the tokens it generated); vLLM's engine start-up is timed apart and left out of its
throughput (it is paid once per stage worker). Prints one JSON line last: tokens/s of each,
the ratio vLLM / HF per pair and its geometric mean.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def build(out: Path) -> Path:
    import torch

    from east.data.arith import ArithConfig, generate
    from east.models import build_tiny_model, build_tiny_tokenizer

    texts = [p.question for p in generate(ArithConfig())["warmup"]]
    tok = build_tiny_tokenizer(texts)
    torch.manual_seed(0)
    model = build_tiny_model(tok, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()

    from east.data.arith import ArithConfig, generate
    from east.models import load_tokenizer
    from east.prompts import build_prompts
    from east.samplers import SamplingParams, sample_seed
    from east.samplers.hf import HFSampler
    from east.samplers.vllm import VLLMSampler

    model = build(Path(tempfile.mkdtemp()) / "model")
    questions = [p.question for p in generate(ArithConfig(train_size=args.prompts))["train"]][: args.prompts]
    ids = build_prompts(load_tokenizer(str(model)), questions, None).token_ids
    seeds = [[sample_seed(0, str(i), j, 0) for j in range(args.n)] for i in range(len(ids))]
    params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.tokens)

    hf = HFSampler(batch_size=256, dtype="float32", progress=False)
    vllm = VLLMSampler(dtype="float32", entropy_top_k=0)
    start = time.perf_counter()
    vllm._llm(str(model), max(len(p) for p in ids) + args.tokens)  # the engine, built once
    startup = time.perf_counter() - start

    def timed(sampler) -> float:
        before = sampler.tokens_generated
        t = time.perf_counter()
        sampler.generate(str(model), ids, seeds, params)
        return (sampler.tokens_generated - before) / (time.perf_counter() - t)

    rates: dict[str, list[float]] = {"hf": [], "vllm": []}
    for k in range(args.pairs):
        order = (("hf", hf), ("vllm", vllm)) if k % 2 == 0 else (("vllm", vllm), ("hf", hf))
        for name, sampler in order:
            rates[name].append(timed(sampler))
        print(
            f"pair {k}: hf {rates['hf'][-1]:.0f} tok/s, vllm {rates['vllm'][-1]:.0f} tok/s", file=sys.stderr
        )
    ratios = [v / h for v, h in zip(rates["vllm"], rates["hf"], strict=True)]
    result = {
        "benchmark": "sampler_throughput",
        "requests": len(ids) * args.n,
        "new_tokens_per_request": args.tokens,
        "hf_tokens_per_s": [round(r, 1) for r in rates["hf"]],
        "vllm_tokens_per_s": [round(r, 1) for r in rates["vllm"]],
        "vllm_over_hf": [round(r, 2) for r in ratios],
        "vllm_over_hf_geomean": round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 2),
        "vllm_engine_startup_s": round(startup, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
