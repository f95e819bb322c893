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

import logging
import random
import sys
from pathlib import Path
from typing import Any

from east.cache import read_jsonl
from east.checks import import_user_modules
from east.stages.checkpoints import (
    check_disk,
    checkpoint_manifests,
    divergence_guard,
    last_checkpoint,
    train_device_bytes,
)

log = logging.getLogger(__name__)


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
    from east.objectives import get_objective
    from east.stages import sharding_cpu
    from east.stages.save import save_trained

    sharded_on_cpu = sharding_cpu.enable()  # ZeRO-3 / FSDP without CUDA: shard, never plain DDP
    import_user_modules(spec.get("imports") or [])  # where an objective of yours registers itself
    objective, out = spec["objective"], Path(spec["out_dir"])
    work = Path(spec.get("work_dir") or out / "trainer")
    spec_of = get_objective(objective)
    trainer_cls, config_cls = spec_of.trainer_class(), spec_of.config_class()
    rows = [{k: r[k] for k in spec_of.columns} for r in read_jsonl(Path(spec["records"]))]
    if spec_of.shuffle_records:  # its trainer reads rows in order (KTO's KL pairs): seeded
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
        if spec_of.reference_model and not _deepspeed(args):
            # The frozen reference in the model's dtype (TRL would copy the policy's fp32), read
            # whole by every process (ZeRO-3 partitions TRL's own as it loads).
            extra["ref_model"] = load_reference(spec["base_path"], spec["dtype"])
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[*(callbacks or []), divergence_guard(), checkpoint_manifests()],
        **extra,
    )
    from east.tracking import console_progress

    console_progress(trainer, f"train {objective}")
    if trainer.accelerator.is_main_process:
        last_checkpoint(work)  # checkpoints cut short removed, damaged ones set aside
    trainer.accelerator.wait_for_everyone()
    resume = last_checkpoint(work, tidy=False)
    if resume:
        log.info("resuming training from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    save_trained(trainer, out, spec["dtype"], mixed)


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
        # transformers replaces a NaN or infinite step loss in the logs by the window's mean
        # (logging_nan_inf_filter): a diverged run then logged loss 0 and was saved and
        # evaluated. The guard (divergence_guard) must see it.
        logging_nan_inf_filter=False,
        **settings,
    )


def launch(
    spec_path: Path, num_processes: int, accelerate_config: Path | None, launch_args: list[str]
) -> None:
    """``accelerate launch -m east.stages.train SPEC`` on ``num_processes`` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if accelerate_config is not None:
        cmd += ["--config_file", str(resolve_accelerate_config(accelerate_config, spec_path.parent))]
    if not _port_chosen(accelerate_config, launch_args):
        # Port 0: accelerate takes a free one (accelerate/utils/launch.py, get_free_port), so two
        # one-node launches at once (local cells, a test suite in parallel) never meet on 29500.
        cmd += ["--main_process_port", "0"]
    cmd += [*launch_args, "-m", "east.stages.train", str(spec_path)]
    log.info("launching %d training processes: %s", num_processes, " ".join(cmd))
    from east.stages.launch import error_file, start_group, stop_group

    error_file(spec_path).unlink(missing_ok=True)
    proc = start_group(cmd)  # the launcher and its ranks in one group: stopped together
    try:
        code = proc.wait()
    finally:
        stop_group(proc)
    if code != 0:
        from east.stages.launch import worker_failure

        raise worker_failure(
            "train", [spec_path], f"distributed training failed (exit {code}): {' '.join(cmd)}"
        )


def _port_chosen(accelerate_config: Path | None, launch_args: list[str]) -> bool:
    """Whether the user set the rendezvous port, or the launch spans machines (which must
    agree on one): then accelerate's own choice stands."""
    args = [str(a) for a in launch_args]
    if any(a.startswith("--main_process_port") for a in args):
        return True
    for i, a in enumerate(args):
        if a.startswith("--num_machines"):
            value = a.partition("=")[2] or (args[i + 1] if i + 1 < len(args) else "1")
            if int(value) > 1:
                return True
    if accelerate_config is None:
        return False
    import yaml

    config = yaml.safe_load(Path(accelerate_config).read_text()) or {}
    return config.get("main_process_port") is not None or int(config.get("num_machines") or 1) > 1


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
