"""Shared by the weighted-trainer tests: example rows with weights, one optimiser step over
chosen micro-batches, and the plain-torch reference step (reference_losses.py)."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer
from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from east.objectives import get_objective
from east.objectives.dpo.trainer import WeightedDPOTrainer
from east.objectives.kto.trainer import WeightedKTOTrainer
from east.objectives.orpo.trainer import WeightedORPOTrainer
from east.objectives.sft.trainer import WeightedSFTTrainer
from east.objectives.simpo.trainer import WeightedCPOTrainer
from tests.conftest import assistant, prompt
from tests.integration.reference_losses import per_example_losses, step_gradient

WEIGHTS = [0.25, 1.75, 0.5, 3.0, 1.0, 0.6, 2.2]


def rows(objective: str, n: int) -> list[dict]:
    out = []
    for a in range(1, n + 1):
        p = prompt(a, a + 2)
        good = assistant(f"{a}+{a + 2}={2 * a + 2}. \\boxed{{{2 * a + 2}}}" + "!" * (a % 3))
        bad = assistant(f"\\boxed{{{2 * a + 1}}}" + "." * a)
        w = WEIGHTS[a - 1]
        if objective == "sft":
            out.append({"prompt": p, "completion": good, "weight": w})
        elif objective in ("dpo", "orpo", "simpo"):
            out.append({"prompt": p, "chosen": good, "rejected": bad, "weight": w})
        else:
            out.append({"prompt": p, "completion": good if a % 2 else bad, "label": bool(a % 2), "weight": w})
    return out


CLASSES = {
    "sft": (WeightedSFTTrainer, SFTTrainer, SFTConfig),
    "dpo": (WeightedDPOTrainer, DPOTrainer, DPOConfig),
    "kto": (WeightedKTOTrainer, KTOTrainer, KTOConfig),
    "orpo": (WeightedORPOTrainer, ORPOTrainer, ORPOConfig),
    "simpo": (WeightedCPOTrainer, CPOTrainer, CPOConfig),
}


#: Each objective's settings in the 2-process reference step (ddp_reference_step.py, and under
#: ZeRO-3 and FSDP2 in tests/engines/test_sharded_training.py).
DDP_SETTINGS = {
    "sft": {},
    "dpo": {"beta": 0.1},
    "kto": {"beta": 0.1, "loss_type": "apo_zero_unpaired"},
    "orpo": {"beta": 0.1},
    "simpo": {"beta": 2.0, "loss_type": "simpo", "simpo_gamma": 1.0, "cpo_alpha": 0.5},
}


def _windowed(cls):
    """``cls`` whose train dataloader yields the micro-batches ``east_windows`` (row indices)."""

    class Windowed(cls):
        east_windows: list[list[int]] | None = None

        def get_train_dataloader(self):
            if self.east_windows is None:
                return super().get_train_dataloader()
            from torch.utils.data import DataLoader

            data = self._remove_unused_columns(self.train_dataset, description="training")
            loader = DataLoader(data, batch_sampler=self.east_windows, collate_fn=self.data_collator)
            return self.accelerator.prepare(loader)

    return Windowed


def make_trainer(
    objective, model_dir, data, windows=None, weighted=True, dataset=None, peft_config=None, **kw
):
    """A weighted (or stock) trainer on ``data`` for one optimiser step over ``windows``
    (micro-batches of row indices; default: TRL's own batching), SGD at learning rate 1.
    ``peft_config``: LoRA adapters on the policy, and no reference model (TRL's adapter-off
    reference)."""
    cls = CLASSES[objective][0 if weighted else 1]
    if not weighted:
        data = [{k: v for k, v in r.items() if k != "weight"} for r in data]
    settings = dict(
        output_dir=str(model_dir / "out"),
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
        dataloader_drop_last=False,
    )
    if windows is not None:
        settings.update(
            per_device_train_batch_size=max(len(w) for w in windows), gradient_accumulation_steps=len(windows)
        )
    config = CLASSES[objective][2](**{**settings, **kw})
    reference_model = get_objective(objective).reference_model
    extra = {"ref_model": AutoModelForCausalLM.from_pretrained(model_dir)} if reference_model else {}
    if peft_config is not None:
        extra = {"peft_config": peft_config}
    trainer = _windowed(cls)(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=config,
        train_dataset=Dataset.from_list(data) if dataset is None else dataset,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        **extra,
    )
    trainer.east_windows = windows
    return trainer


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def one_step(objective, model_dir, data, windows, weighted=True, **kw):
    """Train one optimiser step over ``windows`` (SGD, lr 1); returns (flat parameter update,
    the first log entry)."""
    trainer = make_trainer(objective, model_dir, data, windows, weighted, **kw)
    start = params(trainer.model)
    trainer.train()
    return params(trainer.model) - start, trainer.state.log_history[0]


def reference(objective, model_dir, data, **kw):
    """(-gradient of sum_i w_i loss_i / N: the SGD update at lr 1, sum_i w_i loss_i / N)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = (
        AutoModelForCausalLM.from_pretrained(model_dir) if get_objective(objective).reference_model else None
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    if objective in ("orpo", "simpo"):  # the token ids TRL's experimental trainers prepare
        settings = {k: v for k, v in kw.items() if k in ("loss_type", "beta", "simpo_gamma", "cpo_alpha")}
        stock = make_trainer(objective, model_dir, data, weighted=False, **settings)
        kw = {**kw, "tokenized": [stock.train_dataset[i] for i in range(len(data))]}
    losses = per_example_losses(objective, model, ref, tok, data, **kw)
    grad, value = step_gradient(losses, [r["weight"] for r in data], model)
    return -grad, value


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()
