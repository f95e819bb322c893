"""The EAST pipeline: base model -> sample -> grade -> build (weight + select) -> train ->
evaluate, each stage a cached artifact (see :mod:`east.cache`). :func:`run` takes the
composed config and returns the metrics dict that is also written to ``results.json``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from east.cache import StageCache, StageResult, read_json, read_jsonl, write_json, write_jsonl
from east.config import apply_command_line_precedence, batch_layout, trainer_settings, validate
from east.data import Problem, Splits, load_splits
from east.prompts import Prompts, assistant, build_prompts, messages
from east.sampling import SamplingParams, get_sampler, sample_seed

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, cfg: dict[str, Any], logger: Any):
        self.cfg = cfg
        self.logger = logger
        self.cache = StageCache(cfg["paths"]["cache_dir"])
        self.cache.clean_stale()
        self.stages: dict[str, StageResult] = {}
        self.system = cfg["model"]["system_prompt"]
        sampler_cfg = cfg["sampler"]
        kwargs = {"batch_size": sampler_cfg["batch_size"], "dtype": cfg["model"]["dtype"]}
        #: What of the backend shapes its samples (hf: nothing beyond its name, by contract).
        self.sampler_key: Any = sampler_cfg["name"]
        if sampler_cfg["name"] == "vllm":
            kwargs = {"tensor_parallel_size": sampler_cfg["tensor_parallel_size"],
                      "gpu_memory_utilization": sampler_cfg["gpu_memory_utilization"], "dtype": cfg["model"]["dtype"],
                      "entropy_top_k": sampler_cfg["entropy_top_k"]}  # fmt: skip
            self.sampler_key = {"name": "vllm", "entropy_top_k": sampler_cfg["entropy_top_k"]}
        self.sampler = get_sampler(sampler_cfg["name"], **kwargs)
        self._prompt_cache: dict[tuple[str, str], Prompts] = {}

    # ------------------------------------------------------------------ helpers

    def _stage(
        self, name: str, config: Any, inputs: list[StageResult], build: Any, label: str | None = None
    ) -> StageResult:
        result = self.cache.run(name, config, [i.key for i in inputs], build)
        self.stages[label or name] = result
        self.logger.log(
            {
                f"stages/{label or name}/seconds": result.seconds,
                f"stages/{label or name}/cached": int(result.cached),
            }
        )
        return result

    def _prompts(self, model_path: str, problems: list[Problem]) -> Prompts:
        """The prompts for ``problems``, rendered by the configured template and tokenized
        once; their digest goes into the keys of the stages that generate from them."""
        from east.models import load_tokenizer

        key = (model_path, self._problems_digest(problems))
        if key not in self._prompt_cache:
            tok = load_tokenizer(model_path, self.cfg["model"]["chat_template"])
            self._prompt_cache[key] = build_prompts(tok, [p.question for p in problems], self.system)
        return self._prompt_cache[key]

    @staticmethod
    def _problems_digest(problems: list[Problem]) -> str:
        h = hashlib.sha256()
        for p in problems:
            h.update(json.dumps([p.id, p.question, p.gold]).encode())
        return h.hexdigest()[:20]

    # ------------------------------------------------------------------ stages

    def base_model(self, splits: Splits) -> StageResult:
        """The model self-training starts from: the tiny model after its warm-up, or a
        reference to real weights (hub id or folder) written as a small artifact."""
        m = self.cfg["model"]
        if m["gguf"] and not m["path"]:
            from east.models import convert_gguf, find_gguf

            gguf = m["gguf"]
            return self._stage("base_model", {"gguf": gguf}, [],
                               lambda d: convert_gguf(find_gguf(gguf["package"], gguf["file"]), d / "model"))  # fmt: skip
        if m["tiny"] is None:
            config = {"path": m["path"], "chat_template": m["chat_template"]}
            return self._stage("base_model", config, [], lambda d: write_json(d / "model.json", config))
        config = {"tiny": m["tiny"], "system": self.system, "warmup": self._problems_digest(splits.warmup)}
        return self._stage(
            "base_model", config, [], lambda d: _warm_up_tiny(d, m, splits.warmup, self.system)
        )

    def model_path(self, model: StageResult) -> str:
        return model_path(model.path)

    def sample(self, model: StageResult, problems: list[Problem], round_: int = 0) -> StageResult:
        s = self.cfg["sampling"]
        params = SamplingParams(
            n=s["n"], temperature=s["temperature"], top_p=s["top_p"], max_new_tokens=s["max_new_tokens"]
        )
        path = self.model_path(model)
        prompts = self._prompts(path, problems)
        config = {"sampling": s, "seed": self.cfg["seed"], "round": round_, "prompts": prompts.digest,
                  "sampler": self.sampler_key, "questions": self._problems_digest(problems),
                  "dtype": self.cfg["model"]["dtype"]}  # fmt: skip

        def build(d: Path) -> None:
            seeds = [
                [sample_seed(self.cfg["seed"], p.id, j, round_) for j in range(params.n)] for p in problems
            ]
            start = time.perf_counter()
            responses = self.sampler.generate(path, prompts.token_ids, seeds, params)
            seconds = time.perf_counter() - start
            token_entropy = getattr(self.sampler, "token_entropy", None) or [None] * len(problems)
            rows = [{**p.to_dict(), "responses": r, "token_entropy": t}
                    for p, r, t in zip(problems, responses, token_entropy)]  # fmt: skip
            write_jsonl(d / "samples.jsonl", rows)
            write_json(d / "stats.json", {"seconds": seconds, "responses": sum(map(len, responses))})
            write_json(
                d / "prompt_example.json", {"text": prompts.texts[0], "token_ids": prompts.token_ids[0]}
            )

        return self._stage("sample", config, [model], build, label=_round_label("sample", round_))

    def grade(self, samples: StageResult, round_: int = 0) -> StageResult:
        from east.grading import grade_questions

        g = self.cfg["grading"]

        def build(d: Path) -> None:
            rows = read_jsonl(samples.path / "samples.jsonl")
            grades = grade_questions([(r["responses"], r["gold"]) for r in rows], mode=g["mode"],
                                     processes=g["processes"], timeout_s=g["timeout_s"], fallback=g["fallback"],
                                     store=self.cache.root)  # fmt: skip
            write_jsonl(d / "grades.jsonl", [{"id": r["id"], **gr.to_dict()} for r, gr in zip(rows, grades)])
            write_json(d / "stats.json", _grading_stats(grades, g["timeout_s"], "grade"))

        config = {"mode": g["mode"], "timeout_s": g["timeout_s"], "fallback": g["fallback"]}
        return self._stage("grade", config, [samples], build, label=_round_label("grade", round_))

    def build(self, samples: StageResult, grades: StageResult, round_: int = 0) -> StageResult:
        """Filter, weight and build the objective's training records."""
        from east.grading import QuestionGrade
        from east.selection import FilterConfig, GradedQuestion, build_records, filter_questions
        from east.weighting import compute_weights

        c = self.cfg
        config = {"objective": c["objective"]["name"], "sft_k": c["objective"]["sft_k"], "east": c["east"],
                  "filters": c["filters"], "seed": c["seed"]}  # fmt: skip

        def run(d: Path) -> None:
            rows = read_jsonl(samples.path / "samples.jsonl")
            grade_rows = _join_by_id(rows, read_jsonl(grades.path / "grades.jsonl"), samples, grades)
            questions = [
                GradedQuestion(
                    r["id"],
                    messages(r["question"], self.system),
                    r["responses"],
                    QuestionGrade(**{k: v for k, v in g.items() if k != "id"}),
                )
                for r, g in zip(rows, grade_rows)
            ]
            kept, dropped = filter_questions(questions, FilterConfig(**c["filters"]))
            if not kept:
                raise RuntimeError(
                    f"no training question survived the filters (dropped per rule: {dropped}); "
                    "sample more responses (sampling.n) or relax the filters"
                )
            weights = compute_weights(_signals(kept, rows), c["east"]["mapping"], c["east"]["sharpness"])
            kwargs = {"k": c["objective"]["sft_k"]} if c["objective"]["name"] == "sft" else {}
            records = build_records(c["objective"]["name"], kept, weights, seed=c["seed"], **kwargs)
            for r in records:  # TRL conversational format
                for key in ("completion", "chosen", "rejected"):
                    if key in r:
                        r[key] = assistant(r[key])
            write_jsonl(d / "records.jsonl", records)
            entropy = [q.grade.entropy for q in questions]
            kept_entropy = [q.grade.entropy for q in kept]
            write_json(d / "stats.json", {
                "questions": len(questions), "kept": len(kept), "dropped": dropped, "records": len(records),
                "entropy": _summary(kept_entropy), "entropy_all": _summary(entropy),
                "weight": _summary(list(weights)),
                "accuracy_all": _summary([q.grade.accuracy for q in questions]),
                "kept_entropy_values": kept_entropy, "weight_values": [float(w) for w in weights],
                "entropy_values": entropy,
            })  # fmt: skip

        return self._stage("build", config, [grades], run, label=_round_label("build", round_))

    def train(self, model: StageResult, records: StageResult, round_: int = 0) -> StageResult:
        c = self.cfg
        name = c["objective"]["name"]
        layout = batch_layout(c)
        trainer_cfg = {
            **trainer_settings(c),
            "gradient_accumulation_steps": layout["gradient_accumulation_steps"],
        }
        # The process count is part of the key: with it, float reductions change.
        config = {"objective": name, "trainer": trainer_cfg, "seed": c["seed"], "processes": layout["processes"],
                  "dtype": c["model"]["dtype"], "chat_template": c["model"]["chat_template"]}  # fmt: skip
        if layout["processes"] > 1:  # DDP, FSDP and ZeRO-3 reduce in different orders
            config["accelerate_config"] = c["distributed"]["accelerate_config"]

        def build(d: Path) -> None:
            spec = {
                "objective": name, "base_path": self.model_path(model), "out_dir": str(d),
                "records": str(records.path / "records.jsonl"), "settings": trainer_cfg, "seed": c["seed"],
                "chat_template": c["model"]["chat_template"], "dtype": c["model"]["dtype"],
            }  # fmt: skip
            dist = c["distributed"]
            if dist["num_processes"] == 1:
                from east.tracking import logger_callback

                train_from_spec({**spec, "report_to": []}, callbacks=[logger_callback(self.logger)])
                return
            write_json(d / "train_spec.json", {**spec, "report_to": []})
            _launch_workers(d / "train_spec.json", dist)
            for entry in read_json(d / "log_history.json"):  # workers do not log to W&B
                self.logger.log({f"train/{k}": v for k, v in entry.items() if isinstance(v, int | float)})

        return self._stage("train", config, [model, records], build, label=_round_label("train", round_))

    def evaluate(
        self, model: StageResult, test_name: str, problems: list[Problem], label: str
    ) -> StageResult:
        e, g = self.cfg["evaluation"], self.cfg["grading"]
        path = self.model_path(model)
        prompts = self._prompts(path, problems)
        config = {"test": test_name, "questions": self._problems_digest(problems), "max_new_tokens": e["max_new_tokens"],
                  "prompts": prompts.digest, "sampler": self.sampler_key, "fallback": g["fallback"],
                  "timeout_s": g["timeout_s"], "dtype": self.cfg["model"]["dtype"]}  # fmt: skip

        def build(d: Path) -> None:
            from east.evaluation import evaluate

            result = evaluate(self.sampler, path, prompts.token_ids, problems, max_new_tokens=e["max_new_tokens"],
                              processes=g["processes"], fallback=g["fallback"], timeout_s=g["timeout_s"],
                              store=self.cache.root)  # fmt: skip
            write_jsonl(d / "predictions.jsonl", result.pop("records"))
            _warn_timeouts(result["grading_timeouts"], result["n"], g["timeout_s"], label)
            write_json(d / "metrics.json", result)

        return self._stage("evaluate", config, [model], build, label=label)

    def evaluate_sampled(
        self, model: StageResult, test_name: str, problems: list[Problem], label: str
    ) -> StageResult:
        """maj@n and unbiased pass@k over n sampled answers per test question."""
        e, s = self.cfg["evaluation"], self.cfg["sampling"]
        params = SamplingParams(n=e["samples"], temperature=s["temperature"], top_p=s["top_p"],
                                max_new_tokens=e["max_new_tokens"])  # fmt: skip
        g = self.cfg["grading"]
        g_timeout = g["timeout_s"]
        path = self.model_path(model)
        prompts = self._prompts(path, problems)
        config = {"test": test_name, "questions": self._problems_digest(problems), "params": params.__dict__,
                  "prompts": prompts.digest, "sampler": self.sampler_key, "seed": self.cfg["seed"],
                  "pass_k": e["pass_k"], "fallback": g["fallback"], "timeout_s": g_timeout,
                  "dtype": self.cfg["model"]["dtype"]}  # fmt: skip

        def build(d: Path) -> None:
            from east.grading import grade_questions
            from east.metrics import majority_correct, pass_at_k

            seeds = [
                [sample_seed(self.cfg["seed"], p.id, j, "eval") for j in range(params.n)] for p in problems
            ]
            responses = self.sampler.generate(path, prompts.token_ids, seeds, params)
            grades = grade_questions([(r, p.gold) for r, p in zip(responses, problems)], processes=g["processes"],
                                     fallback=g["fallback"], timeout_s=g_timeout, store=self.cache.root)  # fmt: skip
            metrics = {f"maj@{params.n}": float(np.mean([majority_correct(g) for g in grades])),
                       "grading_timeouts": sum(g.timeouts for g in grades)}  # fmt: skip
            _warn_timeouts(metrics["grading_timeouts"], sum(g.n for g in grades), g_timeout, label)
            for k in e["pass_k"]:
                metrics[f"pass@{k}"] = float(np.mean([pass_at_k(g.n, sum(g.correct), k) for g in grades]))
            write_json(d / "metrics.json", metrics)

        return self._stage("evaluate_sampled", config, [model], build, label=label)


