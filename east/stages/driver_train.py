"""The driver side of the stages that write model weights: the base model (the tiny
model's warm-up, a GGUF conversion, or a reference to real weights) and training with the
per-question weights. A part of :class:`east.stages.driver.Stages`."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from east.cache import StageResult, read_json, write_json, write_jsonl
from east.config import Config
from east.data import Splits
from east.models import model_path
from east.objectives import code_modules
from east.stages.base_model import WARMUP_RECIPE
from east.stages.driver_common import problems_digest, round_label
from east.validate import batch_layout, trainer_settings

log = logging.getLogger("east.stages.driver")


class ModelStages:
    """``base_model`` and ``train``: each runs its worker module (east.stages.base_model,
    east.stages.train) here, in a child process, or under ``accelerate launch``."""

    # Set by Stages (these methods call its _stage and _run): a part, not usable alone.
    c: Config
    logger: Any
    isolate: bool

    def base_model(self, splits: Splits) -> StageResult:
        """The model self-training starts from: the tiny model after its warm-up, or a
        reference to real weights (hub id or folder) written as a small artifact."""
        from east.stages import base_model as worker

        m = self.c.model
        if m.gguf and not m.path:
            from east.models import find_gguf

            gguf = dict(m.gguf)

            def convert(d: Path) -> None:
                spec = {"kind": "gguf", "out": str(d), "gguf": str(find_gguf(gguf["package"], gguf["file"]))}
                self._run("east.stages.base_model", spec, d / ".work", "base_model", lambda: worker.run(spec))
                shutil.rmtree(d / ".work", ignore_errors=True)

            return self._stage("base_model", {"gguf": gguf}, [], convert, "base_model")
        if m.tiny is None:
            config = {"path": m.path, "chat_template": m.chat_template}
            return self._stage(
                "base_model", config, [], lambda d: write_json(d / "model.json", config), "base_model"
            )
        warmup = splits.warmup
        if not warmup:  # another dataset: the tiny model's warm-up is the embedded task's
            from east.data.arith import ArithConfig, generate

            warmup = generate(ArithConfig())["warmup"]
            log.warning(
                "model=tiny on dataset %s: its base policy is warmed up on the embedded arith task "
                "(cached, shared with the default run); on these questions it exercises the "
                "pipeline, its accuracy is not a result",
                self.c.dataset.name,
            )
        config = {
            "tiny": dataclasses.asdict(m.tiny),
            "system": m.system_prompt,
            "warmup": problems_digest(warmup),
            "recipe": WARMUP_RECIPE,
        }

        def warm_up(d: Path) -> None:
            scratch = d / ".work"
            scratch.mkdir()
            write_jsonl(scratch / "warmup.jsonl", [p.to_dict() for p in warmup])
            spec = {
                "kind": "tiny",
                "out": str(d),
                "tiny": dataclasses.asdict(m.tiny),
                "warmup": str(scratch / "warmup.jsonl"),
                "system": m.system_prompt,
            }
            self._run("east.stages.base_model", spec, scratch, "base_model", lambda: worker.run(spec))
            shutil.rmtree(scratch, ignore_errors=True)

        return self._stage("base_model", config, [], warm_up, "base_model")

    def train(self, model: StageResult, records: StageResult, round_: int = 0) -> StageResult:
        """Train the objective with the per-question weights (east.training's TRL subclasses),
        checkpointing into the stage's work folder so that a killed run resumes."""
        from east.stages import train as worker

        c = self.c
        layout = batch_layout(c)
        trainer_cfg = {
            **trainer_settings(c),
            "gradient_accumulation_steps": layout["gradient_accumulation_steps"],
        }
        # The process count is part of the key: with it, float reductions change. How often
        # checkpoints are written does not change the result: not in the key.
        config = {
            "objective": c.objective.name,
            "trainer": {k: v for k, v in trainer_cfg.items() if k != "save_steps"},
            "seed": c.seed,
            "processes": layout["processes"],
            "dtype": c.model.dtype,
            "chat_template": c.model.chat_template,
        }
        dist = c.distributed
        # DDP, FSDP and ZeRO-3 reduce in different orders (ZeRO-3 on one process too).
        if layout["processes"] > 1 or dist.accelerate_config:
            config["accelerate_config"] = dist.accelerate_config
        peft = dataclasses.asdict(c.peft) if c.peft.enabled else None
        if peft:  # (absent when off: full-training keys stay what they were)
            config["peft"] = peft
        label = round_label("train", round_)

        def write(d: Path, work: Path) -> None:
            spec = {
                "objective": c.objective.name,
                "base_path": model_path(model.path),
                "out_dir": str(d),
                "work_dir": str(work),
                "records": str(records.path / "records.jsonl"),
                "settings": trainer_cfg,
                "seed": c.seed,
                "chat_template": c.model.chat_template,
                "dtype": c.model.dtype,
                "peft": peft,
                "report_to": [],  # the driver logs through its own logger
                "imports": list(c.imports),  # an objective of yours registers itself there
            }
            if dist.num_processes > 1 or dist.accelerate_config:  # (ZeRO-3 on one process too)
                write_json(d / "train_spec.json", spec)
                accelerate = dist.accelerate_config_path() if dist.accelerate_config else None
                worker.launch(d / "train_spec.json", dist.num_processes, accelerate, list(dist.launch_args))
            else:
                from east.tracking import logger_callback

                inline = lambda: worker.train_from_spec(spec, callbacks=[logger_callback(self.logger)])  # noqa: E731
                self._run("east.stages.train", spec, d, label, inline)
                if not self.isolate:
                    return
            for entry in read_json(d / "log_history.json"):  # workers do not log to W&B
                self.logger.log({f"train/{k}": v for k, v in entry.items() if isinstance(v, int | float)})

        lora = ("peft",) if peft else ()  # PEFT's version shapes a LoRA model, not a full one
        engine = (
            ("deepspeed",) if dist.distributed_type() == "DEEPSPEED" else ()
        )  # ZeRO-3's own optimiser step
        return self._stage(
            "train",
            config,
            [model, records],
            write,
            label,
            work=True,
            libraries=(*lora, *engine),
            modules=code_modules(c.objective.name),  # its trainer and spec (east.objectives)
        )
