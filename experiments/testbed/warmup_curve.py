"""The tiny model's base accuracy along its warm-up: one warm-up, greedy accuracy on the
first test questions every ``--every`` steps, and the seconds spent. For choosing
``model.tiny.warmup_steps`` (docs/testbed.md): self-training needs a base policy in the
uncertain middle, and the warm-up is most of the default run's time.

    python experiments/testbed/warmup_curve.py --steps 600 --every 100 --questions 300 \
        --set dataset.arith.steps=2 --set model.tiny.warmup_lr=3e-3

It warms up the default's tiny model; ``--set scale=testbed`` for the testbed's.

Prints a line per checkpoint and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--set", action="append", default=[], help="a Hydra override (repeatable)")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from east.config import register_configs
    from east.data import load_splits
    from east.grading import grade_questions
    from east.prompts import build_prompts
    from east.samplers import SamplingParams
    from east.samplers.hf import HFSampler
    from east.stages.base_model import warm_up_tiny
    from east.validate import validate

    register_configs()
    overrides = [
        f"model.tiny.warmup_steps={args.steps}",
        "paths.cache_dir=/tmp/x",
        "paths.output_dir=/tmp/x",
        *args.set,
    ]
    with initialize_config_dir(
        config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"
    ):
        c = validate(compose(config_name="config", overrides=overrides))
    splits = load_splits(c.dataset)
    test = splits.tests["arith"][: args.questions]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=c.evaluation.max_new_tokens)
    curve = []
    start = time.perf_counter()

    class Probe(TrainerCallback):
        def on_step_end(self, train_args, state, control, model=None, processing_class=None, **kwargs):
            if state.global_step % args.every and state.global_step != args.steps:
                return
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                processing_class.save_pretrained(tmp)
                prompts = build_prompts(processing_class, [p.question for p in test], c.model.system_prompt)
                texts = (
                    HFSampler(batch_size=256, progress=False)
                    .generate(tmp, prompts.token_ids, [[0]] * len(test), params)
                    .texts
                )
            grades = grade_questions([(t, p.gold) for t, p in zip(texts, test)], fallback=c.grading.fallback)
            accuracy = 100 * sum(g.correct[0] for g in grades) / len(grades)
            point = {
                "step": state.global_step,
                "accuracy": round(accuracy, 1),
                "seconds": round(time.perf_counter() - start, 1),
            }
            curve.append(point)
            print(point, flush=True)
            model.train()

    with tempfile.TemporaryDirectory() as out:
        warm_up_tiny(Path(out), c.model.tiny, splits.warmup, c.model.system_prompt, callbacks=[Probe()])
    print(json.dumps({"overrides": args.set, "steps": args.steps, "curve": curve}))


if __name__ == "__main__":
    main()
