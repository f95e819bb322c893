"""An independent reference for the weighted trainers: per-example SFT, DPO, KTO, ORPO and
SimPO losses in plain torch (no TRL loss code), from the tokenizer's chat template (ORPO,
SimPO: from the token ids TRL's experimental trainers prepare, whose tokenization differs)
and one unpadded forward per sequence, and the gradient of an optimiser step,
sum_i w_i * grad(loss_i) / N.

It shares nothing with TRL but the model and tokenizer: a TRL upgrade that changes what the
weighted trainers compute fails a test here, not a paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split_ids(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of a conversational example: the prompt with the
    assistant header, and what the whole conversation adds after it."""

    def ids(messages, **kw):
        return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"]

    p = ids(prompt, add_generation_prompt=True)
    full = ids(prompt + completion)
    assert full[: len(p)] == p, "the chat template does not extend the prompt"
    return p, full[len(p) :]


def completion_logps(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Per-token log-probabilities of ``completion`` after ``prompt`` (one sequence, no padding)."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return logp[len(prompt) - 1 :]


def per_example_losses(objective: str, model, ref_model, tokenizer, rows: list[dict], **kw) -> torch.Tensor:
    """Each row's loss (a vector with gradients through ``model``).

    sft: mean NLL over the completion tokens. dpo (``loss_type`` sigmoid or ipo, ``beta``):
    from the summed completion log-ratios of chosen and rejected. kto (``loss_type``
    apo_zero_unpaired or kto, ``beta``, ``kl_groups``: the micro-batches whose mismatched
    pairs estimate kto's KL term, each completion paired with the previous example's
    prompt... as TRL's KTO defines it: example j's KL completion is example j-1's, cyclic)."""
    losses = []
    beta = kw.get("beta", 0.1)
    if objective == "sft":
        for r in rows:
            p, c = split_ids(tokenizer, r["prompt"], r["completion"])
            losses.append(-completion_logps(model, p, c).mean())
        return torch.stack(losses)

    def logratio(prompt_msgs, completion_msgs):
        p, c = split_ids(tokenizer, prompt_msgs, completion_msgs)
        with torch.no_grad():
            ref = completion_logps(ref_model, p, c).sum()
        return completion_logps(model, p, c).sum() - ref, len(c)

    if objective == "dpo":
        loss_type = kw.get("loss_type", "sigmoid")
        for r in rows:
            chosen, n_chosen = logratio(r["prompt"], r["chosen"])
            rejected, n_rejected = logratio(r["prompt"], r["rejected"])
            if loss_type == "sigmoid":
                losses.append(-F.logsigmoid(beta * (chosen - rejected)))
            elif loss_type == "ipo":  # TRL's length-normalised IPO
                losses.append((chosen / n_chosen - rejected / n_rejected - 1 / (2 * beta)) ** 2)
            else:
                raise ValueError(loss_type)
        return torch.stack(losses)

    if objective == "kto":
        loss_type = kw.get("loss_type", "apo_zero_unpaired")
        kl = {}
        if loss_type == "kto":  # per micro-batch: mean log-ratio of mismatched pairs, >= 0, no gradient
            for group in kw["kl_groups"]:
                with torch.no_grad():
                    values = [
                        logratio(rows[j]["prompt"], rows[group[(k - 1) % len(group)]]["completion"])[0]
                        for k, j in enumerate(group)
                    ]
                for j in group:
                    kl[j] = torch.stack(values).mean().clamp(min=0)
        for j, r in enumerate(rows):
            ratio, _ = logratio(r["prompt"], r["completion"])
            if loss_type == "apo_zero_unpaired":
                losses.append(1 - torch.sigmoid(beta * ratio) if r["label"] else torch.sigmoid(beta * ratio))
            elif loss_type == "kto":
                z = kl[j]
                losses.append(
                    1 - torch.sigmoid(beta * (ratio - z))
                    if r["label"]
                    else 1 - torch.sigmoid(beta * (z - ratio))
                )
            else:
                raise ValueError(loss_type)
        return torch.stack(losses)
    if objective in ("orpo", "simpo"):
        return torch.stack([_paired_loss(objective, model, t, **kw) for t in kw["tokenized"]])
    raise ValueError(objective)


def _sequence(model, ids: list[int], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean NLL over every token after the first, mean and sum of the log-probs of the tokens
    ``labels`` does not mask with -100) of one unpadded sequence."""
    x = torch.tensor([ids])
    logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), dim=-1)
    token = logp.gather(-1, x[0, 1:, None]).squeeze(-1)
    mask = torch.tensor(labels[1:]) != -100
    return -token.mean(), token[mask].mean(), token[mask].sum()


def _paired_loss(objective: str, model, t: dict, **kw) -> torch.Tensor:
    """ORPO (``beta``): nll_chosen - beta * log sigmoid(log odds ratio of the mean completion
    log-probs), its NLL over the whole chosen sequence. SimPO / CPO (``loss_type`` simpo or
    sigmoid, ``beta``, ``simpo_gamma``, ``cpo_alpha``): -log sigmoid(beta * margin - gamma)
    with simpo's length-normalised margin (sigmoid's: summed), plus cpo_alpha times the mean
    NLL of the chosen completion."""
    beta = kw.get("beta", 0.1)
    nll_seq, chosen_mean, chosen_sum = _sequence(model, t["chosen_input_ids"], t["chosen_labels"])
    _, rejected_mean, rejected_sum = _sequence(model, t["rejected_input_ids"], t["rejected_labels"])
    if objective == "orpo":
        log_odds = (chosen_mean - rejected_mean) - (
            torch.log1p(-torch.exp(chosen_mean)) - torch.log1p(-torch.exp(rejected_mean))
        )
        return nll_seq - beta * F.logsigmoid(log_odds)
    loss_type = kw.get("loss_type", "simpo")
    if loss_type == "simpo":
        margin = chosen_mean - rejected_mean - kw.get("simpo_gamma", 0.5) / beta
    elif loss_type == "sigmoid":
        margin = chosen_sum - rejected_sum
    else:
        raise ValueError(loss_type)
    loss = -F.logsigmoid(beta * margin)
    alpha = kw.get("cpo_alpha", 1.0)
    if alpha:
        loss = loss - alpha * chosen_mean
    return loss


def step_gradient(losses: torch.Tensor, weights: list[float], model) -> tuple[torch.Tensor, float]:
    """(flattened gradient of sum_i w_i * loss_i / N, that loss's value)."""
    w = torch.tensor(weights, dtype=losses.dtype)
    loss = (w * losses).sum() / len(weights)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
    return flat, loss.item()
