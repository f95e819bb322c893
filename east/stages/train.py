"""The train worker: one objective with the weighted TRL trainers, from a resolved spec — in
the driver, in its own process (one device), or in each ``accelerate launch`` process.

    python -m east.stages.train SPEC.json                       # one process
    accelerate launch [--config_file F] -m east.stages.train SPEC.json

Spec (JSON, written by the driver): ``objective``, ``base_path`` (the policy's weights),
``records`` (JSON Lines), ``out_dir`` (where the trained model, its log history and
``train_info.json`` go), ``work_dir`` (checkpoints; kept across a killed run), ``settings``
(TRL config values), ``seed``, ``chat_template``, ``dtype`` (the model's: sampling and the
DPO/KTO reference use it), ``peft`` (null, or :class:`east.config.PeftConfig`'s fields),
``report_to``.

LoRA (``peft.method=lora``): PEFT adapters on the policy, the base weights frozen in the
model's dtype (fp32 on a CPU) and the adapters in fp32 (PEFT's default upcast); DPO / KTO get
no reference model, so TRL computes the reference with the adapters disabled; the merged
model is saved (and the adapter beside it, under ``adapter/``).

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
    extra: dict[str, Any] = {}
    if spec.get("peft"):
        # Only the adapters train (fp32 master weights: PEFT upcasts them); the frozen base stays
        # in the model's dtype on a GPU. The reference of DPO / KTO: the adapters switched off.
        model = load_model(spec["base_path"], spec["dtype"] if cuda else "float32")
        extra["peft_config"] = lora_config(spec["peft"])
    else:
        # The policy in fp32, whatever the model's dtype: the optimiser's master weights (on a
        # GPU autocast computes in bf16 / fp16; a CPU trains in fp32).
        model = load_model(spec["base_path"], "float32")
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
    from east.tracking import console_progress

    console_progress(trainer, f"train {objective}")
    resume = last_checkpoint(work)
    if resume:
        log.info("resuming training from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    save_trained(trainer, out, spec["dtype"], mixed)


def lora_config(peft: dict[str, Any]) -> Any:
    """PEFT's LoraConfig from :class:`east.config.PeftConfig`'s fields."""
    from peft import LoraConfig

    return LoraConfig(
        r=int(peft["r"]),
        lora_alpha=float(peft["alpha"]),
        lora_dropout=float(peft["dropout"]),
        target_modules=peft["target_modules"],
        task_type="CAUSAL_LM",
    )


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

    saved = resolve_dtype(dtype)
    adapters = is_peft(trainer.model)
    peft_info = _peft_info(trainer.model) if adapters else None  # before merging removes the adapters
    if adapters:
        trained = next(p for p in trainer.model.parameters() if p.requires_grad).dtype
        if not trainer.accelerator.is_main_process:
            return
        trainer.model.save_pretrained(str(out / "adapter"))  # the adapter alone (small)
        merged = trainer.model.merge_and_unload()  # base + alpha / r * B A, a plain model
        merged.to(saved).save_pretrained(str(out / "model"))
    else:
        trained = next(trainer.model.parameters()).dtype
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
        "peft": peft_info,
        "settings": effective_settings(args),
    }
    write_json(out / "train_info.json", info)


def is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _peft_info(model: Any) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    config = model.peft_config["default"]
    return {
        "method": "lora",
        "r": config.r,
        "alpha": config.lora_alpha,
        "target_modules": sorted(
            [config.target_modules] if isinstance(config.target_modules, str) else config.target_modules
        ),
        "trainable_parameters": trainable,
        "parameters": total,
    }


#: Arguments that say where and how a run was logged or saved, not how it trained.
_NOT_SETTINGS = ("output_dir", "logging_dir", "report_to", "run_name", "hub_token", "push_to_hub_token")


def effective_settings(args: Any) -> dict[str, Any]:
    """Every training argument the trainer ran with that differs from its TRL config's default:
    the merged ``objective.trainer`` + ``model.trainer_overrides`` + command line, plus what
    the train stage set (seed, precision, checkpoints), as the trainer saw them."""
    import dataclasses
    import enum

    out = {}
    for f in dataclasses.fields(args):
        if f.name in _NOT_SETTINGS or f.name.startswith("_") or f.default is dataclasses.MISSING:
            continue
        value = getattr(args, f.name, None)
        if isinstance(value, enum.Enum):
            value = value.value
        default = f.default.value if isinstance(f.default, enum.Enum) else f.default
        if value == default or value is None or value in ([], {}, ""):
            continue
        if isinstance(value, str | int | float | bool) or (
            isinstance(value, list | dict) and _jsonable(value)
        ):
            out[f.name] = value  # (objects such as accelerator_config: built from defaults)
    return dict(sorted(out.items()))


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


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