def model_path(artifact: Path) -> str:
    """The weights a model artifact stands for: a hub id or folder it names (``model.json``),
    or the checkpoint it holds."""
    info = artifact / "model.json"
    if info.exists():
        return read_json(info)["path"]
    return str(artifact / "model")


def _join_by_id(
    rows: list[dict[str, Any]], other: list[dict[str, Any]], left: StageResult, right: StageResult
) -> list[dict[str, Any]]:
    """``other``'s rows in the order of ``rows``, matched by question id. A missing, extra or
    repeated id is an error naming both artifacts: rows are never paired by position."""
    by_id: dict[str, dict[str, Any]] = {}
    for r in other:
        if r["id"] in by_id:
            raise RuntimeError(f"{right.name} artifact {right.path} repeats question id {r['id']!r}")
        by_id[r["id"]] = r
    ids = [r["id"] for r in rows]
    missing = [i for i in ids if i not in by_id]
    extra = sorted(set(by_id) - set(ids))
    if missing or extra or len(set(ids)) != len(ids):
        raise RuntimeError(
            f"{left.name} ({left.path}) and {right.name} ({right.path}) disagree on question ids: "
            f"{len(missing)} missing from {right.name} (e.g. {missing[:3]}), {len(extra)} extra "
            f"(e.g. {extra[:3]}); delete both folders to rebuild them"
        )
    return [by_id[i] for i in ids]


