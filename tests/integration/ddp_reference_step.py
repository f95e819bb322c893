"""One weighted optimiser step on 2 gloo processes, for test_training_reference.py.

Usage (under `accelerate launch --multi_gpu --num_processes 2`):
    ddp_reference_step.py OBJECTIVE MODEL_DIR ROWS_JSON OUT_JSON [WINDOWS_JSON]

Without WINDOWS_JSON: the examples in order (a sequential sampler), per-device batch 2,
accumulation 2, even_batches=False: with 7 rows, rank 0 trains [0, 1], [4, 5] and rank 1
[2, 3], [6]. With it (a list per rank of micro-batches of row indices): each rank trains its
own micro-batches. Rank 0 writes the parameter update, the first log entry and which
examples each rank saw.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout: tests.integration

import torch
from datasets import Dataset
from torch.utils.data import SequentialSampler
from transformers import AutoModelForCausalLM, AutoTokenizer

from east.objectives import get_objective
from tests.integration.trainer_runs import CLASSES, DDP_SETTINGS

objective, model_dir, rows_path, out_path = sys.argv[1:5]
windows = json.loads(open(sys.argv[5]).read()) if len(sys.argv) > 5 else None
rows = json.loads(open(rows_path).read())
for i, r in enumerate(rows):
    r["weight"] = float(r["weight"])
    r["index"] = i
cls, _, config = CLASSES[objective]
seen: list[int] = []


class Ordered(cls):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)

    def get_train_dataloader(self):
        if windows is None:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        mine = windows[self.accelerator.process_index]  # not sharded again: each rank's own
        return DataLoader(self.train_dataset, batch_sampler=mine, collate_fn=self.data_collator)

    def compute_loss(self, model, inputs, *args, **kwargs):
        seen.extend(inputs.pop("index").tolist())
        return super().compute_loss(model, inputs, *args, **kwargs)


extra = dict(DDP_SETTINGS[objective])
args = config(
    output_dir=f"{out_path}.out",
    report_to=[],
    use_cpu=True,
    bf16=False,
    save_strategy="no",
    logging_steps=1,
    seed=0,
    max_steps=1,
    optim="sgd",
    learning_rate=1.0,
    lr_scheduler_type="constant",
    warmup_steps=0,
    weight_decay=0.0,
    max_grad_norm=0.0,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=len(windows[0]) if windows else 2,
    dataloader_drop_last=False,
    remove_unused_columns=False,
    accelerator_config={"even_batches": False},
    **extra,
)


class IndexCollator:
    """Carries each example's index past TRL's collator (which drops unknown keys)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        batch = self.inner(examples)
        batch["index"] = torch.tensor([e["index"] for e in examples])
        return batch

    def __getattr__(self, name):
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


model = AutoModelForCausalLM.from_pretrained(model_dir)
start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
reference_model = get_objective(objective).reference_model
ref = {"ref_model": AutoModelForCausalLM.from_pretrained(model_dir)} if reference_model else {}
trainer = Ordered(
    model=model,
    args=args,
    train_dataset=Dataset.from_list(rows),
    processing_class=AutoTokenizer.from_pretrained(model_dir),
    **ref,
)
trainer.data_collator.inner = IndexCollator(trainer.data_collator.inner)
trainer.train()
update = torch.cat([p.detach().flatten() for p in trainer.model.parameters()]) - start
everyone = [None] * trainer.accelerator.num_processes
torch.distributed.all_gather_object(everyone, seen)
if trainer.accelerator.is_main_process:
    with open(out_path, "w") as f:
        json.dump(
            {
                "update": update.tolist(),
                "log": trainer.state.log_history[0],
                "world_size": trainer.accelerator.num_processes,
                "rank_examples": everyone,
            },
            f,
        )
torch.distributed.barrier()
torch.distributed.destroy_process_group()
