"""Saving a trained model the same way whichever stage trained it (the tiny model's warm-up,
the train stage) and engine (one process, DDP, FSDP, ZeRO-3, LoRA): the weights in the
model's dtype, the tokenizer, the log history and ``train_info.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from east.cache import write_json


def save_trained(trainer: Any, out: Path, dtype: str, mixed: str) -> None:
    """Save the model (in the model's dtype), its tokenizer, the log history and
    ``train_info.json`` under ``out``."""
    import torch

    from east.models import resolve_dtype

    saved = resolve_dtype(dtype)
    sharding = sharding_info(trainer)  # every rank takes part, before the save gathers weights
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
        # A sharded save writes what the engine held: ZeRO-3's module dtype, FSDP's fp32 full
        # state dict. The artifact holds the model's dtype, whichever engine trained it.
        cast_saved(out / "model", saved)
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
        "reference_dtype": reference_dtype(trainer),
        "sharding": sharding,
        "settings": effective_settings(args),
        "loss": loss_summary(trainer.state.log_history),
    }
    write_json(out / "train_info.json", info)


#: A run whose loss ends above this multiple of where it started has diverged (flagged in the
#: summary and results.json; not refused: its numbers are still what the settings gave).
DIVERGED_FACTOR = 2.0


def loss_summary(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The training loss's first logged value, the mean of its last three, and whether it
    diverged: ended above DIVERGED_FACTOR times its start (a learning rate too high)."""
    losses = [e["loss"] for e in log_history if isinstance(e.get("loss"), int | float)]
    if not losses:
        return {"first": None, "last": None, "diverged": False}
    first, last = losses[0], sum(losses[-3:]) / len(losses[-3:])
    return {"first": first, "last": last, "diverged": bool(first > 0 and last > DIVERGED_FACTOR * first)}


def cast_saved(folder: Path, dtype: Any) -> None:
    """Rewrite ``folder``'s safetensors files with every floating tensor in ``dtype`` (and the
    config's ``dtype`` to match), where they hold another."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    name = str(dtype).removeprefix("torch.")
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
        if all(t.dtype == dtype or not t.is_floating_point() for t in tensors.values()):
            continue
        cast = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}
        save_file(cast, str(file), metadata={**metadata, "format": "pt"})
    config = folder / "config.json"
    if config.exists():
        data = json.loads(config.read_text())
        for key in ("dtype", "torch_dtype"):
            if key in data:
                data[key] = name
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def reference_dtype(trainer: Any) -> str | None:
    """The dtype the DPO / KTO reference model computed in (None: SFT, or LoRA's adapter-off
    policy); a ZeRO-3 engine's module parameters say its dtype too."""
    ref = getattr(trainer, "ref_model", None)
    if ref is None:
        return None
    module = getattr(ref, "module", ref)
    first = next(module.parameters(), None)
    return None if first is None else str(first.dtype).removeprefix("torch.")


def sharding_info(trainer: Any) -> dict[str, Any]:
    """How the policy's parameters were held: accelerate's distributed type, the parameter
    count, and the elements each process held (ZeRO-3: its partition, ``ds_tensor``; FSDP2:
    its DTensor shards; otherwise whole copies) — proof that a ZeRO-3 or FSDP run sharded."""
    import torch.distributed as dist

    total = local = 0
    for p in trainer.model.parameters():
        if hasattr(p, "ds_numel"):  # DeepSpeed ZeRO-3: the full size, and this rank's partition
            total += p.ds_numel
            local += p.ds_tensor.numel()
        else:  # a DTensor's numel is the full size, its local tensor this rank's shard
            total += p.numel()
            local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    per_process = [local]
    if dist.is_available() and dist.is_initialized():
        per_process = [None] * dist.get_world_size()
        dist.all_gather_object(per_process, local)
    kind = trainer.accelerator.distributed_type
    return {
        "distributed_type": str(getattr(kind, "value", kind)),
        "parameters": total,
        "parameters_per_process": per_process,
    }


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
