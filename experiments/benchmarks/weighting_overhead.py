"""Step time of the weighted trainers against TRL's stock trainers, side by side.

For each objective, a weighted and a stock trainer are built on the same model and data and
timed in interleaved pairs (paired.py); the geometric-mean ratio weighted/stock is reported
with a 95% bootstrap interval over the pairs. Two measures:

- ``--mode loop`` (default): ``trainer.train()`` for ``--steps`` optimiser steps of
  ``--accumulation`` micro-batches each, logging every step: everything a real step pays
  (collation, the step's example count, forward, backward, optimiser, logs).
- ``--mode step``: ``training_step`` (forward + backward) on one prepared batch.

The default model (~20M parameters, hidden 512 x 6 layers) keeps a CPU step in the hundreds
of milliseconds, well above timer and scheduler noise. Prints one JSON line last:
{"sft": ratio, "sft_ci": [low, high], ...}.

    python experiments/benchmarks/weighting_overhead.py [--pairs 20] [--mode loop|step] [--objectives kto]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import paired_times, ratio_with_interval

from east.models import build_tiny_model, build_tiny_tokenizer, resolve_dtype
from east.objectives.dpo.trainer import WeightedDPOTrainer
from east.objectives.kto.trainer import WeightedKTOTrainer
from east.objectives.sft.trainer import WeightedSFTTrainer

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


def build(
    objective: str,
    weighted: bool,
    model_dir: Path,
    batch: int,
    bf16: bool,
    steps: int = 1,
    accumulation: int = 1,
):
    cls = CLASSES[objective][0 if weighted else 1]
    data = rows(objective, 64)
    if not weighted:
        data = [{k: v for k, v in r.items() if k != "weight"} for r in data]
    dtype = "bfloat16" if bf16 else "float32"
    load = lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype))  # noqa: E731
    args = CLASSES[objective][2](
        output_dir=str(model_dir / "out"),
        report_to=[],
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    extra = {"ref_model": load()} if objective != "sft" else {}
    trainer = cls(
        model=load(),
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        **extra,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop normally
    batch_inputs = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    return trainer, batch_inputs


def step(trainer, batch) -> None:
    """One training step (forward + backward) on a copy of the prepared batch."""
    inputs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    trainer.training_step(trainer.model, inputs)
    trainer.model.zero_grad(set_to_none=True)


def compare(objective: str, model_dir: Path, args: argparse.Namespace) -> dict:
    """Weighted vs stock time for one objective: ratio and 95% interval."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else None
    if args.mode == "step":
        weighted, stock = (build(objective, w, model_dir, args.batch, args.bf16) for w in (True, False))
        a, b = (lambda: step(*weighted)), (lambda: step(*stock))
    else:
        weighted, stock = (
            build(objective, w, model_dir, args.batch, args.bf16, args.steps, args.accumulation)[0]
            for w in (True, False)
        )
        a, b = weighted.train, stock.train
    ta, tb = paired_times(a, b, args.pairs, args.warmup, sync)
    return ratio_with_interval(ta, tb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--mode", choices=("loop", "step"), default="loop")
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per timed run (loop mode)")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per step (loop mode)")
    parser.add_argument("--objectives", default="sft,dpo,kto")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--bf16", action="store_true", help="bf16 weights (GPU)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp())
    texts = [json.dumps(r) for r in rows("dpo", 64)]
    tok = build_tiny_tokenizer(texts)
    model = build_tiny_model(
        tok,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        intermediate_size=args.intermediate,
    )
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    result: dict[str, object] = {}
    for objective in args.objectives.split(","):
        r = compare(objective, tmp, args)
        result[objective] = r["ratio"]
        result[f"{objective}_ci"] = [r["ci_low"], r["ci_high"]]
        result[f"{objective}_weighted_ms"], result[f"{objective}_stock_ms"] = r["a_ms"], r["b_ms"]
        print(
            f"{objective}: weighted/stock {r['ratio']} (95% CI {r['ci_low']}-{r['ci_high']}, {r['pairs']} pairs; "
            f"medians {r['a_ms']} / {r['b_ms']} ms)",
            file=sys.stderr,
        )
    result.update(pairs=args.pairs, mode=args.mode, batch=args.batch)
    if args.mode == "loop":
        result.update(steps=args.steps, accumulation=args.accumulation)
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result["parameters"] = sum(p.numel() for p in model.parameters())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
