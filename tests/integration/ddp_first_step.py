"""Run one logged step of weighted SFT and DPO; rank 0 writes the first-step losses.

Launched by tests/test_training.py under `accelerate launch --num_processes N --cpu`.
Usage: ddp_first_step.py MODEL_DIR OUT_JSON PER_DEVICE_BATCH
"""

import json
import sys

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, SFTConfig

from east.objectives.dpo.trainer import WeightedDPOTrainer
from east.objectives.sft.trainer import WeightedSFTTrainer

model_dir, out_path, per_device = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys_msg = {"role": "system", "content": "Please reason step by step."}
weights = [0.25, 1.75, 0.5, 1.5]


def user(a):
    return [sys_msg, {"role": "user", "content": f"What is {a} plus {a + 1}?"}]


def say(text):
    return [{"role": "assistant", "content": text}]


sft_rows = [
    {"prompt": user(a), "completion": say(f"\\boxed{{{2 * a + 1}}}" + "!" * a), "weight": w}
    for a, w in zip(range(1, 5), weights)
]
dpo_rows = [
    {
        "prompt": user(a),
        "chosen": say(f"\\boxed{{{2 * a + 1}}}" + "." * a),
        "rejected": say(f"\\boxed{{{2 * a}}}"),
        "weight": w,
    }
    for a, w in zip(range(1, 5), weights)
]
common = dict(
    output_dir=f"{out_path}.out",
    report_to=[],
    bf16=False,
    use_cpu=True,
    save_strategy="no",
    logging_steps=1,
    max_steps=1,
    per_device_train_batch_size=per_device,
    seed=0,
    learning_rate=1e-3,
)
results = {}
for name, cls, cfg, rows in (
    ("sft", WeightedSFTTrainer, SFTConfig, sft_rows),
    ("dpo", WeightedDPOTrainer, DPOConfig, dpo_rows),
):
    extra = {"ref_model": AutoModelForCausalLM.from_pretrained(model_dir)} if name == "dpo" else {}
    trainer = cls(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=cfg(**common),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        **extra,
    )
    trainer.train()
    results[name] = {
        "loss": trainer.state.log_history[0]["loss"],
        "world_size": trainer.accelerator.num_processes,
    }
if trainer.accelerator.is_main_process:
    with open(out_path, "w") as f:
        json.dump(results, f)
