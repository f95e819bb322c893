"""Weighted DPO with TRL: each preference pair's loss is multiplied by its `weight` column.

python examples/weighted_dpo.py [MODEL]   # a hub id or a local folder with a chat template
"""

import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig

from east.objectives.dpo.trainer import WeightedDPOTrainer


def say(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def pair(a: int) -> dict:  # TRL's conversational preference format, plus a float weight
    prompt, right, wrong = f"What is {a} + {a}?", f"\\boxed{{{2 * a}}}", f"\\boxed{{{2 * a + 1}}}"
    return {
        "prompt": say("user", prompt),
        "chosen": say("assistant", right),
        "rejected": say("assistant", wrong),
        "weight": 0.5 + a / 4,
    }


model_id = sys.argv[1] if len(sys.argv) > 1 else "Qwen/Qwen2.5-0.5B-Instruct"
gpu = torch.cuda.is_available()
args = DPOConfig(
    "weighted-dpo",
    per_device_train_batch_size=4,
    max_steps=2,
    logging_steps=1,
    bf16=gpu,
    use_cpu=not gpu,
    report_to=[],
)
trainer = WeightedDPOTrainer(
    model=AutoModelForCausalLM.from_pretrained(model_id),
    args=args,
    train_dataset=Dataset.from_list([pair(a) for a in range(8)]),
    processing_class=AutoTokenizer.from_pretrained(model_id),
)
trainer.train()
print(
    {k: v for k, v in trainer.state.log_history[0].items() if k in ("loss", "loss_weighted", "weight_mean")}
)
