"""LoRA (peft.method=lora): the weighted trainers (the paper's three, ORPO and SimPO) are exact
on the adapter parameters, the DPO / KTO reference is the policy with its adapters off (no
second model), and the train stage saves a merged model that loads as a plain one."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.integration.reference_losses import per_example_losses, step_gradient
from tests.integration.trainer_runs import make_trainer, rel, rows

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

CASES = [
    ("sft", {}, {}),
    ("dpo", {"loss_type": ["sigmoid"], "beta": 0.1}, {"loss_type": "sigmoid", "beta": 0.1}),
    ("kto", {"loss_type": "apo_zero_unpaired", "beta": 0.1}, {"loss_type": "apo_zero_unpaired", "beta": 0.1}),
    # Beyond the paper: no reference model; SimPO with an NLL term (cpo_alpha > 0).
    ("orpo", {"beta": 0.1}, {"beta": 0.1}),
    ("simpo", *[{"beta": 2.0, "loss_type": "simpo", "simpo_gamma": 1.0, "cpo_alpha": 0.5}] * 2),
]


def _lora() -> LoraConfig:
    # Random B as well as A (init_lora_weights=False): the adapter-on policy differs from the
    # adapter-off reference from the first step, so the test can tell the two apart.
    return LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )


def _same_adapters(trained, model_dir):
    """An independent PEFT model (a fresh base, PEFT's own wrapping) holding the trainer's
    adapter values: the reference computes through it, not through anything TRL patched."""
    fresh = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), _lora())
    set_peft_model_state_dict(
        fresh, {k: v.detach().clone() for k, v in get_peft_model_state_dict(trained).items()}
    )
    assert torch.equal(_adapters(fresh), _adapters(trained))
    return fresh


def _adapters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize(("objective", "settings", "ref_settings"), CASES, ids=[c[0] for c in CASES])
def test_one_lora_step_is_the_reference_update_on_the_adapters(objective, settings, ref_settings, tiny_dir):
    data = rows(objective, 3)
    torch.manual_seed(0)
    trainer = make_trainer(objective, tiny_dir, data, [[0, 1], [2]], peft_config=_lora(), **settings)
    assert getattr(trainer, "ref_model", None) is None  # no second copy of the model
    policy = _same_adapters(trainer.model, tiny_dir)  # as initialised, before the step
    frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad]
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    start = _adapters(trainer.model)
    trainer.train()
    update = _adapters(trainer.model) - start
    # Reference: the same adapters by hand, the reference model the base (adapters off).
    adapter_off = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ref = adapter_off if objective in ("dpo", "kto") else None
    if objective in ("orpo", "simpo"):  # on the token ids TRL's experimental trainers prepare
        stock = make_trainer(objective, tiny_dir, data, weighted=False, **settings)
        ref_settings = {**ref_settings, "tokenized": [stock.train_dataset[i] for i in range(len(data))]}
    losses = per_example_losses(
        objective, policy, ref, AutoTokenizer.from_pretrained(tiny_dir), data, **ref_settings
    )
    grad, value = step_gradient(losses, [r["weight"] for r in data], policy)
    assert grad.norm() > 0
    assert rel(update, -grad) <= 1e-5
    assert trainer.state.log_history[0]["loss_weighted"] == pytest.approx(value, rel=1e-5)
    # Only the adapters moved.
    assert frozen and all(
        torch.equal(p, base_before[n]) for n, p in trainer.model.named_parameters() if n in base_before
    )


def test_the_reference_is_the_policy_with_adapters_off_not_a_copy_of_the_adapter(tiny_dir):
    """DPO's loss at the first step: with B != 0 the adapter-on policy and the adapter-off
    reference differ, so the log-ratio is not zero (a copied adapter would make it zero)."""
    data = rows("dpo", 2)
    torch.manual_seed(0)
    trainer = make_trainer(
        "dpo", tiny_dir, data, [[0, 1]], peft_config=_lora(), loss_type=["sigmoid"], beta=0.1
    )
    trainer.train()
    first = trainer.state.log_history[0]
    assert abs(first["loss"] - torch.log(torch.tensor(2.0)).item()) > 1e-4
