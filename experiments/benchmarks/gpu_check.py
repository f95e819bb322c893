"""GPU check, sized for 10 minutes on a bare CUDA machine: a 1B-shaped LLaMA in bf16.

Measures, in one run: weighted vs stock SFT and DPO step time (paired, interleaved, with a
95% interval for the ratio; paired.py), HF sampler tokens/s, and vLLM tokens/s where vLLM is
installed. Prints one JSON line last.

The model is LLaMA-3.2-1B's shape (hidden 2048, 16 layers, 32 heads / 8 KV heads, FFN 8192,
vocabulary 128,256, tied embeddings) with random weights: step times and throughput depend
on shapes, not on what the weights learned. The tokenizer is built here (a byte-level BPE
trained on the prompts, padded with reserved tokens to the model's vocabulary and given the
paper's Llama-3 template): no hub, no 100 MB GGUF.

A bare machine (torch and transformers, no network) needs only the wheels the image lacks;
experiments/benchmarks/gpu_bundle.sh writes them (under 64 MiB) into a folder:

    experiments/benchmarks/gpu_bundle.sh .bundle          # where pip works
    # on the GPU machine, from the checkout:
    pip install --no-index --no-deps --target /tmp/site .bundle/*.whl
    PYTHONPATH=/tmp/site:. python experiments/benchmarks/gpu_check.py

``--shape tiny`` runs the same code end to end on a CPU in a minute (the rehearsal).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # paired.py, weighting_overhead.py

warnings.filterwarnings("ignore")

SHAPES = {
    # LLaMA-3.2-1B
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    # the rehearsal on a CPU
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=4096,
    ),
}


def questions(n: int) -> list[str]:
    return [
        f"Tom has {a} apples and buys {a + 7} more, then gives away {a // 2}. How many now?" for a in range(n)
    ]


def build_model_dir(shape: str, out: Path) -> Path:
    """A random-weight LLaMA of ``shape`` and a tokenizer built here, saved under ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from east.models import build_tiny_tokenizer, llama3_style
    from east.prompts import PAPER_SYSTEM

    dims = SHAPES[shape]
    texts = [*questions(200), PAPER_SYSTEM, "<|begin_of_text|><|start_header_id|><|end_header_id|><|eot_id|>"]
    tok = build_tiny_tokenizer(texts, vocab_size=min(dims["vocab_size"], 2000))
    tok = llama3_style(tok)
    tok.add_tokens([f"<|reserved_{i}|>" for i in range(dims["vocab_size"] - len(tok))], special_tokens=True)
    config = LlamaConfig(
        **dims,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--pairs", type=int, default=20, help="paired step timings per objective")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    out = build_model_dir(args.shape, Path(tempfile.mkdtemp()) / f"random-{args.shape}")
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "shape": args.shape,
        "dtype": "bfloat16" if cuda else "float32",
        "torch": torch.__version__,
    }

    # Weighted vs stock trainer steps (weighting_overhead.py's paired comparison, on this model).
    from weighting_overhead import compare

    for objective in ("sft", "dpo"):
        r = compare(objective, out, args.batch, cuda, args.pairs, 3)
        result[f"{objective}_weighted_over_stock"] = r["ratio"]
        result[f"{objective}_ci"] = [r["ci_low"], r["ci_high"]]
        result[f"{objective}_step_ms"] = {"weighted": r["a_ms"], "stock": r["b_ms"]}
        print(f"{objective}: {r}", file=sys.stderr)
        if cuda:
            torch.cuda.empty_cache()

    # HF sampler throughput, prompts tokenized once as the pipeline does.
    from transformers import AutoTokenizer

    from east.prompts import PAPER_SYSTEM, build_prompts
    from east.sampling import HFSampler, SamplingParams, sample_seed

    tok = AutoTokenizer.from_pretrained(out)
    prompts = build_prompts(tok, questions(args.prompts), PAPER_SYSTEM)
    seeds = [[sample_seed(0, str(i), j, 0) for j in range(args.n)] for i in range(args.prompts)]
    params = SamplingParams(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens)
    sampler = HFSampler(batch_size=256, dtype="auto", progress=False)
    sampler.generate(str(out), prompts.token_ids, seeds, params)
    result["hf_sampler_tokens_per_second"] = round(sampler.tokens_generated / sampler.seconds, 1)

    try:
        from east.sampling_vllm import VLLMSampler
    except ImportError as e:
        result["vllm_tokens_per_second"] = None
        result["vllm"] = f"not installed ({e.__class__.__name__}): its wheel alone exceeds the 64 MiB bundle"
    else:
        vllm_sampler = VLLMSampler(dtype="auto")
        vllm_sampler.generate(str(out), prompts.token_ids, seeds, params)
        result["vllm_tokens_per_second"] = round(vllm_sampler.tokens_generated / vllm_sampler.seconds, 1)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
