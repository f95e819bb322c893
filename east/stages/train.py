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
    from east.stages import sharding_cpu
    from east.training import TRAINERS

    sharded_on_cpu = sharding_cpu.enable()  # ZeRO-3 / FSDP without CUDA: shard, never plain DDP
    objective, out = spec["objective"], Path(spec["out_dir"])
    work = Path(spec.get("work_dir") or out / "trainer")
    trainer_cls, config_cls = TRAINERS[objective]
    rows = [{k: r[k] for k in COLUMNS[objective]} for r in read_jsonl(Path(spec["records"]))]
    if objective == "kto":  # KTO samples sequentially (its KL pairs): shuffle here, seeded
        random.Random(spec["seed"]).shuffle(rows)
    cuda = torch.cuda.is_available()
    mixed = precision(spec["dtype"], cuda)
    # use_cpu would make accelerate run DDP under a ZeRO-3 / FSDP config: not when sharding.
    use_cpu = not cuda and sharded_on_cpu is None
    args = _trainer_args(config_cls, work, spec["settings"], spec["seed"], spec["report_to"], mixed, use_cpu)
    from east.stages.launch import check_device_memory

    check_device_memory(
        train_device_bytes(spec["base_path"], args.world_size, sharded=_deepspeed(args) or _fsdp(args)),
        f"training {objective} on {spec['base_path']}",
    )
    check_disk(work, spec["base_path"], spec["settings"], spec["dtype"])
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
        if objective != "sft" and not _deepspeed(args):
            # The frozen reference in the model's dtype (TRL would copy the policy's fp32), read
            # whole by every process (ZeRO-3 partitions TRL's own as it loads).
            extra["ref_model"] = load_reference(spec["base_path"], spec["dtype"])
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


class DiskSpaceError(RuntimeError):
    """Too little free disk for a train stage's checkpoints and model."""


#: Bytes a checkpoint takes per parameter, at most: fp32 master weights (4) and Adam's two
#: moments (8), written by the HF Trainer or as ZeRO-3 partitions, plus a 16-bit (2) or fp32
#: (4) copy of the weights beside them. 8B: about 128 GB a checkpoint.
CHECKPOINT_BYTES_PER_PARAMETER = 16


def disk_need(base_path: str, settings: dict[str, Any], dtype: str) -> int | None:
    """The most disk a train stage holds at once: two checkpoints while the newest is written
    and the older not yet rotated out (``save_total_limit=1``), when it checkpoints at all,
    plus the trained model in its dtype. None where the weights are not a local folder."""
    params = _parameters(base_path)
    if params is None:
        return None
    saved = 2 if dtype in ("bfloat16", "bf16", "float16", "fp16") else 4
    checkpoints = 2 if settings.get("save_steps") else 0
    return int(params * (checkpoints * CHECKPOINT_BYTES_PER_PARAMETER + saved))


def check_disk(folder: Path, base_path: str, settings: dict[str, Any], dtype: str) -> None:
    """Fail in one line, before any weights load, when ``folder``'s filesystem has less free
    space than :func:`disk_need` (an 8B cell: about 270 GB)."""
    need = disk_need(base_path, settings, dtype)
    if need is None:
        return
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < need:
        gb = 1e9
        raise DiskSpaceError(
            f"training needs about {need / gb:.1f} GB of free disk under {existing} (two checkpoints of "
            f"{CHECKPOINT_BYTES_PER_PARAMETER} bytes a parameter while one rotates out, and the model), and "
            f"{free / gb:.1f} GB is free: put paths.cache_dir (EAST_CACHE_DIR) on a larger disk, or write fewer "
            "checkpoints (objective.trainer.save_steps=0: none, and a killed run restarts its training)"
        )


