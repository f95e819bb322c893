"""What depends on this machine and the world: devices for the chosen placement, the sampler
backend's and DeepSpeed's packages, LoRA with sharding, and the hub ids the run reads (part
of east.validate)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from east.checks import fail, locate
from east.config import Config
from east.errors import ConfigError
from east.validate.keys import backend_class


def _check_deepspeed_installed(c: Config) -> None:
    """A ZeRO-3 config without DeepSpeed is one line saying how to install it, before any
    stage runs (not accelerate's ImportError once sampling and grading are done)."""
    import importlib.util

    dist = c.distributed
    if c.evaluation.only or c.stop_after == "shared" or not dist.accelerate_config:
        return
    if dist.distributed_type() == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        fail(
            "distributed.accelerate_config",
            dist.accelerate_config,
            "DeepSpeed is not installed: pip install 'east[deepspeed]' (on a CPU it also needs g++)",
        )


def _check_logger(node: Any, environment: bool) -> None:
    """The ``logger`` group: its ``_target_`` importable, and its settings as the logger class
    checks them (``settings_problem``: W&B's mode and tags; with ``environment``, also the
    ``WANDB_MODE`` this machine sets), so that a sweep's bad cell stops before any job runs."""
    import os

    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict) or not node.get("_target_"):
        return
    target = str(node["_target_"])
    try:
        cls = locate(target)
    except ImportError as e:
        raise ConfigError(f"invalid config logger._target_={target!r}: {e}") from None
    check = getattr(cls, "settings_problem", None)
    if check is not None:
        env_mode = os.environ.get("WANDB_MODE") if environment else None
        problem = check(node.get("mode"), list(node.get("tags") or []), env_mode)
        if problem:
            raise ConfigError(problem)


def _sampler_target(c: Config) -> str:
    return c.sampler._target_ if dataclasses.is_dataclass(c.sampler) else c.sampler.get("_target_", "")


def _check_sampler_installed(c: Config) -> None:
    """The packages the run's backend declares (``libraries``), installed: one line saying how
    to get them (``install_hint``), not an ImportError in a worker after the warm-up."""
    import importlib.util

    target = _sampler_target(c)
    cls = backend_class(target)
    for package in cls.libraries:
        if importlib.util.find_spec(package) is None:
            hint = f": {cls.install_hint}" if cls.install_hint else ""
            fail("sampler._target_", target, f"it needs {package}, which is not installed{hint}")


def _check_sampler(c: Config) -> None:
    """What the run's backend declares (east.samplers.Sampler), checked before any stage runs:
    token entropies where the mapping reads them, and its own check of the run here."""
    from east.weighting import canonical, get_mapping

    target = _sampler_target(c)
    cls = backend_class(target)
    reads = get_mapping(canonical(c.east.mapping, c.east.sharpness)[0]).signal
    if reads == "token_entropy" and not c.evaluation.only and not cls.returns_token_entropy:
        fail(
            "east.mapping",
            c.east.mapping,
            f"it reads token entropies, and the sampler {target} does not return them "
            "(returns_token_entropy); use sampler=hf or sampler=vllm",
        )
    problem = cls.config_problem(c)
    if problem is not None:
        fail(*problem)


def _check_peft(c: Config) -> None:
    """LoRA trains on whole-model processes (one, or DDP): its merged checkpoint is written from
    an unsharded model."""
    dist = c.distributed
    if not c.peft.enabled or not dist.accelerate_config:
        return
    kind = dist.distributed_type()
    if kind in ("FSDP", "DEEPSPEED"):
        fail(
            "peft.method",
            c.peft.method,
            f"LoRA with {kind} is not supported here (the merged model is written from an unsharded "
            "policy); LoRA's frozen base fits where full training does not: use distributed=none or ddp",
        )


def _check_placement(c: Config) -> None:
    """Settings whose devices do not exist here, or that would train on the wrong ones."""
    import torch

    cuda = torch.cuda.is_available()
    dist = c.distributed
    trains = not (c.evaluation.only or c.stop_after == "shared")
    if trains and dist.accelerate_config:
        accel = dist.accelerate_settings()
        kind = accel.get("distributed_type")
        if kind in ("FSDP", "DEEPSPEED") and not cuda and accel.get("mixed_precision", "no") != "no":
            # A CPU trains in fp32 (bf16 autocast there is slow, and DeepSpeed's bf16 engine
            # conflicts with fp32 training): the CPU variants shard the same way without it.
            variant = {"FSDP": "fsdp_cpu", "DEEPSPEED": "zero3_cpu"}[kind]
            fail(
                "distributed.accelerate_config",
                dist.accelerate_config,
                f"{kind} with {accel['mixed_precision']} autocast needs CUDA devices, and none is visible; "
                f"on a CPU use distributed={variant} ({kind} over CPU processes, fp32)",
            )
    if c.isolate_stages is False and dist.num_processes == 1 and cuda and torch.cuda.device_count() > 1:
        fail(
            "isolate_stages",
            False,
            f"{torch.cuda.device_count()} GPUs are visible: training in the driver would run under "
            "nn.DataParallel over all of them (a larger batch than configured); keep isolate_stages=auto "
            "(each stage sees the devices it needs) or set CUDA_VISIBLE_DEVICES to one device",
        )


def check_sources(c: Config) -> None:
    """Before any stage: every hub id the run reads (the model, datasets without a local path)
    is in the local Hugging Face cache or the hub is reachable. Offline, hub libraries retry
    for about a minute and end in a traceback; this is one line naming the id and the local
    alternative."""

    sources = []
    if c.model.tiny is None and c.model.path and not Path(c.model.path).expanduser().exists():
        sources.append((c.model.path, "model", "model.path=<a local folder of the weights>"))
    d = c.dataset
    if d.arith is None:
        for name in [None, *(d.test_sets or list(d.tests))]:
            spec = d if name is None else d.test_source(name)[0]
            if not spec.path and spec.hub_id:
                where = "dataset.path" if name is None else f"dataset.tests.{name}.path"
                sources.append((spec.hub_id, "dataset", f"paths.data_dir or {where} (local copies)"))
    for repo_id, kind, local in dict.fromkeys(sources):
        problem = hub_problem(repo_id, kind)
        if problem:
            raise ConfigError(f"{kind} {repo_id!r} is a hub id {problem}; use {local}")


def hub_problem(repo_id: str, kind: str) -> str | None:
    """Why ``repo_id`` cannot be had now (not cached, and offline or the hub unreachable), or None."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, snapshot_download

    try:
        snapshot_download(repo_id, repo_type=kind if kind == "dataset" else None, local_files_only=True)
        return None
    except Exception:  # not (wholly) in the local cache
        pass
    if constants.HF_HUB_OFFLINE or (os.environ.get("HF_DATASETS_OFFLINE") == "1" and kind == "dataset"):
        return "that is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        return (
            f"that is not in the local Hugging Face cache, and {host} cannot be reached ({e.strerror or e})"
        )
    return None
