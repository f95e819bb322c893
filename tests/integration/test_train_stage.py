"""The train worker's precision and settings: the policy always trains in fp32 (master
weights; on a GPU under bf16 / fp16 autocast) and is saved in the model's dtype; gradient
checkpointing follows the config on a CPU too; train_info.json records all of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from east.cache import write_jsonl
from east.stages.train import _trainer_args, precision, train_from_spec
from tests.conftest import assistant, prompt
from tests.helpers import weighted_sft_spec as _spec

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _info(spec):
    return json.loads((Path(spec["out_dir"]) / "train_info.json").read_text())


def test_the_policy_trains_in_fp32_and_is_saved_in_the_model_dtype(tmp_path, tiny_dir):
    spec = _spec(tmp_path, tiny_dir, "bf16", dtype="bfloat16")
    train_from_spec(spec)
    info = _info(spec)
    assert info["param_dtype"] == "float32"  # master weights, whatever the model's dtype
    assert info["saved_dtype"] == "bfloat16" and info["mixed_precision"] == "no"  # a CPU: no autocast
    saved = load_file(str(tmp_path / "bf16" / "model" / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in saved.values())
    # The same updates as a float32 run, rounded to bf16 once at the end (not every step).
    reference = _spec(tmp_path, tiny_dir, "fp32")
    train_from_spec(reference)
    full = load_file(str(tmp_path / "fp32" / "model" / "model.safetensors"))
    for name, w in full.items():
        assert torch.equal(saved[name], w.to(torch.bfloat16)), name


def test_precision_follows_the_model_dtype_on_a_gpu(monkeypatch):
    assert precision("bfloat16", cuda=True) == "bf16"
    assert precision("bf16", cuda=True) == "bf16"
    assert precision("float16", cuda=True) == "fp16"  # autocast with a loss scaler
    assert precision("float32", cuda=True) == "no"
    assert precision("bfloat16", cuda=False) == "no"  # CPUs train in fp32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision("auto", cuda=True) == "bf16"


def test_trainer_arguments_carry_the_precision_and_checkpoints(tmp_path):
    from trl import SFTConfig

    args = _trainer_args(SFTConfig, tmp_path, {"save_steps": 7, "learning_rate": 1e-3}, 3, [], "bf16", True)
    assert args.bf16 and not args.fp16 and args.seed == args.data_seed == 3
    assert args.save_strategy == "steps" and args.save_steps == 7 and args.save_total_limit == 1
    assert args.output_dir == str(tmp_path)
    none = _trainer_args(SFTConfig, tmp_path, {}, 0, [], "no", True)
    assert none.save_strategy == "no" and not none.bf16


def test_gradient_checkpointing_follows_the_config_on_a_cpu(tmp_path, tiny_dir):
    on = _spec(tmp_path, tiny_dir, "gc", settings={"gradient_checkpointing": True})
    off = _spec(tmp_path, tiny_dir, "nogc")
    train_from_spec(on)
    train_from_spec(off)
    assert _info(on)["gradient_checkpointing"] is True and _info(off)["gradient_checkpointing"] is False
    a = load_file(str(tmp_path / "gc" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "nogc" / "model" / "model.safetensors"))
    moved = max(
        (b[k] - w).abs().max().item() for k, w in load_file(str(tiny_dir / "model.safetensors")).items()
    )
    assert moved > 0
    for name in a:  # recomputed activations: the same gradients
        assert torch.allclose(a[name], b[name], atol=1e-6), name


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_lora_saves_a_merged_plain_model_and_its_adapter(tmp_path, tiny_dir, objective):
    """peft.method=lora: the trained artifact is a plain model (every sampler loads it) equal
    to the adapted policy, the adapter is kept beside it, and train_info says what trained."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft = {"method": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    spec = _spec(tmp_path, tiny_dir, objective, peft=peft, settings={"learning_rate": 0.05})
    if objective == "dpo":
        rows = [
            {
                "prompt": prompt(a, 2),
                "chosen": assistant(f"\\boxed{{{a + 2}}}"),
                "rejected": assistant("\\boxed{0}"),
                "weight": 1.0,
            }
            for a in range(8)
        ]
        write_jsonl(Path(spec["records"]), rows)
        spec["objective"] = "dpo"
    train_from_spec(spec)
    out = Path(spec["out_dir"])
    info = _info(spec)
    assert info["peft"]["method"] == "lora" and info["peft"]["r"] == 4
    assert 0 < info["peft"]["trainable_parameters"] < info["peft"]["parameters"] / 5
    merged = AutoModelForCausalLM.from_pretrained(out / "model")  # plain: no adapter config needed
    assert not (out / "model" / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), out / "adapter")
    ids = torch.tensor([[1, 5, 9, 13, 7]])
    with torch.no_grad():
        m, a, b = (x(input_ids=ids).logits for x in (merged, adapted, base))
    assert torch.allclose(m, a, atol=1e-5)  # merged == base + adapter
    assert not torch.allclose(m, b, atol=1e-4)  # and training moved it