def train_device_bytes(base_path: str, processes: int, sharded: bool) -> int | None:
    """The least device memory one training process needs before it loads anything: the
    policy's fp32 master weights, their gradients and Adam's two moments (16 bytes a
    parameter), that process's share of them when ZeRO-3 / FSDP shard them. Activations and
    the DPO / KTO reference come on top: a floor that fails a GPU another process holds in one
    line, not a prediction. None where the weights are not a local folder (a hub id)."""
    params = _parameters(base_path)
    if params is None:
        return None
    return int(16 * params / (processes if sharded else 1))


def _parameters(base_path: str) -> float | None:
    """The parameter count of a local (or locally cached) checkpoint, from its weight files'
    size; None for a hub id not downloaded."""
    from east.stages.launch import checkpoint_bytes

    stored = checkpoint_bytes(base_path)
    return None if stored is None else stored / _bytes_per_parameter(base_path)


def _bytes_per_parameter(base_path: str) -> int:
    """Bytes a stored parameter takes (config.json's dtype; 4 when it does not say)."""
    from east.stages.launch import cached_snapshot

    folder = Path(base_path) if Path(base_path).is_dir() else cached_snapshot(base_path)
    try:
        config = json.loads((folder / "config.json").read_text()) if folder else {}
    except (OSError, ValueError):
        return 4
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return 2 if dtype in ("bfloat16", "float16") else 4


def _fsdp(args: Any) -> bool:
    import os

    return bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP") == "true"


def _deepspeed(args: Any) -> bool:
    import os

    return bool(getattr(args, "deepspeed", None)) or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"


def load_reference(path: str, dtype: str) -> Any:
    """The DPO / KTO reference model with its weights on every process.

    Under FSDP with ``fsdp_cpu_ram_efficient_loading`` transformers loads zeros on every
    process but local rank 0, expecting rank 0 to broadcast its weights when the model is
    wrapped (transformers/modeling_utils.py, ``is_fsdp_enabled() and not
    is_local_dist_rank_0()``). accelerate does that for the policy it prepares; TRL's
    ``prepare_fsdp`` (trl/models/utils.py) shards the reference without it, so a reference
    TRL loaded itself would be zeros on half the ranks (caught by tests/engines on 2 CPU
    processes). The reference is read whole here instead: in the model's dtype, frozen."""
    import os

    from east.models import load_model

    key = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        return load_model(path, dtype)
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


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
    cls: Any, work: Path, settings: dict[str, Any], seed: int, report_to: list[str], mixed: str, use_cpu: bool
) -> Any:
    settings = dict(settings)
    save_steps = settings.pop("save_steps", 0) or 0
    return cls(
        output_dir=str(work),
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
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
    }
    write_json(out / "train_info.json", info)


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


def launch(
    spec_path: Path, num_processes: int, accelerate_config: Path | None, launch_args: list[str]
) -> None:
    """``accelerate launch -m east.stages.train SPEC`` on ``num_processes`` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if accelerate_config is not None:
        cmd += ["--config_file", str(resolve_accelerate_config(accelerate_config, spec_path.parent))]
    cmd += [*launch_args, "-m", "east.stages.train", str(spec_path)]
    log.info("launching %d training processes: %s", num_processes, " ".join(cmd))
    from east.stages.launch import start_group, stop_group

    proc = start_group(cmd)  # the launcher and its ranks in one group: stopped together
    try:
        code = proc.wait()
    finally:
        stop_group(proc)
    if code != 0:
        raise RuntimeError(f"distributed training failed (exit {code}): {' '.join(cmd)}")


def resolve_accelerate_config(path: Path, folder: Path) -> Path:
    """``path``, or where it names a DeepSpeed config file by a relative path (relative to the
    accelerate config, as conf/accelerate/zero3_cpu.yaml does), a copy in ``folder`` naming
    it by its absolute path: accelerate reads it relative to whatever folder it runs in."""
    import yaml

    config = yaml.safe_load(path.read_text()) or {}
    ds = config.get("deepspeed_config") or {}
    file = ds.get("deepspeed_config_file")
    if not file or Path(file).is_absolute():
        return path
    ds["deepspeed_config_file"] = str((path.parent / file).resolve())
    out = folder / "accelerate_config.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


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
