"""Weighted SFT / DPO / KTO trainers: gradients, invariance, weights 1, refusals (tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from east.objectives import get_objective, objective_names
from east.objectives.dpo.trainer import WeightedDPOTrainer
from east.objectives.sft.trainer import WeightedSFTTrainer
from tests.conftest import assistant, prompt
from tests.integration.trainer_runs import CLASSES

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

ROWS = {
    "sft": [
        {
            "prompt": prompt(a, a + 1),
            "completion": assistant(f"{a}+{a + 1}={2 * a + 1}. \\boxed{{{2 * a + 1}}}" + "!" * a),
        }
        for a in range(1, 9)
    ],
    "dpo": [
        {
            "prompt": prompt(a, a + 1),
            "chosen": assistant(f"\\boxed{{{2 * a + 1}}}" + "." * a),
            "rejected": assistant(f"\\boxed{{{2 * a}}}"),
        }
        for a in range(1, 9)
    ],
    "kto": [
        {
            "prompt": prompt(a, a + 1),
            "completion": assistant(f"\\boxed{{{2 * a + 1 - a % 2}}}" + "." * a),
            "label": a % 2 == 0,
        }
        for a in range(1, 9)
    ],
}
ROWS["orpo"] = ROWS["simpo"] = ROWS["dpo"]  # reference-free objectives on DPO's pairs
WEIGHTS = [0.25, 1.75, 0.5, 1.5, 1.0, 2.0, 0.3, 0.7]


def _args(objective, out, **kw):
    base = dict(
        output_dir=str(out),
        report_to=[],
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        dataloader_drop_last=False,
        max_grad_norm=0.0,
    )
    if objective == "kto":
        base["loss_type"] = kw.pop("loss_type", "apo_zero_unpaired")
    return CLASSES[objective][2](**{**base, **kw})


def _trainer(objective, tiny_dir, rows, *, weighted=True, **kw):
    cls = CLASSES[objective][0 if weighted else 1]
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    extra = {}
    if get_objective(objective).reference_model:
        extra["ref_model"] = AutoModelForCausalLM.from_pretrained(tiny_dir)
    return cls(
        model=model,
        args=_args(objective, tiny_dir / "out", **kw),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_dir),
        **extra,
    )


def _grad(trainer, rows_batch_size):
    trainer.model.train()
    trainer.model.zero_grad()
    batch = next(iter(trainer.get_train_dataloader()))
    if "weight" in batch:
        assert batch["weight"].shape[0] == rows_batch_size
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(batch))
    loss.backward()
    return loss.detach(), torch.cat(
        [p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]
    )


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


@pytest.mark.parametrize("objective", objective_names())
def test_gradient_is_the_weighted_combination_of_per_example_gradients(objective, tiny_dir):
    rows = [dict(r, weight=w) for r, w in zip(ROWS[objective][:2], (0.3, 1.7))]
    if objective == "kto":  # one desirable and one undesirable example
        assert {r["label"] for r in rows} == {True, False}
    _, weighted = _grad(_trainer(objective, tiny_dir, rows, per_device_train_batch_size=2), 2)
    singles = []
    for r in rows:
        stock = _trainer(
            objective,
            tiny_dir,
            [{k: v for k, v in r.items() if k != "weight"}],
            weighted=False,
            per_device_train_batch_size=1,
        )
        singles.append(_grad(stock, 1)[1])
    expected = (0.3 * singles[0] + 1.7 * singles[1]) / 2
    assert _rel(weighted, expected) <= 1e-5


@pytest.mark.parametrize("objective", ["dpo", "kto"])
@pytest.mark.parametrize("loss_type", ["default", "other"])
def test_weights_one_reproduce_the_stock_trainer(objective, loss_type, tiny_dir):
    kw = {"per_device_train_batch_size": 4}
    if objective == "dpo":
        kw["loss_type"] = ["sigmoid"] if loss_type == "default" else ["ipo"]
    else:
        kw["loss_type"] = "kto" if loss_type == "default" else "apo_zero_unpaired"
    rows = ROWS[objective][:4]
    loss_w, grad_w = _grad(_trainer(objective, tiny_dir, [dict(r, weight=1.0) for r in rows], **kw), 4)
    loss_s, grad_s = _grad(_trainer(objective, tiny_dir, rows, weighted=False, **kw), 4)
    assert torch.allclose(loss_w, loss_s, rtol=1e-6)
    assert _rel(grad_w, grad_s) <= 1e-6


def test_sft_weights_one_is_the_per_example_mean_nll(tiny_dir):
    rows = ROWS["sft"][:3]
    trainer = _trainer("sft", tiny_dir, rows, per_device_train_batch_size=3)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    with torch.no_grad():  # by hand: mean over examples of each one's completion-token mean NLL
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        expected = (nll.sum(1) / mask.sum(1)).mean().item()
    assert loss == pytest.approx(expected, rel=1e-5)
    # Exactly the completion is trained on: its text and the final end-of-turn token, no prompt.
    tok = trainer.processing_class
    expected_texts = sorted(r["completion"][0]["content"] for r in rows)
    trained_texts = []
    for row_labels in batch["labels"]:
        trained = [t for t in row_labels.tolist() if t != -100]
        assert tok.convert_tokens_to_ids("<|im_end|>") in trained[-2:]
        trained_texts.append(tok.decode(trained, skip_special_tokens=True).strip())
    assert sorted(trained_texts) == expected_texts


def _one_step_params(objective, tiny_dir, batch, accumulation):
    rows = [dict(r, weight=w) for r, w in zip(ROWS[objective][:4], WEIGHTS)]
    trainer = _trainer(
        objective,
        tiny_dir,
        rows,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
    )
    trainer.train()
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


@pytest.mark.parametrize("objective", objective_names())
def test_batch_times_accumulation_invariance(objective, tiny_dir):
    reference = _one_step_params(objective, tiny_dir, 4, 1)
    initial = torch.cat(
        [p.detach().flatten() for p in AutoModelForCausalLM.from_pretrained(tiny_dir).parameters()]
    )
    update = reference - initial
    assert update.norm() > 0
    for batch, acc in ((2, 2), (1, 4)):
        other = _one_step_params(objective, tiny_dir, batch, acc)
        assert _rel(other - initial, update) <= 1e-5, (batch, acc)


def test_bad_weights_are_rejected_with_the_row(tiny_dir):
    rows = [dict(r, weight=w) for r, w in zip(ROWS["sft"][:4], (1.0, 1.0, float("nan"), 1.0))]
    with pytest.raises(ValueError, match="row 2 .*nan"):
        _trainer("sft", tiny_dir, rows)
    rows[2]["weight"] = -1.0
    with pytest.raises(ValueError, match="row 2 .*-1.0"):
        _trainer("dpo", tiny_dir, [dict(r, weight=w["weight"]) for r, w in zip(ROWS["dpo"], rows)])


@pytest.mark.parametrize(
    ("objective", "kw", "message"),
    [
        ("sft", {"packing": True}, "packing"),
        ("sft", {"padding_free": True}, "padding-free"),
        ("sft", {"loss_type": "dft"}, "nll"),
        ("dpo", {"loss_type": ["aot"]}, "aot"),
        ("dpo", {"loss_type": ["sigmoid", "sft"]}, "'sft'"),
    ],
)
def test_inexact_configurations_are_refused(objective, kw, message, tiny_dir):
    with pytest.raises(ValueError, match=message):
        _trainer(objective, tiny_dir, ROWS[objective][:2], **kw)


def test_weight_statistics_are_logged(tiny_dir):
    rows = [dict(r, weight=w) for r, w in zip(ROWS["dpo"][:4], WEIGHTS)]
    trainer = _trainer("dpo", tiny_dir, rows, per_device_train_batch_size=4, max_steps=1)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["weight_mean"] == pytest.approx(sum(WEIGHTS[:4]) / 4)
    assert logged["weight_min"] == pytest.approx(min(WEIGHTS[:4]))
    assert logged["weight_max"] == pytest.approx(max(WEIGHTS[:4]))


DDP_SCRIPT = Path(__file__).with_name("ddp_first_step.py")


def test_two_process_ddp_matches_one_process(tiny_dir, tmp_path):
    """Weighted SFT and DPO under accelerate with 2 CPU processes (DDP over gloo).

    accelerate 1.15's `--cpu` flag picks its single-process launcher (several CPU processes
    need mpirun), so the processes are started by its torchrun launcher (`--multi_gpu`)
    and `use_cpu=True` in the training arguments makes them a gloo MULTI_CPU group.
    """
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    results = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}.json"
        launcher = (
            ["--multi_gpu", "--num_processes", "2"] if procs == 2 else ["--cpu", "--num_processes", "1"]
        )
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            *("--main_process_port", "0"),  # a free port: parallel tests never meet on 29500
            *launcher,
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(DDP_SCRIPT),
            str(tiny_dir),
            str(out),
            str(4 // procs),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[procs] = json.loads(out.read_text())
    for objective in ("sft", "dpo"):
        assert results[2][objective]["world_size"] == 2
        assert results[2][objective]["loss"] == pytest.approx(results[1][objective]["loss"], rel=1e-5)


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_precomputed_reference_log_probs_keep_the_weights(objective, tiny_dir):
    rows = [dict(r, weight=w) for r, w in zip(ROWS[objective][:4], WEIGHTS)]
    _, live = _grad(_trainer(objective, tiny_dir, rows, per_device_train_batch_size=4), 4)
    _, pre = _grad(
        _trainer(objective, tiny_dir, rows, per_device_train_batch_size=4, precompute_ref_log_probs=True), 4
    )
    assert _rel(pre, live) <= 1e-5


def test_global_batch_survives_the_process_count(tiny_dir, tmp_path):
    """objective.global_batch_size fixes the examples per optimiser step: 1 process
    (accumulating 2 micro-batches) and 2 gloo processes (1 each) take the same number of
    steps on the same examples, so they end at the same weights."""
    from safetensors.torch import load_file

    from east.cache import write_json, write_jsonl
    from east.stages.train import launch as launch_workers
    from east.stages.train import train_from_spec
    from east.validate import batch_layout

    records = tmp_path / "records.jsonl"
    write_jsonl(records, [dict(r, weight=w) for r, w in zip(ROWS["sft"][:8], [0.5, 1.5] * 4)])
    info = {}
    for procs in (1, 2):
        c = _layout_config(4, 2, procs)
        layout = batch_layout(c)
        assert layout["gradient_accumulation_steps"] == 2 // procs
        out = tmp_path / f"p{procs}"
        out.mkdir()
        settings = {
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": layout["gradient_accumulation_steps"],
            "num_train_epochs": 1,
            "learning_rate": 0.05,
            "optim": "sgd",
            "lr_scheduler_type": "constant",
            "logging_steps": 1,
        }
        spec = {
            "objective": "sft",
            "base_path": str(tiny_dir),
            "out_dir": str(out),
            "records": str(records),
            "settings": settings,
            "seed": 0,
            "chat_template": None,
            "dtype": "float32",
        }
        if procs == 1:
            train_from_spec({**spec, "report_to": []})
        else:
            write_json(out / "spec.json", {**spec, "report_to": []})
            launch_args = ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
            launch_workers(out / "spec.json", 2, None, launch_args)
        info[procs] = json.loads((out / "train_info.json").read_text())
        info[procs]["weights"] = load_file(str(out / "model" / "model.safetensors"))
    assert info[1]["processes"] == 1 and info[2]["processes"] == 2
    for key in ("optimizer_steps", "effective_batch_size", "examples"):
        assert info[1][key] == info[2][key], key
    assert info[1]["optimizer_steps"] == 2 and info[1]["effective_batch_size"] == 4
    start = load_file(str(tiny_dir / "model.safetensors"))
    for name, w1 in info[1]["weights"].items():
        moved = (w1 - start[name]).abs().max()
        gap = (w1 - info[2]["weights"][name]).abs().max()
        assert gap <= 1e-5 * max(float(moved), 1e-3), name


def test_accumulation_is_derived_and_checked():
    from east.validate import batch_layout

    def c(total, per_device, procs, **trainer):
        return _layout_config(total, per_device, procs, "dpo", **trainer)

    assert batch_layout(c(16, 2, 1))["gradient_accumulation_steps"] == 8
    assert batch_layout(c(16, 2, 8))["gradient_accumulation_steps"] == 1
    assert batch_layout(c(16, 1, 8))["gradient_accumulation_steps"] == 2
    with pytest.raises(ValueError, match=r"global_batch_size=16: .* per_device_train_batch_size \(3\)"):
        batch_layout(c(16, 3, 1))
    with pytest.raises(ValueError, match="set objective.global_batch_size instead"):
        batch_layout(c(16, 2, 1, gradient_accumulation_steps=8))


def test_validation_cannot_be_bypassed(tiny_dir):
    """Positional datasets, an IterableDataset, and DPO's ref_model in second place."""
    from datasets import IterableDataset

    bad = [dict(r, weight=w) for r, w in zip(ROWS["sft"][:4], (1.0, float("nan"), 1.0, 1.0))]
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    with pytest.raises(ValueError, match="row 1 .*nan"):
        WeightedSFTTrainer(model, _args("sft", tiny_dir / "out"), None, Dataset.from_list(bad), None, tok)
    stream = IterableDataset.from_generator(lambda: iter(bad))
    trainer = WeightedSFTTrainer(
        model=model,
        args=_args("sft", tiny_dir / "out", max_steps=1, per_device_train_batch_size=4),
        train_dataset=stream,
        processing_class=tok,
    )
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="invalid 'weight' nan"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing trained
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with pytest.raises(ValueError, match="aot"):
        WeightedDPOTrainer(model, ref, _args("dpo", tiny_dir / "out", loss_type=["aot"]))


