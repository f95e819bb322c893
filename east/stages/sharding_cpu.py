"""ZeRO-3 and FSDP on CPU processes: the one place where east patches accelerate.

``accelerate launch`` under a DeepSpeed or FSDP config on a machine without CUDA does not
shard (read in accelerate 1.16's ``accelerate/state.py``):

- ``PartialState._prepare_backend`` finds no process-group backend for the CPU
  (``get_distributed_backend("cpu")`` is None when ``cpu=False``), so a DeepSpeed run reports
  one process while DeepSpeed itself has several ranks;
- with ``cpu=True`` (TrainingArguments' ``use_cpu``) it picks gloo, but ``AcceleratorState``
  then never selects DeepSpeed (``... and not cpu``) and selects FSDP only for GPU-type
  states (``MULTI_GPU``, ``MULTI_XPU``, ...): the run is plain DDP under a ZeRO or FSDP key.

:func:`enable` makes both real: the backend is gloo (``MULTI_CPU``), DeepSpeed then takes
over as it does on GPUs (its CPU accelerator and gloo), and a multi-CPU state under
``ACCELERATE_USE_FSDP`` becomes FSDP with its plugin, in ``PartialState``'s shared state
too. :func:`check` is the canary: it fails loudly, naming what moved, when accelerate's
internals no longer look as read.
"""

from __future__ import annotations

import functools
import inspect
import os

#: The accelerate internals the patch relies on, by what it reads from each.
ASSUMPTIONS = {
    "PartialState._prepare_backend(self, cpu, sagemaker_dp, backend) -> (backend, type)": "_prepare_backend",
    "AcceleratorState.__init__ takes fsdp_plugin": "fsdp_plugin",
    "PartialState._shared_state holds distributed_type": "_shared_state",
}


class AccelerateChanged(RuntimeError):
    """accelerate's internals differ from what east's CPU sharding patch was written against."""


def requested() -> str | None:
    """``deepspeed`` or ``fsdp`` when this process was started by ``accelerate launch`` under
    such a config on a machine without CUDA (the case accelerate does not shard); else None."""
    import torch

    if os.environ.get("LOCAL_RANK") is None or torch.cuda.is_available():
        return None
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return None


def check() -> None:
    """The canary: raise :class:`AccelerateChanged` when accelerate moved what the patch uses."""
    import accelerate
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    problems = []
    params = list(inspect.signature(PartialState._prepare_backend).parameters)
    if params[:4] != ["self", "cpu", "sagemaker_dp", "backend"]:
        problems.append(f"PartialState._prepare_backend's parameters are {params}")
    if "fsdp_plugin" not in inspect.signature(AcceleratorState.__init__).parameters:
        problems.append("AcceleratorState.__init__ takes no fsdp_plugin")
    if not isinstance(getattr(PartialState, "_shared_state", None), dict):
        problems.append("PartialState._shared_state is not a dict")
    for name in ("MULTI_CPU", "DEEPSPEED", "FSDP", "NO"):
        if not hasattr(DistributedType, name):
            problems.append(f"DistributedType has no {name}")
    source = inspect.getsource(AcceleratorState.__init__)
    if "ACCELERATE_USE_FSDP" not in source or "DistributedType.MULTI_GPU" not in source:
        problems.append(
            "AcceleratorState.__init__ no longer selects FSDP from ACCELERATE_USE_FSDP for GPU states"
        )
    if problems:
        raise AccelerateChanged(
            f"accelerate {accelerate.__version__} changed what east/stages/sharding_cpu.py patches: "
            + "; ".join(problems)
        )


def enable() -> str | None:
    """Make this process's ``accelerate launch`` DeepSpeed / FSDP config shard on CPU
    processes (see the module docstring). Returns what was enabled, or None where nothing
    needs it (CUDA present, or no such config). Idempotent."""
    kind = requested()
    if kind is None:
        return None
    check()
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if not getattr(PartialState._prepare_backend, "_east_cpu", False):
        original = PartialState._prepare_backend

        @functools.wraps(original)
        def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
            chosen, dtype = original(self, cpu, sagemaker_dp, backend)
            if dtype == DistributedType.NO and requested() is not None:
                return backend or "gloo", DistributedType.MULTI_CPU
            return chosen, dtype

        prepare_backend._east_cpu = True
        PartialState._prepare_backend = prepare_backend

    if kind == "fsdp" and not getattr(AcceleratorState.__init__, "_east_cpu", False):
        init = AcceleratorState.__init__

        @functools.wraps(init)
        def accelerator_state_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if self.distributed_type == DistributedType.MULTI_CPU and requested() == "fsdp":
                from accelerate.utils import FullyShardedDataParallelPlugin

                plugin = kwargs.get("fsdp_plugin") or getattr(self, "fsdp_plugin", None)
                self.fsdp_plugin = plugin or FullyShardedDataParallelPlugin()
                self.distributed_type = DistributedType.FSDP
                PartialState._shared_state["distributed_type"] = DistributedType.FSDP

        accelerator_state_init._east_cpu = True
        AcceleratorState.__init__ = accelerator_state_init
    return kind
