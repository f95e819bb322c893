"""The train stage's worker side: train one objective from a resolved spec (in the driver,
or in each ``accelerate launch`` worker, which imports only this module), launch the
workers, and the embedded tiny model's warm-up (its "pretraining").

A spec is plain JSON (objective, base model path, records file, TRL settings, seed, chat
template, dtype): the driver writes it into the stage's artifact folder for the workers.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from east.cache import read_json, read_jsonl, write_json
from east.prompts import assistant, messages

log = logging.getLogger(__name__)

#: The record columns each objective's trainer reads.
COLUMNS = {
    "sft": ("prompt", "completion", "weight"),
    "dpo": ("prompt", "chosen", "rejected", "weight"),
    "kto": ("prompt", "completion", "label", "weight"),
}


def model_path(artifact: Path) -> str:
    """The weights a model artifact stands for: a hub id or folder it names (``model.json``),
    or the checkpoint it holds."""
    info = artifact / "model.json"
    if info.exists():
        return read_json(info)["path"]
    return str(artifact / "model")


def train_from_spec(spec: dict[str, Any], callbacks: list[Any] | None = None) -> None:
    """Train one objective from a resolved spec. ``callbacks``: extra transformers callbacks
    (the driver's experiment logger)."""
    from datasets import Dataset

    from east.models import load_model, load_tokenizer
    from east.training import TRAINERS

    objective, out = spec["objective"], Path(spec["out_dir"])
    trainer_cls, config_cls = TRAINERS[objective]
    rows = [{k: r[k] for k in COLUMNS[objective]} for r in read_jsonl(Path(spec["records"]))]
    if objective == "kto":  # KTO samples sequentially (its KL pairs): shuffle here, seeded
        random.Random(spec["seed"]).shuffle(rows)
    args = _trainer_args(config_cls, out, spec["settings"], spec["seed"], spec["report_to"])
    tokenizer = load_tokenizer(spec["base_path"], spec["chat_template"])
    model = load_model(spec["base_path"], spec["dtype"])
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    _fit_and_save(trainer, out)


def _trainer_args(cls: Any, out: Path, settings: dict[str, Any], seed: int, report_to: list[str]) -> Any:
    import torch

    cuda = torch.cuda.is_available()
    settings = dict(settings)
    # One config for CPU and GPU: bf16 and gradient checkpointing only where they pay off.
    settings["bf16"] = bool(settings.get("bf16", False)) and cuda
    settings["gradient_checkpointing"] = bool(settings.get("gradient_checkpointing", False)) and cuda
    return cls(
        output_dir=str(out / "trainer"),
        seed=seed,
        data_seed=seed,
        use_cpu=not cuda,
        report_to=report_to,
        save_strategy="no",
        disable_tqdm=False,
        **settings,
    )


def _fit_and_save(trainer: Any, out: Path) -> None:
    """Train, then save the model, its tokenizer and the log history under ``out``."""
    trainer.train()
    trainer.save_model(str(out / "model"))
    if not trainer.accelerator.is_main_process:
        return
    trainer.processing_class.save_pretrained(str(out / "model"))
    write_json(out / "log_history.json", trainer.state.log_history)
    args = trainer.args
    world = trainer.accelerator.num_processes
    schedule = args.lr_scheduler_type
    info = {
        "processes": world,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "effective_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
        "optimizer_steps": trainer.state.global_step,
        "examples": len(trainer.train_dataset),
        "lr_scheduler_type": str(getattr(schedule, "value", schedule)),
    }
    write_json(out / "train_info.json", info)


def launch_workers(
    spec_path: Path, num_processes: int, accelerate_config: Path | None, launch_args: list[str]
) -> None:
    """``accelerate launch -m east.train_worker SPEC`` on ``num_processes`` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if accelerate_config is not None:
        cmd += ["--config_file", str(accelerate_config)]
    cmd += [*launch_args, "-m", "east.train_worker", str(spec_path)]
    log.info("launching %d training processes: %s", num_processes, " ".join(cmd))
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit {result.returncode}): {' '.join(cmd)}")


#: The warm-up's recipe (tokenizer texts, completion format), in the base model's cache key:
#: 2 = chat markup in the tokenizer's texts, the last worked line's result boxed.
WARMUP_RECIPE = 2


def warm_up_tiny(
    d: Path, tiny: Any, warmup: list[Any], system: str | None, callbacks: list[Any] | None = None
) -> None:
    """Train the tiny model's tokenizer on the task text, then its base policy by SFT
    (``tiny``: a :class:`east.config.TinyModelConfig`; ``warmup``: the task's problems)."""
    from datasets import Dataset
    from trl import SFTConfig

    from east.data.arith import warmup_completion
    from east.models import build_tiny_model, build_tiny_tokenizer
    from east.training import WeightedSFTTrainer

    texts = [p.question + " " + warmup_completion(p) for p in warmup]
    # The chat markup (role names, the system prompt) as often as the task text, so that it
    # merges into a few tokens instead of a character each: half of every sequence otherwise.
    texts += [f"system\n{system or ''}\nuser\nassistant\n"] * len(warmup)
    tokenizer = build_tiny_tokenizer(texts, vocab_size=tiny.vocab_size)
    model = build_tiny_model(
        tokenizer,
        hidden_size=tiny.hidden_size,
        num_layers=tiny.num_layers,
        num_heads=tiny.num_heads,
        intermediate_size=tiny.intermediate_size,
        seed=tiny.seed,
    )
    rows = [
        {"prompt": messages(p.question, system), "completion": assistant(warmup_completion(p))}
        for p in warmup
    ]
    args = SFTConfig(
        output_dir=str(d / "trainer"),
        max_steps=tiny.warmup_steps,
        per_device_train_batch_size=tiny.warmup_batch_size,
        learning_rate=tiny.warmup_lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=50,
        seed=tiny.seed,
        disable_tqdm=True,
    )
    trainer = WeightedSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    _fit_and_save(trainer, d)