def _grading_stats(grades: list[Any], timeout_s: float, stage: str) -> dict[str, Any]:
    responses = sum(g.n for g in grades)
    timeouts = sum(g.timeouts for g in grades)
    _warn_timeouts(timeouts, responses, timeout_s, stage)
    return {"questions": len(grades), "responses": responses, "timeouts": timeouts, "timeout_s": timeout_s}


def _warn_timeouts(timeouts: int, responses: int, timeout_s: float, stage: str) -> None:
    if timeouts:
        log.warning(
            "%s: %d of %d responses hit the grading bound (%.3g s per parse or comparison, or too "
            "large to evaluate) and were compared by string only; raise grading.timeout_s to "
            "grade them symbolically", stage, timeouts, responses, timeout_s,
        )  # fmt: skip


def _grading_timeouts(stages: dict[str, StageResult]) -> dict[str, int | None]:
    """Responses cut by the grading bound, per grading stage of this run (None: an artifact
    written before the count existed)."""
    out: dict[str, int | None] = {}
    for label, stage in stages.items():
        if stage.name == "grade":
            out[label] = read_json(stage.path / "stats.json").get("timeouts")
        elif stage.name in ("evaluate", "evaluate_sampled"):
            out[label] = read_json(stage.path / "metrics.json").get("grading_timeouts")
    return out


