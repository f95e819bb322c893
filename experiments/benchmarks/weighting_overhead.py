"""Step time of the weighted trainers against TRL's stock trainers, side by side.

For each objective, a weighted and a stock trainer are built on the same tiny model and
data; their training steps (forward + backward on one prepared batch) are timed
alternately after a warm-up, and the ratio of median step times is reported. Prints one
JSON line last: {"sft": ratio, "dpo": ratio, "kto": ratio, ...}.

    python experiments/benchmarks/weighting_overhead.py [--steps 40] [--hidden 128] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

from east.models import build_tiny_model, build_tiny_tokenizer, resolve_dtype
from east.training import WeightedDPOTrainer, WeightedKTOTrainer, WeightedSFTTrainer

warnings.filterwarnings("ignore")
SYSTEM = {
    "role": "system",
    "content": "Please reason step by step, and put your final answer within \\boxed{}.",
}


def rows(objective: str, n: int) -> list[dict]:
    out = []
    for a in range(n):
        p = [SYSTEM, {"role": "user", "content": f"Tom has {a} apples and buys {a + 3} more. How many now?"}]
        good = [
            {"role": "assistant", "content": f"He has {a}+{a + 3}={2 * a + 3} apples. \\boxed{{{2 * a + 3}}}"}
        ]
        bad = [
            {"role": "assistant", "content": f"He has {a}+{a + 3}={2 * a + 2} apples. \\boxed{{{2 * a + 2}}}"}
        ]
        w = 0.5 + (a % 4) / 2
        if objective == "sft":
            out.append({"prompt": p, "completion": good, "weight": w})
        elif objective == "dpo":
            out.append({"prompt": p, "chosen": good, "rejected": bad, "weight": w})
        else:
            out.append({"prompt": p, "completion": good if a % 2 else bad, "label": bool(a % 2), "weight": w})
    return out


CLASSES = {
    "sft": (WeightedSFTTrainer, SFTTrainer, SFTConfig),
    "dpo": (WeightedDPOTrainer, DPOTrainer, DPOConfig),
    "kto": (WeightedKTOTrainer, KTOTrainer, KTOConfig),
}


def build(objective: str, weighted: bool, model_dir: Path, batch: int, bf16: bool):
    cls = CLASSES[objective][0 if weighted else 1]
    data = rows(objective, 64)
    if not weighted:
        data = [{k: v for k, v in r.items() if k != "weight"} for r in data]
    dtype = "bfloat16" if bf16 else "float32"
    load = lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype))  # noqa: E731
    args = CLASSES[objective][2](
        output_dir=str(model_dir / "out"), report_to=[], bf16=bf16, use_cpu=not torch.cuda.is_available(),
        per_device_train_batch_size=batch, save_strategy="no", seed=0, disable_tqdm=True,
    )  # fmt: skip
    extra = {"ref_model": load()} if objective != "sft" else {}
    trainer = cls(model=load(), args=args, train_dataset=Dataset.from_list(data),
                  processing_class=AutoTokenizer.from_pretrained(model_dir), **extra)  # fmt: skip
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop normally
    batch_inputs = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    return trainer, batch_inputs


def step(trainer, batch) -> float:
    inputs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.training_step(trainer.model, inputs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    trainer.model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=384)
    parser.add_argument("--bf16", action="store_true", help="bf16 weights (GPU)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    texts = [json.dumps(r) for r in rows("dpo", 64)]
    tok = build_tiny_tokenizer(texts)
    model = build_tiny_model(tok, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                             intermediate_size=args.intermediate)  # fmt: skip
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    result: dict[str, float | str] = {}
    for objective in ("sft", "dpo", "kto"):
        pair = {w: build(objective, w, tmp, args.batch, args.bf16) for w in (True, False)}
        times = {True: [], False: []}
        for i in range(args.warmup + args.steps):
            for weighted in (True, False) if i % 2 else (False, True):  # alternate the order too
                t = step(*pair[weighted])
                if i >= args.warmup:
                    times[weighted].append(t)
        med = {w: statistics.median(v) for w, v in times.items()}
        result[objective] = round(med[True] / med[False], 4)
        result[f"{objective}_weighted_ms"] = round(1000 * med[True], 2)
        result[f"{objective}_stock_ms"] = round(1000 * med[False], 2)
        print(
            f"{objective}: weighted {med[True] * 1000:.1f} ms, stock {med[False] * 1000:.1f} ms",
            file=sys.stderr,
        )
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result["parameters"] = sum(p.numel() for p in model.parameters())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
