"""The base_model worker: the model self-training starts from, built from weights — the
embedded tiny model's tokenizer and supervised warm-up (its "pretraining"), or a GGUF
checkpoint converted into a plain one. In the driver, or in its own process.

    python -m east.stages.base_model SPEC.json

Spec (JSON): ``{"kind": "tiny", "out": DIR, "tiny": {model.tiny fields}, "warmup": JSONL of
problems, "system": str | null}`` or ``{"kind": "gguf", "out": DIR, "gguf": FILE}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from east.cache import read_jsonl
from east.prompts import assistant, messages

#: The warm-up's recipe (tokenizer texts, completion format), in the base model's cache key:
#: 2 = chat markup in the tokenizer's texts, the last worked line's result boxed.
WARMUP_RECIPE = 2


def warm_up_tiny(
    d: Path, tiny: Any, warmup: list[Any], system: str | None, callbacks: list[Any] | None = None
) -> None:
    """Train the tiny model's tokenizer on the task text, then its base policy by SFT
    (``tiny``: a :class:`east.config.TinyModelConfig` or its fields; ``warmup``: the task's
    problems)."""
    from datasets import Dataset
    from trl import SFTConfig

    from east.data.arith import warmup_completion
    from east.models import build_tiny_model, build_tiny_tokenizer
    from east.objectives.sft.trainer import WeightedSFTTrainer
    from east.stages.save import save_trained

    get = tiny.get if isinstance(tiny, dict) else lambda k: getattr(tiny, k)
    texts = [p.question + " " + warmup_completion(p) for p in warmup]
    # The chat markup (role names, the system prompt) as often as the task text, so that it
    # merges into a few tokens instead of a character each: half of every sequence otherwise.
    texts += [f"system\n{system or ''}\nuser\nassistant\n"] * len(warmup)
    tokenizer = build_tiny_tokenizer(texts, vocab_size=get("vocab_size"))
    model = build_tiny_model(
        tokenizer,
        hidden_size=get("hidden_size"),
        num_layers=get("num_layers"),
        num_heads=get("num_heads"),
        intermediate_size=get("intermediate_size"),
        seed=get("seed"),
    )
    rows = [
        {"prompt": messages(p.question, system), "completion": assistant(warmup_completion(p))}
        for p in warmup
    ]
    args = SFTConfig(
        output_dir=str(d / "trainer"),
        max_steps=get("warmup_steps"),
        per_device_train_batch_size=get("warmup_batch_size"),
        learning_rate=get("warmup_lr"),
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        # SFTConfig checkpoints activations by default: for this model it only recomputes the
        # forward (the same weights, bit for bit; 100 warm-up steps took 1.29x [1.20, 1.39] as
        # long with it, 4 alternating pairs: docs/testbed.md, "The default").
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=50,
        seed=get("seed"),
    )
    trainer = WeightedSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    from east.tracking import console_progress

    console_progress(trainer, "warm-up", weights=False)  # every weight is 1
    trainer.train()
    save_trained(trainer, d, "float32", "no")


def run(spec: dict[str, Any]) -> None:
    out = Path(spec["out"])
    if spec["kind"] == "gguf":
        from east.models import convert_gguf

        convert_gguf(Path(spec["gguf"]), out / "model")
        return
    from east.data import Problem

    warmup = [Problem(**r) for r in read_jsonl(Path(spec["warmup"]))]
    warm_up_tiny(out, spec["tiny"], warmup, spec["system"])


def main() -> None:
    from east.stages.launch import worker_main

    worker_main("base_model", run)


if __name__ == "__main__":
    main()