def test_collator_and_model_wrapper_survive_pickle_and_copy(tiny_dir):
    import copy
    import pickle

    from east.training import RowWeightedModel as _RowWeightedModel
    from east.training import WeightCollator as _WeightCollator

    collator = _WeightCollator(_Stack())
    for clone in (pickle.loads(pickle.dumps(collator)), copy.deepcopy(collator)):
        out = clone([{"x": 1, "weight": 0.5}, {"x": 2, "weight": 2}])
        assert out["x"] == [1, 2] and out["weight"].tolist() == [0.5, 2.0]
        assert clone.marker == "inner"  # attributes still reach the wrapped collator
    wrapped = _RowWeightedModel(_Stack(), None, rows=2)
    assert copy.deepcopy(wrapped).marker == "inner"
    assert pickle.loads(pickle.dumps(wrapped)).marker == "inner"


class _Stack:
    marker = "inner"

    def __call__(self, examples):
        return {"x": [e["x"] for e in examples]}


@pytest.mark.parametrize("objective", objective_names())
def test_uneven_micro_batches_weigh_every_example_once(objective, tiny_dir):
    """3 examples per step as micro-batches [2, 1] give the update of one batch of 3."""
    initial = torch.cat(
        [p.detach().flatten() for p in AutoModelForCausalLM.from_pretrained(tiny_dir).parameters()]
    )
    rows = [dict(r, weight=w) for r, w in zip(ROWS[objective][:3], (0.5, 1.5, 2.0))]
    updates = {}
    for batch, acc in ((3, 1), (2, 2)):
        trainer = _trainer(
            objective,
            tiny_dir,
            rows,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=acc,
            max_steps=1,
            optim="sgd",
            learning_rate=1.0,
            lr_scheduler_type="constant",
            warmup_steps=0,
        )
        trainer.train()
        updates[batch] = torch.cat([p.detach().flatten() for p in trainer.model.parameters()]) - initial
    assert updates[3].norm() > 0
    assert _rel(updates[2], updates[3]) <= 1e-5


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_weighted_loss_is_logged_beside_the_unweighted_one(objective, tiny_dir):
    rows = [dict(r, weight=w) for r, w in zip(ROWS[objective][:4], WEIGHTS)]
    # Each example's stock loss, one at a time (apo_zero_unpaired / sigmoid: no batch coupling).
    per_example = []
    for r in rows:
        stock = _trainer(
            objective,
            tiny_dir,
            [{k: v for k, v in r.items() if k != "weight"}],
            weighted=False,
            per_device_train_batch_size=1,
        )
        per_example.append(_grad(stock, 1)[0].item())
    trainer = _trainer(
        objective, tiny_dir, rows, per_device_train_batch_size=4, max_steps=1, learning_rate=0.0, data_seed=0
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    expected_unweighted = sum(per_example) / 4
    expected_weighted = sum(w * loss for w, loss in zip(WEIGHTS, per_example)) / 4
    assert logged["loss"] == pytest.approx(expected_unweighted, rel=1e-4)
    assert logged["loss_weighted"] == pytest.approx(expected_weighted, rel=1e-4)


def _layout_config(total, per_device, procs, objective="sft", **trainer):
    """The parts of a :class:`east.config.Config` that the batch layout reads."""
    from types import SimpleNamespace

    return SimpleNamespace(
        objective=SimpleNamespace(
            name=objective,
            global_batch_size=total,
            trainer={"per_device_train_batch_size": per_device, **trainer},
        ),
        model=SimpleNamespace(trainer_overrides={}),
        distributed=SimpleNamespace(num_processes=procs),
    )
