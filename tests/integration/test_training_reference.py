"""The weighted trainers against an independent plain-torch reference (reference_losses.py):
one optimiser step (SGD, learning rate 1) must move the parameters by exactly
sum_i w_i * grad(loss_i) / N, and log loss_weighted = sum_i w_i * loss_i / N, in uneven
accumulation windows ([2, 1] and [3, 1, 2]) and on 2 gloo processes. Every other allowed
DPO / KTO loss type is checked against stock TRL run one example at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from east.objectives import objective_names
from east.objectives.dpo import DPO_ALLOWED
from east.objectives.kto import KTO_ALLOWED
from tests.integration.reference_losses import per_example_losses, step_gradient
from tests.integration.trainer_runs import DDP_SETTINGS, one_step, reference, rel, rows

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

CASES = [
    # (objective, trainer settings, reference settings)
    ("sft", {}, {}),
    ("dpo", {"loss_type": ["sigmoid"], "beta": 0.1}, {"loss_type": "sigmoid", "beta": 0.1}),
    ("dpo", {"loss_type": ["ipo"], "beta": 0.5}, {"loss_type": "ipo", "beta": 0.5}),
    ("kto", {"loss_type": "apo_zero_unpaired", "beta": 0.1}, {"loss_type": "apo_zero_unpaired", "beta": 0.1}),
    # Beyond the paper: trl.experimental's ORPO and CPO (SimPO), no reference model.
    ("orpo", {"beta": 0.5}, {"beta": 0.5}),
    ("simpo", *[{"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.0}] * 2),
    ("simpo", *[{"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.5}] * 2),
    ("simpo", *[{"loss_type": "sigmoid", "beta": 0.1, "cpo_alpha": 1.0}] * 2),
]


@pytest.mark.parametrize("windows", [[[0, 1], [2]], [[0, 1, 2], [3], [4, 5]]], ids=["2-1", "3-1-2"])
@pytest.mark.parametrize(
    ("objective", "settings", "ref_settings"),
    CASES,
    ids=["sft", "dpo-sigmoid", "dpo-ipo", "kto-apo", "orpo", "simpo", "simpo-nll", "cpo-sigmoid-nll"],
)
def test_one_step_is_the_reference_update(objective, settings, ref_settings, windows, tiny_dir):
    n = sum(map(len, windows))
    data = rows(objective, n)
    update, logged = one_step(objective, tiny_dir, data, windows, **settings)
    expected, value = reference(objective, tiny_dir, data, **ref_settings)
    assert expected.norm() > 0
    assert rel(update, expected) <= 1e-5
    assert logged["loss_weighted"] == pytest.approx(value, rel=1e-5)
    assert logged["weight_mean"] == pytest.approx(sum(r["weight"] for r in data) / n, rel=1e-6)


def test_dpo_loss_type_list_combines_with_its_loss_weights(tiny_dir):
    windows = [[0, 1], [2]]
    data = rows("dpo", 3)
    update, logged = one_step(
        "dpo", tiny_dir, data, windows, loss_type=["sigmoid", "ipo"], loss_weights=[1.0, 0.5], beta=0.5
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    losses = per_example_losses("dpo", model, ref, tok, data, loss_type="sigmoid", beta=0.5) + 0.5 * (
        per_example_losses("dpo", model, ref, tok, data, loss_type="ipo", beta=0.5)
    )
    grad, value = step_gradient(losses, [r["weight"] for r in data], model)
    assert rel(update, -grad) <= 1e-5
    assert logged["loss_weighted"] == pytest.approx(value, rel=1e-5)


def test_kto_kl_term_matches_the_reference(tiny_dir):
    """kto's KL estimate pairs each prompt with the previous example's completion within a
    micro-batch ([2, 1]: TRL builds the pairs in chunks of the per-device batch)."""
    data = rows("kto", 3)
    settings = {"loss_type": "kto", "beta": 0.1, "train_sampling_strategy": "sequential"}
    update, logged = one_step("kto", tiny_dir, data, [[0, 1], [2]], **settings)
    expected, value = reference("kto", tiny_dir, data, loss_type="kto", beta=0.1, kl_groups=[[0, 1], [2]])
    assert rel(update, expected) <= 1e-5
    assert logged["loss_weighted"] == pytest.approx(value, rel=1e-5)


def _stock_losses_and_grads(objective, model_dir, data, **settings):
    """Each example alone through stock TRL: its loss and its gradient (-update at lr 1)."""
    out = []
    for r in data:
        update, logged = one_step(objective, model_dir, [r], [[0]], weighted=False, **settings)
        out.append((logged["loss"], -update))
    return out


OTHER_TYPES = [("dpo", t) for t in sorted(DPO_ALLOWED)] + [("kto", "apo_zero_unpaired")]


@pytest.mark.parametrize(("objective", "loss_type"), OTHER_TYPES)
def test_every_allowed_loss_type_weighs_per_example(objective, loss_type, tiny_dir):
    """For each allowed type, the weighted [2, 1] step is sum_i w_i * (stock step of example i
    alone) / N, and loss_weighted is sum_i w_i * (stock loss of example i alone) / N."""
    settings = {"loss_type": [loss_type] if objective == "dpo" else loss_type, "beta": 0.5}
    if loss_type in ("exo_pair", "robust"):
        settings["label_smoothing"] = 0.1
    data = rows(objective, 3)
    singles = _stock_losses_and_grads(objective, tiny_dir, data, **settings)
    weights = [r["weight"] for r in data]
    expected = -sum(w * g for w, (_, g) in zip(weights, singles)) / 3
    update, logged = one_step(objective, tiny_dir, data, [[0, 1], [2]], **settings)
    assert rel(update, expected) <= 1e-4, loss_type
    value = sum(w * loss for w, (loss, _) in zip(weights, singles)) / 3
    assert logged["loss_weighted"] == pytest.approx(value, rel=1e-4, abs=1e-7), loss_type


def test_kto_allowlist_covers_the_reference_types():
    assert {"kto", "apo_zero_unpaired"} == set(KTO_ALLOWED)


# --------------------------------------------------------------------------- 2 processes

DDP_WORKER = Path(__file__).with_name("ddp_reference_step.py")


@pytest.mark.parametrize("objective", objective_names())
def test_two_gloo_processes_take_the_reference_step(objective, tiny_dir, tmp_path):
    """One step on 2 processes is the reference update over all its examples.

    SFT: 7 examples in order, per-device batch 2, accumulation 2, even_batches=False: rank 0
    trains [0, 1] then [4, 5], rank 1 [2, 3] then [6] (ranks with batches of different sizes
    gather alike). DPO / KTO: windows [2, 1] on each rank (TRL's own DPO and KTO metrics
    gather per-example vectors, so their ranks need batches of one size at a time)."""
    windows = None if objective == "sft" else [[[0, 1], [2]], [[3, 4], [5]]]
    data = rows(objective, 7 if windows is None else 6)
    (tmp_path / "rows.json").write_text(json.dumps(data))
    extra = []
    if windows is not None:
        (tmp_path / "windows.json").write_text(json.dumps(windows))
        extra = [str(tmp_path / "windows.json")]
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *("--main_process_port", "0"),  # a free port: parallel tests never meet on 29500
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(DDP_WORKER),
        objective,
        str(tiny_dir),
        str(tmp_path / "rows.json"),
        str(out),
        *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    expected_split = [[0, 1, 4, 5], [2, 3, 6]] if windows is None else [[0, 1, 2], [3, 4, 5]]
    assert result["world_size"] == 2 and result["rank_examples"] == expected_split
    expected, value = reference(objective, tiny_dir, data, **DDP_SETTINGS[objective])
    assert rel(torch.tensor(result["update"]), expected) <= 1e-5
    assert result["log"]["loss_weighted"] == pytest.approx(value, rel=1e-5)
    assert result["log"]["weight_max"] == max(r["weight"] for r in data)
