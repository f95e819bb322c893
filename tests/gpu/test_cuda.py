"""The sampler and trainer contracts on a CUDA device (skipped without one): seeded sampling
is independent of batching there too, and a weighted training step in bf16 moves the model
and stays finite."""

from __future__ import annotations

import json

import pytest
import torch

from east.samplers import SamplingParams, sample_seed
from east.samplers.hf import HFSampler

pytestmark = pytest.mark.gpu


def test_cuda_sampling_is_independent_of_batching(tiny_dir):
    from east.models import load_tokenizer
    from east.prompts import build_prompts

    tok = load_tokenizer(str(tiny_dir))
    prompts = build_prompts(tok, [f"What is {a} plus 3?" for a in range(6)], None).token_ids
    seeds = [[sample_seed(0, f"q{i}", j, 0) for j in range(4)] for i in range(6)]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12)
    a = HFSampler(batch_size=5, device="cuda", progress=False).generate(str(tiny_dir), prompts, seeds, params)
    b = HFSampler(batch_size=24, device="cuda", progress=False).generate(
        str(tiny_dir), prompts, seeds, params
    )
    assert a.texts == b.texts
    assert len({t for row in a.texts for t in row}) > 6


def test_weighted_sft_step_in_bf16_on_cuda(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    from east.stages.train import train_from_spec
    from tests.helpers import weighted_sft_spec

    # Activation checkpointing on: TRL's default, which this test has always run with.
    spec = weighted_sft_spec(
        tmp_path, tiny_dir, "out", dtype="auto", settings={"gradient_checkpointing": True}
    )
    assert torch.cuda.is_available()
    train_from_spec(spec)
    info = json.loads((tmp_path / "out" / "train_info.json").read_text())
    # dtype auto: bf16 autocast over fp32 master weights, saved in bf16, on one device.
    assert info["param_dtype"] == "float32" and info["mixed_precision"] == "bf16"
    assert info["saved_dtype"] == "bfloat16" and info["devices_per_process"] >= 1
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    start, end = (
        load_file(str(tiny_dir / "model.safetensors")),
        load_file(str(tmp_path / "out" / "model" / "model.safetensors")),
    )
    assert any((end[k].float() - start[k].float()).abs().max() > 0 for k in start)
