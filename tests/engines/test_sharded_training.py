"""DeepSpeed ZeRO-3 and FSDP2 run the project's own train stage on 2 CPU processes (gloo).

What the 8B cells depend on, on the real engines (not a fake, not DDP under their names):

- the policy's parameters really are sharded: each process holds part of them
  (``train_info.json`` ``sharding``: ZeRO-3's partitions, FSDP2's DTensor shards);
- one optimiser step of weighted SFT, DPO (its reference model sharded too) and KTO equals the
  plain-torch reference step (tests/integration/reference_losses.py) and the same step under
  ``distributed=cpu2`` (DDP) within float tolerance; so does one of weighted ORPO and SimPO
  under each sharded engine;
- an example of weight 0 changes nothing (its text can be anything);
- the trained model saved in 16 bits loads in transformers, in that dtype;
- ``kill -9`` of the whole run mid-training, then the same command: it resumes from the
  sharded checkpoint and ends at the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from east.cache import write_jsonl
from east.stages.train import launch
from tests.engines.conftest import engine_env, need
from tests.helpers import ROOT, SMALL, kill_at_first_checkpoint
from tests.integration.trainer_runs import DDP_SETTINGS

# The tier's environment (.ci/engines) has DeepSpeed; FSDP and DDP are torch's own, but run
# here beside ZeRO-3 (the comparisons are between them), not a second time in the main suite.
pytestmark = need("deepspeed", "pip install 'east[deepspeed]' (and g++), or run .ci/engines")
ENGINES = ["zero3_cpu", "fsdp_cpu", "cpu2"]
SHARDED = ["zero3_cpu", "fsdp_cpu"]
DISTRIBUTED_TYPE = {"zero3_cpu": "DEEPSPEED", "fsdp_cpu": "FSDP", "cpu2": "MULTI_CPU"}

#: One SGD step at learning rate 1 over all 6 examples (2 processes x 1 x 3 accumulation):
#: the update is then minus the gradient the reference computes.
ONE_STEP = {
    "optim": "sgd",
    "learning_rate": 1.0,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "max_grad_norm": 0.0,
    "max_steps": 1,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 3,
    "gradient_checkpointing": False,
    "logging_steps": 1,
}
#: Each objective's TRL settings in the step: those of the main suite's 2-process DDP step.
EXTRA = DDP_SETTINGS
#: The paper's objectives, whose 8B cells these engines gate: under each engine, DDP too.
PAPER = ["sft", "dpo", "kto"]
#: Beyond the paper (TRL's experimental trainers, whose NLL term and per-pair losses east
#: reweights through the policy's logits): under the two sharded engines (their DDP step is in
#: the main suite, tests/integration/test_training_reference.py).
BEYOND = ["orpo", "simpo"]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for k, v in engine_env().items():
        monkeypatch.setenv(k, v)


def _distributed(name: str) -> tuple[int, Path | None, list[str]]:
    import yaml

    node = yaml.safe_load((ROOT / "conf" / "distributed" / f"{name}.yaml").read_text())
    config = ROOT / node["accelerate_config"] if node["accelerate_config"] else None
    return node["num_processes"], config, list(node["launch_args"])


def train(tmp_path: Path, model: Path, name: str, objective: str, rows: list[dict], distributed: str, **kw):
    """The train stage on ``rows`` under ``conf/distributed/<distributed>.yaml`` (the
    accelerate launch the driver makes); returns (saved weights, train_info)."""
    folder = tmp_path / name
    folder.mkdir()
    write_jsonl(folder / "records.jsonl", rows)
    spec = {
        "objective": objective,
        "base_path": str(model),
        "out_dir": str(folder / "out"),
        "work_dir": str(folder / "work"),
        "records": str(folder / "records.jsonl"),
        "settings": {**ONE_STEP, **EXTRA[objective], **kw.pop("settings", {})},
        "seed": 0,
        "chat_template": None,
        "dtype": kw.pop("dtype", "float32"),
        "peft": None,
        "report_to": [],
    }
    (folder / "train_spec.json").write_text(json.dumps(spec))
    processes, config, args = _distributed(distributed)
    launch(folder / "train_spec.json", processes, config, args)
    out = folder / "out"
    return load_file(str(out / "model" / "model.safetensors")), json.loads(
        (out / "train_info.json").read_text()
    )


def _rows(objective: str) -> list[dict]:
    from tests.integration.trainer_runs import rows

    return rows(objective, 6)


def _expected(tiny_dir: Path, objective: str, data: list[dict]) -> dict[str, torch.Tensor]:
    """The weights after the plain-torch reference step, by parameter name."""
    from transformers import AutoModelForCausalLM

    from tests.integration.trainer_runs import reference

    update, _ = reference(objective, tiny_dir, data, **EXTRA[objective])
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    out, offset = {}, 0
    for name, p in model.named_parameters():
        out[name] = p.detach() + update[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    common = set(a) & set(b)
    assert common and all(k in common for k in b if k != "lm_head.weight"), (sorted(a), sorted(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in common)


@pytest.mark.parametrize(
    ("objective", "distributed"),
    [(o, d) for d in ENGINES for o in PAPER] + [(o, d) for d in SHARDED for o in BEYOND],
)
def test_one_step_on_two_processes_is_the_reference_step(tmp_path, tiny_dir, objective, distributed):
    data = _rows(objective)
    weights, info = train(tmp_path, tiny_dir, "run", objective, data, distributed)
    sharding = info["sharding"]
    assert info["processes"] == 2 and info["effective_batch_size"] == 6 and info["optimizer_steps"] == 1
    assert sharding["distributed_type"] == DISTRIBUTED_TYPE[distributed]
    per_process = sharding["parameters_per_process"]
    if distributed == "cpu2":  # DDP: whole copies
        assert per_process == [sharding["parameters"]] * 2
    else:  # sharded: each holds part, together all (ZeRO-3 pads each partition a little)
        assert all(0 < n < sharding["parameters"] * 0.6 for n in per_process), sharding
        assert sharding["parameters"] <= sum(per_process) <= sharding["parameters"] + 64, sharding
    expected = _expected(tiny_dir, objective, data)
    base = load_file(str(tiny_dir / "model.safetensors"))
    moved = _max_diff(expected, base)
    assert moved > 1e-3  # the step moves the model: the comparison below means something
    assert _max_diff(weights, expected) <= 1e-5 * max(1.0, moved), (distributed, objective)


@pytest.mark.parametrize("distributed", SHARDED)
def test_an_example_of_weight_zero_changes_nothing(tmp_path, tiny_dir, distributed):
    """DPO (its reference model sharded as well): row 2 at weight 0, then the same with row 2's
    chosen and rejected answers swapped: the same update, to the last bit of float noise."""
    data = _rows("dpo")
    data[2]["weight"] = 0.0
    swapped = [dict(r) for r in data]
    swapped[2]["chosen"], swapped[2]["rejected"] = data[2]["rejected"], data[2]["chosen"]
    a, _ = train(tmp_path, tiny_dir, "a", "dpo", data, distributed)
    b, _ = train(tmp_path, tiny_dir, "b", "dpo", swapped, distributed)
    base = load_file(str(tiny_dir / "model.safetensors"))
    assert _max_diff(a, base) > 1e-3
    assert _max_diff(a, b) <= 1e-7
    # And a weight that is not zero does change it: the swap is seen.
    data[2]["weight"] = swapped[2]["weight"] = 1.0
    c, _ = train(tmp_path, tiny_dir, "c", "dpo", data, distributed)
    d, _ = train(tmp_path, tiny_dir, "d", "dpo", swapped, distributed)
    assert _max_diff(c, d) > 1e-4


@pytest.mark.parametrize("distributed", SHARDED)
def test_the_16_bit_save_loads_in_transformers(tmp_path, tiny_dir, distributed):
    """model.dtype=bfloat16: the sharded engine trains fp32 master weights and the artifact is
    the model's dtype (ZeRO-3 gathers what its engine holds, FSDP a fp32 full state dict; the
    train stage casts both), loadable by transformers, equal to the fp32 run rounded once."""
    from transformers import AutoModelForCausalLM

    data = _rows("sft")
    half, info = train(tmp_path, tiny_dir, "bf16", "sft", data, distributed, dtype="bfloat16")
    full, _ = train(tmp_path, tiny_dir, "fp32", "sft", data, distributed)
    assert info["saved_dtype"] == "bfloat16" and info["param_dtype"] == "float32"
    assert all(t.dtype == torch.bfloat16 for t in half.values())
    for name, w in half.items():
        assert torch.equal(w, full[name].to(torch.bfloat16)), name
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16" / "out" / "model")
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 5, 9]])).logits
    assert torch.isfinite(logits).all()


# ------------------------------------------------------------------ the pipeline, killed


def _pipeline(cache: Path, out: Path, distributed: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "run.py"),
        *SMALL,
        f"distributed={distributed}",
        "model.trainer_overrides.sft.num_train_epochs=10",
        "objective.trainer.save_steps=5",
        "evaluation.base=false",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={out}",
    ]


@pytest.mark.parametrize("distributed", SHARDED)
def test_kill_9_mid_training_resumes_from_the_sharded_checkpoint(tmp_path, distributed):
    """`python run.py ... distributed=<engine>` killed with SIGKILL (driver, launcher and both
    ranks) after its first sharded checkpoint; the same command resumes from it and ends at the
    weights of the run that was never interrupted."""
    env = engine_env()
    whole = subprocess.run(
        _pipeline(tmp_path / "whole", tmp_path / "o1", distributed),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    results = json.loads((tmp_path / "o1" / "results.json").read_text())
    key = results["stages"]["train"]["key"]
    reference = load_file(str(tmp_path / "whole" / "train" / key / "model" / "model.safetensors"))
    info = json.loads((tmp_path / "whole" / "train" / key / "train_info.json").read_text())
    assert info["sharding"]["distributed_type"] == DISTRIBUTED_TYPE[distributed]
    assert info["optimizer_steps"] >= 15, info  # long enough to be killed between checkpoints

    killed = tmp_path / "killed"
    killed.mkdir()
    for stage in ("base_model", "sample", "grade", "build"):  # the same stages before training
        subprocess.run(["cp", "-a", str(tmp_path / "whole" / stage), str(killed / stage)], check=True)
    proc = subprocess.Popen(
        _pipeline(killed, tmp_path / "o2", distributed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes every rank with it
    )
    # every rank's part of the checkpoint written (the resume checks it is whole)
    kill_at_first_checkpoint(proc, killed, settle_s=0.5, poll_s=0.05)
    assert not list((killed / "train").glob("[0-9a-f]*"))  # no artifact: the stage never finished

    resumed = subprocess.run(
        _pipeline(killed, tmp_path / "o3", distributed), env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming training from" in resumed.stderr
    weights = load_file(str(killed / "train" / key / "model" / "model.safetensors"))
    assert weights.keys() == reference.keys()
    assert _max_diff(weights, reference) == 0.0