def _round_label(stage: str, round_: int) -> str:
    return stage if round_ == 0 else f"{stage}_r{round_}"


def _signals(kept: list[Any], rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per kept question, every statistic a mapping may read (east.weighting.SIGNALS): the
    grade's fields, and the sampler's token entropies where it recorded them."""
    from east.weighting import SIGNALS

    token = {r["id"]: r.get("token_entropy") for r in rows}
    signals: dict[str, list[float]] = {
        signal: [getattr(q.grade, field) for q in kept]
        for signal, field in SIGNALS.items()
        if hasattr(kept[0].grade, field)
    }
    if all(token.get(q.question_id) for q in kept):
        signals["token_entropy"] = [float(np.mean(token[q.question_id])) for q in kept]
    return _SignalTable(signals)


class _SignalTable(dict):
    def __missing__(self, key: str) -> list[float]:
        raise ValueError(
            f"mapping signal {key!r} is not available: token-level entropies are recorded by the hf "
            "sampler while sampling (sampler=hf), not by this run's sampler"
        )


# ---------------------------------------------------------------------- training helpers


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def _trainer_args(cls: Any, out: Path, settings: dict[str, Any], seed: int, report_to: list[str]) -> Any:
    import torch

    cuda = torch.cuda.is_available()
    settings = dict(settings)
    # One config for CPU and GPU: bf16 and gradient checkpointing only where they pay off.
    settings["bf16"] = bool(settings.get("bf16", False)) and cuda
    settings["gradient_checkpointing"] = bool(settings.get("gradient_checkpointing", False)) and cuda
    return cls(
        output_dir=str(out / "trainer"), seed=seed, data_seed=seed, use_cpu=not cuda, report_to=report_to,
        save_strategy="no", disable_tqdm=False, **settings,
    )  # fmt: skip


def train_from_spec(spec: dict[str, Any], callbacks: list[Any] | None = None) -> None:
    """Train one objective from a resolved spec (in the driver, or in each accelerate worker).
    ``callbacks``: extra transformers callbacks (the driver's experiment logger)."""
    import random

    from datasets import Dataset

    from east.models import load_model, load_tokenizer
    from east.training import TRAINERS

    objective, out = spec["objective"], Path(spec["out_dir"])
    trainer_cls, config_cls = TRAINERS[objective]
    keep = {"sft": ("prompt", "completion", "weight"), "dpo": ("prompt", "chosen", "rejected", "weight"),
            "kto": ("prompt", "completion", "label", "weight")}[objective]  # fmt: skip
    rows = [{k: r[k] for k in keep} for r in read_jsonl(Path(spec["records"]))]
    if objective == "kto":  # KTO samples sequentially (its KL pairs): shuffle here, seeded
        random.Random(spec["seed"]).shuffle(rows)
    args = _trainer_args(config_cls, out, spec["settings"], spec["seed"], spec["report_to"])
    tokenizer = load_tokenizer(spec["base_path"], spec["chat_template"])
    model = load_model(spec["base_path"], spec["dtype"])
    _fit_and_save(
        trainer_cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=callbacks,
        ),
        out,
    )


def _fit_and_save(trainer: Any, out: Path) -> None:
    """Train, then save the model, its tokenizer and the log history under ``out``."""
    trainer.train()
    trainer.save_model(str(out / "model"))
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(str(out / "model"))
        write_json(out / "log_history.json", trainer.state.log_history)
        args = trainer.args
        world = trainer.accelerator.num_processes
        write_json(out / "train_info.json", {
            "processes": world, "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "effective_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world,
            "optimizer_steps": trainer.state.global_step, "examples": len(trainer.train_dataset),
            "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        })  # fmt: skip


def _launch_workers(spec_path: Path, dist: dict[str, Any]) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(dist["num_processes"])]
    if dist["accelerate_config"]:
        config = Path(dist["accelerate_config"])
        if not config.is_absolute():
            config = Path(__file__).resolve().parents[1] / config
        cmd += ["--config_file", str(config)]
    cmd += [*dist["launch_args"], "-m", "east.train_worker", str(spec_path)]
    log.info("launching %d training processes: %s", dist["num_processes"], " ".join(cmd))
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit {result.returncode}): {' '.join(cmd)}")


def _warm_up_tiny(d: Path, m: dict[str, Any], warmup: list[Problem], system: str | None) -> None:
    """Train the tiny model's tokenizer on the task text, then its base policy by SFT."""
    from datasets import Dataset
    from trl import SFTConfig

    from east.data.arith import warmup_completion
    from east.models import build_tiny_model, build_tiny_tokenizer
    from east.training import WeightedSFTTrainer

    t = m["tiny"]
    texts = [p.question + " " + warmup_completion(p) for p in warmup] + [system or ""]
    tokenizer = build_tiny_tokenizer(texts, vocab_size=t["vocab_size"])
    model = build_tiny_model(tokenizer, hidden_size=t["hidden_size"], num_layers=t["num_layers"],
                             num_heads=t["num_heads"], intermediate_size=t["intermediate_size"], seed=t["seed"])  # fmt: skip
    rows = [
        {"prompt": messages(p.question, system), "completion": assistant(warmup_completion(p))}
        for p in warmup
    ]
    args = SFTConfig(
        output_dir=str(d / "trainer"), max_steps=t["warmup_steps"], per_device_train_batch_size=t["warmup_batch_size"],
        learning_rate=t["warmup_lr"], lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0,
        bf16=False, use_cpu=True, report_to=[], save_strategy="no", logging_steps=50, seed=t["seed"],
        disable_tqdm=True,
    )  # fmt: skip
    _fit_and_save(
        WeightedSFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        ),
        d,
    )


