"""The one patch of accelerate (east/stages/sharding_cpu.py): its canary passes on the
installed accelerate and fails loudly, naming what moved, when accelerate's internals change;
it does nothing outside an `accelerate launch` of a ZeRO-3 / FSDP config on a CPU machine.
That it makes both shard is tests/engines/test_sharded_training.py's, on the real engines."""

from __future__ import annotations

import pytest

from east.stages import sharding_cpu


def test_the_canary_passes_on_the_installed_accelerate():
    sharding_cpu.check()


def test_the_canary_names_what_moved(monkeypatch):
    from accelerate.state import PartialState

    def moved(self, cpu=False, backend=None):  # a parameter gone: not the method read
        return None, None

    monkeypatch.setattr(PartialState, "_prepare_backend", moved)
    with pytest.raises(sharding_cpu.AccelerateChanged, match=r"accelerate .* changed .*_prepare_backend"):
        sharding_cpu.check()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),  # not under accelerate launch
        ({"LOCAL_RANK": "0"}, None),  # DDP: nothing to patch
        ({"LOCAL_RANK": "0", "ACCELERATE_USE_DEEPSPEED": "true"}, "deepspeed"),
        ({"LOCAL_RANK": "1", "ACCELERATE_USE_FSDP": "true"}, "fsdp"),
    ],
)
def test_it_acts_only_for_zero3_or_fsdp_under_accelerate_launch_on_a_cpu(monkeypatch, env, expected):
    for key in ("LOCAL_RANK", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert sharding_cpu.requested() == expected
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert sharding_cpu.requested() is None  # with CUDA accelerate shards by itself
