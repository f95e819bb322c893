"""The weighted trainers fail loudly when TRL or transformers change under them (each
canary fires under a simulated drift), and refuse or handle the inputs that used to train
wrongly: eval packing with weights, float32-overflowing weights, an iterable dataset with a
bad row, a torch-format dataset, sequence parallelism."""

from __future__ import annotations

import pytest
import torch
import transformers
import trl
from datasets import Dataset, IterableDataset
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer

from east.objectives import objective_names
from east.objectives.sft.trainer import WeightedSFTTrainer
from east.training import TrainerAssumptionError
from tests.integration.trainer_runs import CLASSES, make_trainer, one_step, params, reference, rel, rows

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

WINDOW = [[0, 1], [2]]


# --------------------------------------------------------------------------- canaries


@pytest.mark.parametrize("objective", objective_names())
def test_canary_the_step_example_count(objective, tiny_dir, monkeypatch):
    """transformers stops calling get_batch_samples per step: nothing would divide the loss
    by the step's examples."""
    cls = CLASSES[objective][0]
    monkeypatch.setattr(cls, "get_batch_samples", transformers.Trainer.get_batch_samples)
    trainer = make_trainer(objective, tiny_dir, rows(objective, 3), WINDOW)
    with pytest.raises(TrainerAssumptionError, match="get_batch_samples"):
        trainer.train()


def test_canary_the_weight_column_reaches_the_batch(tiny_dir, monkeypatch):
    """transformers renames the hook that keeps extra columns: the weight column is dropped."""
    monkeypatch.setattr(
        WeightedSFTTrainer,
        "_set_signature_columns_if_needed",
        trl.SFTTrainer._set_signature_columns_if_needed,
    )
    trainer = make_trainer("sft", tiny_dir, rows("sft", 3), WINDOW)
    before = params(trainer.model)
    with pytest.raises(TrainerAssumptionError, match="'weight' column reaching every batch"):
        trainer.train()
    assert torch.equal(before, params(trainer.model))


@pytest.mark.parametrize("objective", objective_names())
def test_canary_log_prob_rows(objective, tiny_dir):
    """The forward returns log-probs (TRL's fused head) or logits (ORPO, CPO) for fewer rows
    than the batch has."""
    trainer = make_trainer(objective, tiny_dir, rows(objective, 3), WINDOW)
    forward = trainer.model.forward  # TRL's fused-head forward, on the instance

    def short_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        field = "log_probs" if getattr(out, "log_probs", None) is not None else "logits"
        setattr(out, field, getattr(out, field)[:1])
        return out

    trainer.model.forward = short_forward
    with pytest.raises(TrainerAssumptionError, match="one row per batch row"):
        trainer.train()


@pytest.mark.parametrize(
    ("objective", "parent", "method"),
    [
        ("dpo", trl.DPOTrainer, "_compute_loss"),
        ("kto", trl.KTOTrainer, "_compute_loss"),
        ("orpo", ORPOTrainer, "get_batch_loss_metrics"),
        ("simpo", CPOTrainer, "get_batch_loss_metrics"),
    ],
)
def test_canary_the_policy_forward_goes_through_the_given_model(
    objective, parent, method, tiny_dir, monkeypatch
):
    """TRL calls ``self.model`` instead of the model handed to compute_loss."""
    original = getattr(parent, method)
    monkeypatch.setattr(parent, method, lambda self, model, *a, **k: original(self, self.model, *a, **k))
    trainer = make_trainer(objective, tiny_dir, rows(objective, 3), WINDOW)
    with pytest.raises(TrainerAssumptionError, match="through the model given to compute_loss"):
        trainer.train()


@pytest.mark.parametrize(
    ("objective", "parent", "what"),
    [
        ("sft", trl.SFTTrainer, r"sum\(-log_probs\) / label_mask.sum\(\)"),
        ("dpo", trl.DPOTrainer, "sum_t loss_weight_t"),
        ("kto", trl.KTOTrainer, r"nanmean\(losses\)"),
        ("orpo", ORPOTrainer, r"-1 \* mean\(per-pair loss\) \+ 1 \* NLL"),
        ("simpo", CPOTrainer, r"1 \* mean\(per-pair loss\) \+ 1 \* NLL"),
    ],
)
def test_canary_the_loss_decomposition(objective, parent, what, tiny_dir, monkeypatch):
    """TRL changes how it reduces per-example losses (simulated: a rescaled loss)."""
    original = parent.compute_loss
    monkeypatch.setattr(parent, "compute_loss", lambda self, *a, **k: original(self, *a, **k) * 1.5)
    trainer = make_trainer(objective, tiny_dir, rows(objective, 3), WINDOW)
    with pytest.raises(TrainerAssumptionError, match=what):
        trainer.train()