# ---------------------------------------------------------------------- entry point


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment from a composed config; return (and write) its results."""
    import hydra.utils

    c = OmegaConf.to_container(cfg, resolve=True)
    for key in apply_command_line_precedence(c, _command_line_overrides()):
        log.info("objective.trainer.%s from the command line wins over model.trainer_overrides", key)
    validate(c)
    out_dir = Path(c["paths"]["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = hydra.utils.instantiate(cfg.logger)
    run_name = f"{c['objective']['name']}-{c['east']['mapping']}-a{c['east']['sharpness']}-s{c['seed']}"
    logger.start(
        c,
        name=run_name,
        group=c.get("experiment_name") or os.environ.get("EAST_SWEEP_GROUP") or _sweep_name(),
        directory=str(out_dir),
    )
    try:
        results = _run(c, logger)
        histograms = results.pop("_histograms")
        write_json(out_dir / "results.json", results)  # before any W&B call can fail
        images = []
        if histograms["kept_entropy"]:
            from east.plots import plot_run

            images = plot_run(histograms, out_dir)
        _log_results(logger, results, histograms, images)
    finally:
        logger.finish()
    _print_summary(results)
    return results


def _command_line_overrides() -> list[str]:
    """This job's overrides as given on the command line (empty outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _sweep_name() -> str | None:
    """The multirun's folder, so W&B groups the runs of one sweep together."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).as_posix()


def _run(c: dict[str, Any], logger: Any) -> dict[str, Any]:
    start = time.perf_counter()
    pipe = Pipeline(c, logger)
    splits = load_splits(c["dataset"])
    base = pipe.base_model(splits)
    only = c["evaluation"]["only"]
    rounds = [] if only else range(c["rounds"])
    model, per_round = base, []
    for r in rounds:  # each round samples from the model the previous round trained
        samples = pipe.sample(model, splits.train, round_=r)
        grades = pipe.grade(samples, round_=r)
        records = pipe.build(samples, grades, round_=r)
        model = pipe.train(model, records, round_=r)
        if c["rounds"] > 1:
            accs = {name: _accuracy(pipe.evaluate(model, name, problems, f"evaluate_{name}_r{r}"))
                    for name, problems in splits.tests.items()}  # fmt: skip
            per_round.append(
                {"round": r, "eval": accs, "kept": read_json(records.path / "stats.json")["kept"]}
            )
            logger.log({"round": r, **{f"eval/{name}/round_accuracy": a for name, a in accs.items()}})
    evals: dict[str, dict[str, Any]] = {}
    for name, problems in splits.tests.items():
        entry: dict[str, Any] = {"n": len(problems)}
        targets = ([("base", base)] if c["evaluation"]["base"] or only else []) + (
            [] if only else [("trained", model)]
        )
        for which, m in targets:
            label = "evaluate_base" if which == "base" else "evaluate"
            entry[which] = _accuracy(pipe.evaluate(m, name, problems, f"{label}_{name}"))
            if c["evaluation"]["samples"]:
                sampled = read_json(
                    pipe.evaluate_sampled(m, name, problems, f"{label}_sampled_{name}").path / "metrics.json"
                )
                entry.update({f"{which}_{k}": v for k, v in sampled.items()})
        evals[name] = entry
    stats = _NO_TRAINING_STATS if only else read_json(records.path / "stats.json")
    train_info = None if only else read_json(model.path / "train_info.json")
    stage_summary = {k: v.summary() for k, v in pipe.stages.items()}
    # The stage names the schema promises, whatever test sets there are.
    stage_summary["evaluate"] = _merge_stage([v for k, v in pipe.stages.items() if k.startswith("evaluate_")])
    return {
        "run": {
            "objective": "none" if only else c["objective"]["name"],
            "mapping": c["east"]["mapping"],
            "sharpness": c["east"]["sharpness"],
            "model": c["model"]["name"],
            "dataset": c["dataset"]["name"],
            "seed": c["seed"],
            "experiment": c.get("experiment_name"),
        },
        "stages": stage_summary,
        "data": {
            "questions": stats["questions"],
            "kept": stats["kept"],
            "dropped": stats["dropped"],
            "records": stats["records"],
            "entropy": stats["entropy"],
            "weight": stats["weight"],
            "entropy_all": stats["entropy_all"],
            "accuracy_all": stats["accuracy_all"],
            "skipped_rows": splits.skipped,
        },
        "train": train_info,
        "grading": {
            **{k: c["grading"][k] for k in ("mode", "fallback", "timeout_s")},
            "timeouts": _grading_timeouts(pipe.stages),
        },
        "eval": evals,
        "rounds": per_round,
        "paper": c.get("paper_reference"),
        "seconds": round(time.perf_counter() - start, 2),
        "_histograms": {
            "entropy": stats["entropy_values"],
            "kept_entropy": stats["kept_entropy_values"],
            "weight": stats["weight_values"],
        },
    }


_NO_TRAINING_STATS = {
    "questions": 0, "kept": 0, "dropped": {}, "records": 0,
    **{k: {"mean": None, "min": None, "max": None} for k in ("entropy", "weight", "entropy_all", "accuracy_all")},
    "entropy_values": [], "kept_entropy_values": [], "weight_values": [],
}  # fmt: skip


def _accuracy(stage: StageResult) -> float:
    return read_json(stage.path / "metrics.json")["accuracy"]


def _merge_stage(results: list[StageResult]) -> dict[str, Any]:
    return {
        "cached": all(r.cached for r in results),
        "seconds": round(sum(r.seconds for r in results), 3),
        "key": ",".join(r.key for r in results),
    }


def _log_results(
    logger: Any, results: dict[str, Any], histograms: dict[str, list[float]], images: list[Path]
) -> None:
    for image in images:
        logger.image(f"plots/{image.stem}", image)
    for name, values in histograms.items():
        logger.histogram(f"data/{name}", values)
    flat = {f"eval/{t}/{k}": v for t, e in results["eval"].items() for k, v in e.items()}
    flat.update(
        {
            f"data/{k}/{s}": v
            for k, d in results["data"].items()
            if k in ("entropy", "weight")
            for s, v in d.items()
        }
    )
    flat.update({"data/questions": results["data"]["questions"], "data/kept": results["data"]["kept"]})
    flat.update({f"data/dropped/{k}": v for k, v in results["data"]["dropped"].items()})
    logger.log(flat)
    # The whole results.json, so east.report can rebuild the table from a W&B project.
    logger.summary({**flat, "results_json": json.dumps(results)})


def _print_summary(results: dict[str, Any]) -> None:
    r, d = results["run"], results["data"]
    lines = [f"EAST {r['objective']} mapping={r['mapping']} a={r['sharpness']} seed={r['seed']} "
             f"({r['model']} on {r['dataset']}, {results['seconds']:.0f}s)"]  # fmt: skip
    if d["kept"]:
        lines.append(f"  kept {d['kept']}/{d['questions']} questions, mean weight {d['weight']['mean']:.3f}, "
                     f"mean entropy {d['entropy']['mean']:.3f} bits")  # fmt: skip
    lines.append(f"  {'test set':<12}{'base':>8}{'trained':>9}{'n':>6}")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    for name, e in results["eval"].items():
        lines.append(f"  {name:<12}{pct(e.get('base')):>8}{pct(e.get('trained')):>9}{e['n']:>6}")
    print("\n".join(lines))
