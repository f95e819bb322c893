"""The train worker: one objective with the weighted TRL trainers, from a resolved spec — in
the driver, in its own process (one device), or in each ``accelerate launch`` process.

    python -m east.stages.train SPEC.json                       # one process
    accelerate launch [--config_file F] -m east.stages.train SPEC.json

Spec (JSON, written by the driver): ``objective``, ``base_path`` (the policy's weights),
``records`` (JSON Lines), ``out_dir`` (where the trained model, its log history and
``train_info.json`` go), ``work_dir`` (checkpoints; kept across a killed run), ``settings``
(TRL config values), ``seed``, ``chat_template``, ``dtype`` (the model's: sampling and the
DPO/KTO reference use it), ``report_to``.

Precision: on a GPU the trainable policy is loaded in fp32 and trained under bf16 (or fp16,
with a loss scaler) autocast, so that small updates are not lost to bf16 rounding; the
saved model is cast back to the model's dtype. The reference model of DPO / KTO stays in the
model's dtype. On a CPU everything is fp32 (bf16 is several times slower there).

Preemption: every ``save_steps`` optimiser steps (``objective.trainer.save_steps``) a
checkpoint goes to ``work_dir``; a rerun of a killed stage resumes from the newest complete
one (HF Trainer's resume: model, optimiser, scheduler, RNG and data position) and ends at the
weights an uninterrupted run ends at.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from east.cache import read_jsonl, write_json

log = logging.getLogger(__name__)

#: The record columns each objective's trainer reads.
COLUMNS = {
    "sft": ("prompt", "completion", "weight"),
    "dpo": ("prompt", "chosen", "rejected", "weight"),
    "kto": ("prompt", "completion", "label", "weight"),
}
#: Trainer settings the train stage sets itself (a config value for one is refused upstream).
RESERVED = ("output_dir", "seed", "data_seed", "report_to", "use_cpu", "save_strategy", "bf16", "fp16")


def precision(dtype_name: str, cuda: bool) -> str:
    """The autocast precision the policy trains under: ``bf16``, ``fp16`` or ``no`` (fp32)."""
    import torch

    from east.models import resolve_dtype

    if not cuda:
        return "no"
    dtype = resolve_dtype(dtype_name)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


def train_from_spec(spec: dict[str, Any], callbacks: list[Any] | None = None) -> None:
    """Train one objective from a resolved spec. ``callbacks``: extra transformers callbacks
    (the driver's experiment logger, when it trains inline)."""
    import torch
    from datasets import Dataset

    from east.models import load_model, load_tokenizer
    from east.training import TRAINERS

    objective, out = spec["objective"], Path(spec["out_dir"])
    work = Path(spec.get("work_dir") or out / "trainer")
    trainer_cls, config_cls = TRAINERS[objective]
    rows = [{k: r[k] for k in COLUMNS[objective]} for r in read_jsonl(Path(spec["records"]))]
    if objective == "kto":  # KTO samples sequentially (its KL pairs): shuffle here, seeded
        random.Random(spec["seed"]).shuffle(rows)
    cuda = torch.cuda.is_available()
    mixed = precision(spec["dtype"], cuda)
    args = _trainer_args(config_cls, work, spec["settings"], spec["seed"], spec["report_to"], mixed, cuda)
    tokenizer = load_tokenizer(spec["base_path"], spec["chat_template"])
    # The policy in fp32, whatever the model's dtype: the optimiser's master weights (on a GPU
    # autocast computes in bf16 / fp16; a CPU trains in fp32).
    model = load_model(spec["base_path"], "float32")
    extra = {}
    if objective != "sft" and args.world_size == 1 and not getattr(args, "deepspeed", None):
        # The frozen reference in the model's dtype (TRL would copy the policy's fp32).
        extra["ref_model"] = load_model(spec["base_path"], spec["dtype"])
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
        **extra,
    )
    resume = last_checkpoint(work)
    if resume:
        log.info("resuming training from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    save_trained(trainer, out, spec["dtype"], mixed)


def _trainer_args(
    cls: Any, work: Path, settings: dict[str, Any], seed: int, report_to: list[str], mixed: str, cuda: bool
) -> Any:
    settings = dict(settings)
    save_steps = settings.pop("save_steps", 0) or 0
    return cls(
        output_dir=str(work),
        seed=seed,
        data_seed=seed,
        use_cpu=not cuda,
        report_to=report_to,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=1,  # the newest checkpoint is all a resume needs
        bf16=mixed == "bf16",
        fp16=mixed == "fp16",
        disable_tqdm=False,
        **settings,
    )


def last_checkpoint(work: Path) -> str | None:
    """The newest complete checkpoint under ``work`` (one a kill cut short, with no
    ``trainer_state.json`` — written last — is removed), or None."""
    if not work.is_dir():
        return None
    found = []
    for d in work.glob("checkpoint-*"):
        step = d.name.split("-")[-1]
        if not (d.is_dir() and step.isdigit()):
            continue
        if _complete(d):
            found.append((int(step), d))
        else:
            log.warning("removing %s: a checkpoint cut short by a kill", d)
            shutil.rmtree(d, ignore_errors=True)
    return str(max(found)[1]) if found else None


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def save_trained(trainer: Any, out: Path, dtype: str, mixed: str) -> None:
    """Save the model (in the model's dtype), its tokenizer, the log history and
    ``train_info.json`` under ``out``."""
    import torch

    from east.models import resolve_dtype

    trained = next(trainer.model.parameters()).dtype
    saved = resolve_dtype(dtype)
    if saved != trained and not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        trainer.model.to(saved)  # fp32 master weights -> the dtype sampling loads (ZeRO-3 saves 16-bit)
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
        "param_dtype": str(trained).removeprefix("torch."),
        "saved_dtype": str(saved).removeprefix("torch."),
        "mixed_precision": mixed,
        "devices_per_process": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "device": trainer.accelerator.device.type,
        "gradient_checkpointing": bool(args.gradient_checkpointing),
    }
    write_json(out / "train_info.json", info)


def launch(
    spec_path: Path, num_processes: int, accelerate_config: Path | None, launch_args: list[str]
) -> None:
    """``accelerate launch -m east.stages.train SPEC`` on ``num_processes`` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if accelerate_config is not None:
        cmd += ["--config_file", str(accelerate_config)]
    cmd += [*launch_args, "-m", "east.stages.train", str(spec_path)]
    log.info("launching %d training processes: %s", num_processes, " ".join(cmd))
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit {result.returncode}): {' '.join(cmd)}")


def main() -> None:
    from east.stages.launch import worker_main

    worker_main("train", train_from_spec)
    # Leave together: a rank that exits while another still writes can abort in gloo's
    # teardown ("terminate called without an active exception"), failing a finished stage.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