def test_canary_dpo_rows_are_chosen_then_rejected(tiny_dir, monkeypatch):
    """TRL interleaves [c0, r0, c1, r1] instead of [c0, c1; r0, r1]."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    original = DataCollatorForPreference.torch_call

    def interleaved(self, examples):
        out = original(self, examples)
        n = len(examples)
        order = torch.tensor([i // 2 + (i % 2) * n for i in range(2 * n)])
        return {
            k: (v[order] if torch.is_tensor(v) and v.shape[:1] == (2 * n,) else v) for k, v in out.items()
        }

    monkeypatch.setattr(DataCollatorForPreference, "torch_call", interleaved)
    trainer = make_trainer("dpo", tiny_dir, rows("dpo", 3), WINDOW)
    with pytest.raises(TrainerAssumptionError, match="order of the examples"):
        trainer.train()


@pytest.mark.parametrize(
    ("objective", "loss_type"),
    [
        ("dpo", ["brand_new"]),
        ("dpo", ["aot"]),
        ("dpo", ["sft"]),
        ("kto", "brand_new"),
        ("simpo", "brand_new"),
    ],
)
def test_canary_loss_types_are_allowlisted(objective, loss_type, tiny_dir):
    """A loss type TRL adds later (or one that mixes examples) is refused until checked."""
    with pytest.raises(ValueError, match="not among the types whose per-example loss"):
        make_trainer(objective, tiny_dir, rows(objective, 3), WINDOW, loss_type=loss_type)


@pytest.mark.parametrize(
    ("objective", "parent", "method"),
    [("orpo", ORPOTrainer, "odds_ratio_loss"), ("simpo", CPOTrainer, "cpo_loss")],
)
def test_canary_the_per_pair_loss_function_is_called(objective, parent, method, tiny_dir, monkeypatch):
    """TRL renames or bypasses the per-pair loss function the weighted trainer reads."""
    monkeypatch.setattr(CLASSES[objective][0], method, getattr(parent, method))
    trainer = make_trainer(objective, tiny_dir, rows(objective, 3), WINDOW)
    with pytest.raises(TrainerAssumptionError, match="per-pair losses once per batch"):
        trainer.train()


def test_canary_orpo_nll_is_a_plain_mean_cross_entropy(tiny_dir, monkeypatch):
    """TRL label-smooths ORPO's NLL term: no longer a per-example mean the weights can scale."""
    original = torch.nn.CrossEntropyLoss.__init__
    monkeypatch.setattr(
        torch.nn.CrossEntropyLoss,
        "__init__",
        lambda self, *a, **k: original(self, *a, **{**k, "label_smoothing": 0.1}),
    )
    trainer = make_trainer("orpo", tiny_dir, rows("orpo", 3), WINDOW)
    with pytest.raises(TrainerAssumptionError, match="plain mean cross-entropy"):
        trainer.train()


def test_canary_paired_rows_follow_the_examples(tiny_dir, monkeypatch):
    """TRL's paired collator reorders the chosen rows."""
    from trl.experimental.utils import DPODataCollatorWithPadding

    original = DPODataCollatorWithPadding.__call__

    def reversed_chosen(self, features):
        out = original(self, features)
        for k in ("chosen_input_ids", "chosen_attention_mask", "chosen_labels"):
            out[k] = out[k].flip(0)
        return out

    monkeypatch.setattr(DPODataCollatorWithPadding, "__call__", reversed_chosen)
    trainer = make_trainer("orpo", tiny_dir, rows("orpo", 3), WINDOW)
    with pytest.raises(TrainerAssumptionError, match="order of the examples"):
        trainer.train()