def test_the_train_worker_checks_device_memory_before_it_loads_weights(tmp_path, tiny_dir, monkeypatch):
    """Every weight-loading worker checks free device memory first (the generate worker for
    its sampler; the train worker for the policy's fp32 weights, gradients and Adam moments,
    its share of them when sharded): a GPU another process holds fails in one line."""
    from east.stages.checkpoints import train_device_bytes
    from east.stages.launch import DeviceMemoryError

    asked, loaded = {}, []

    def refuse(required, what):
        asked.update(required=required, what=what)
        raise DeviceMemoryError(f"{what} needs more")

    monkeypatch.setattr("east.stages.launch.check_device_memory", refuse)
    monkeypatch.setattr("east.models.load_model", lambda *a, **k: loaded.append(a))
    with pytest.raises(DeviceMemoryError, match="training sft on"):
        train_from_spec(_spec(tmp_path, tiny_dir, "mem"))
    assert not loaded  # refused before any weights were read
    params = sum(t.numel() for t in load_file(str(tiny_dir / "model.safetensors")).values())
    assert asked["required"] == pytest.approx(16 * params, rel=0.02)  # the file's header on top
    assert (
        train_device_bytes(str(tiny_dir), 8, sharded=True) == train_device_bytes(str(tiny_dir), 1, False) // 8
    )
    assert train_device_bytes("meta-llama/Llama-3.2-1B-Instruct", 1, False) is None  # a hub id


def test_the_train_worker_checks_free_disk_before_it_loads_weights(tmp_path, tiny_dir, monkeypatch):
    """Two checkpoints (16 bytes a parameter each) while one rotates out, and the model: an
    8B cell needs about 270 GB, and a disk with less fails in one line before training."""
    import shutil
    from collections import namedtuple

    from east.stages.checkpoints import DiskSpaceError, disk_need

    params = sum(t.numel() for t in load_file(str(tiny_dir / "model.safetensors")).values())
    need = disk_need(str(tiny_dir), {"save_steps": 200}, "float32")
    assert need == pytest.approx(params * (2 * 16 + 4), rel=0.02)
    assert disk_need(str(tiny_dir), {"save_steps": 0}, "bfloat16") == pytest.approx(params * 2, rel=0.02)
    assert disk_need("meta-llama/Llama-3.1-8B-Instruct", {}, "bfloat16") is None
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    loaded = []
    monkeypatch.setattr("east.models.load_model", lambda *a, **k: loaded.append(a))
    spec = _spec(tmp_path, tiny_dir, "disk", settings={"save_steps": 5})
    with pytest.raises(DiskSpaceError, match=r"free disk under .*paths.cache_dir \(EAST_CACHE_DIR\)"):
        train_from_spec(spec)
    assert not loaded