class _SequenceParallel:
    """What accelerate's ParallelismConfig answers with sp_size > 1 (every other feature off)."""

    sp_enabled = True
    sp_backend = "torch"  # (TRL refuses DeepSpeed's SP itself on transformers < 5.19)
    tp_size = 1

    def __getattr__(self, name):
        return False


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_sequence_parallelism_is_refused(objective, tiny_dir, monkeypatch):
    import accelerate

    init = accelerate.Accelerator.__init__

    def with_sp(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._east_test_sp = True

    real = accelerate.Accelerator.parallelism_config
    monkeypatch.setattr(accelerate.Accelerator, "__init__", with_sp)
    monkeypatch.setattr(
        accelerate.Accelerator,
        "parallelism_config",
        property(
            lambda self: _SequenceParallel() if getattr(self, "_east_test_sp", False) else real.fget(self)
        ),
    )
    with pytest.raises(ValueError, match="sequence / context parallelism"):
        make_trainer(objective, tiny_dir, rows(objective, 3), WINDOW)


# --------------------------------------------------------------------------- inputs


def test_eval_packing_with_weights_is_refused(tiny_dir):
    """Packing the eval set drops its weight column: the eval loss would be unweighted."""
    from trl import SFTConfig

    data = rows("sft", 3)

    with pytest.raises(ValueError, match="eval_packing"):
        WeightedSFTTrainer(
            model=make_trainer("sft", tiny_dir, data, WINDOW).model,
            args=SFTConfig(output_dir=str(tiny_dir / "o"), use_cpu=True, bf16=False, eval_packing=True),
            train_dataset=Dataset.from_list(data),
            eval_dataset=Dataset.from_list(data),
        )


def test_a_batch_with_some_weights_missing_is_refused():
    from east.training import WeightCollator as _WeightCollator

    collator = _WeightCollator(lambda examples: {"x": [e["x"] for e in examples]})
    assert "weight" not in collator([{"x": 1}, {"x": 2}])  # no weights at all: unweighted
    with pytest.raises(ValueError, match="1 of 2 examples of a batch have no 'weight'"):
        collator([{"x": 1, "weight": 0.5}, {"x": 2}])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (1e39, "float32's largest value"),
        (3.5e38, "float32's largest value"),
        (float("inf"), "finite"),
        (-0.5, ">= 0"),
    ],
)
def test_weights_that_are_not_finite_in_float32_are_refused(bad, message, tiny_dir):
    data = rows("dpo", 3)
    data[1]["weight"] = bad
    with pytest.raises(ValueError, match=f"row 1 .*{message}"):
        make_trainer("dpo", tiny_dir, data, WINDOW)


def test_an_iterable_dataset_is_checked_before_the_first_update(tiny_dir):
    data = rows("sft", 7)
    data[4]["weight"] = float("nan")
    stream = IterableDataset.from_generator(lambda: iter(data))
    trainer = make_trainer(
        "sft", tiny_dir, data, None, dataset=stream, per_device_train_batch_size=2, max_steps=3
    )
    before = params(trainer.model)
    with pytest.raises(ValueError, match="row 4 .*nan"):
        trainer.train()
    assert torch.equal(before, params(trainer.model))  # refused before any optimiser step


def test_an_iterable_dataset_trains_with_its_weights(tiny_dir):
    data = rows("sft", 4)
    stream = IterableDataset.from_generator(lambda: iter(data))
    trainer = make_trainer(
        "sft", tiny_dir, data, None, dataset=stream, per_device_train_batch_size=2, max_steps=1
    )
    trainer.train()
    assert trainer.state.log_history[0]["weight_mean"] == pytest.approx((0.25 + 1.75) / 2)


def test_a_torch_format_dataset_trains_like_a_list(tiny_dir):
    """`Dataset.with_format("torch")` gives the same SFT step. (TRL's own DPO and KTO
    collators add prompt and completion ids with `+`, which a torch format turns into a
    tensor sum: stock TRL fails there before any weight is read.)"""
    data = rows("sft", 3)
    expected, _ = one_step("sft", tiny_dir, data, WINDOW)
    trainer = make_trainer(
        "sft", tiny_dir, data, WINDOW, dataset=Dataset.from_list(data).with_format("torch")
    )
    start = params(trainer.model)
    trainer.train()
    assert rel(params(trainer.model) - start, expected) <= 1e-6


def test_dpo_without_a_weight_column_is_unweighted(tiny_dir):
    """No weight column: every pair weighs 1, and the step is the reference's with weights 1
    (the step's example count is pairs, not its 2 rows per pair)."""
    data = [dict(r, weight=1.0) for r in rows("dpo", 3)]
    update, _ = one_step(
        "dpo", tiny_dir, [{k: v for k, v in r.items() if k != "weight"} for r in data], WINDOW
    )
    expected, _ = reference("dpo", tiny_dir, data, beta=0.1)
    assert rel(update, expected) <= 1e-5
