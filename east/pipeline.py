"""One EAST experiment, in the paper's order (its Figure 1):

    base model -> [sample -> grade -> build (filter, weight) -> train] x rounds -> evaluate

Each stage is a cached artifact (:mod:`east.stages`, :mod:`east.cache`), so a sweep reuses
what its cells share and a killed run continues where it stopped. :func:`run` takes the
composed Hydra config and returns the metrics dict that it also writes to ``results.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from east import results
from east.cache import StageResult, read_json, write_json
from east.config import Config
from east.data import load_splits
from east.stages.driver import Stages, make_sampler
from east.validate import check_sources, trainer_settings, validate

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment from a composed config; return (and write) its results."""
    import hydra.utils

    from east.tracking import quiet_libraries

    quiet_libraries()
    c = validate(cfg, _command_line_overrides())
    check_sources(c)
    out_dir = Path(c.paths.output_dir or _hydra_output_dir())
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = hydra.utils.instantiate(cfg.logger)
    settings = trainer_settings(c)
    if not (c.evaluation.only or c.stop_after):
        log.info(
            "%s trainer settings (objective.trainer, then model.trainer_overrides.%s, then the command "
            "line; train_info.json records all the trainer ran with): %s",
            c.objective.name,
            c.objective.name,
            ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "TRL's defaults",
        )
    logger.start(
        {**dataclasses.asdict(c), "trainer_settings": settings},
        name=f"{c.objective.name}-{c.east.mapping}-a{c.east.sharpness}-s{c.seed}",
        group=c.experiment_name or os.environ.get("EAST_SWEEP_GROUP") or _sweep_name(),
        directory=str(out_dir),
    )
    try:
        outcome, stats, evaluated = _run(c, logger)
        if outcome.get("phase") == "shared":  # no results.json: not a cell of the table
            write_json(out_dir / "shared.json", outcome)
            print(f"shared stages of {c.model.name} on {c.dataset.name} in place ({outcome['seconds']:.0f}s)")
            return outcome
        results.write_predictions(out_dir / "predictions.jsonl", evaluated)
        outcome["paths"] = {"run": str(out_dir), **outcome["paths"]}
        write_json(out_dir / "results.json", outcome)  # before any W&B call can fail
        hists = results.histograms(stats)
        images = []
        if hists["kept_entropy"]:
            from east.plots import plot_run

            images = plot_run(hists, out_dir)
        results.log_results(logger, outcome, hists, images)
        where = logger.where()
    finally:
        logger.finish()
    results.print_summary(outcome, where)
    return outcome


def stages_for(c: Config, logger: Any = None) -> Stages:
    """The stages of one experiment's validated config (:func:`east.validate.validate`), for a
    script that runs some of them: ``base_model``, ``sample``, ``grade``, ``build``, ``train``,
    ``evaluate`` and ``evaluate_sampled`` each return their artifact, built or taken from the
    cache under the key a run of this config uses (experiments/testbed/gain_vs_weight.py
    evaluates a sweep's models on their training questions). ``logger``: None logs nothing."""
    from east.tracking import NullLogger

    return Stages(c, logger if logger is not None else NullLogger(), make_sampler(c))


def _run(c: Config, logger: Any) -> tuple[dict[str, Any], dict[str, Any], dict[tuple[str, str], StageResult]]:
    """The stages of one experiment; returns results.json's content, the last round's
    training statistics (empty when the run only evaluates) and the greedy evaluations by
    (test set, base or trained)."""
    start = time.perf_counter()
    stages = stages_for(c, logger)
    splits = load_splits(c.dataset)
    base = stages.base_model(splits)
    only = c.evaluation.only
    if c.stop_after == "shared":
        return _shared_stages(c, stages, splits, base), results.NO_TRAINING_STATS, {}

    # Self-training: each round samples from the model the previous round trained.
    model, records, per_round = base, None, []
    evaluated: dict[tuple[str, str], StageResult] = {}  # (test set, base / trained / roundN)
    for r in [] if only else range(c.rounds):
        samples = stages.sample(model, splits.train, round_=r)
        grades = stages.grade(samples, round_=r)
        records = stages.build(samples, grades, round_=r)
        model = stages.train(model, records, round_=r)
        if c.rounds > 1:
            for name, problems in splits.tests.items():
                evaluated[(name, f"round{r + 1}")] = stages.evaluate(
                    model, name, problems, f"evaluate_{name}_r{r}"
                )
            accs = {name: results.accuracy(evaluated[(name, f"round{r + 1}")]) for name in splits.tests}
            per_round.append(
                {"round": r, "eval": accs, "kept": read_json(records.path / "stats.json")["kept"]}
            )
            logger.log({"round": r, **{f"eval/{name}/round_accuracy": a for name, a in accs.items()}})

    # Evaluation: greedy accuracy (and maj@n / pass@k when asked) of the base and trained models.
    targets = [("base", base)] if c.evaluation.base or only else []
    if not only:
        targets.append(("trained", model))
    evals: dict[str, dict[str, Any]] = {}
    for name, problems in splits.tests.items():
        entry: dict[str, Any] = {"n": len(problems)}
        for which, m in targets:
            label = f"evaluate_{which}"
            evaluated[(name, which)] = stages.evaluate(m, name, problems, f"{label}_{name}")
            entry[which] = results.accuracy(evaluated[(name, which)])
            if c.evaluation.samples:
                sampled = stages.evaluate_sampled(m, name, problems, f"{label}_sampled_{name}")
                entry.update({f"{which}_{k}": v for k, v in read_json(sampled.path / "metrics.json").items()})
        evals[name] = entry

    trained = None if only else model
    seconds = time.perf_counter() - start
    stats = results.training_stats(records)
    results.add_paired(evals, evaluated)
    outcome = results.assemble(
        c, splits, stages.results, evals, per_round, stats, trained, seconds, _command_line_overrides()
    )
    return outcome, stats, evaluated


def _shared_stages(c: Config, stages: Stages, splits: Any, base: StageResult) -> dict[str, Any]:
    """Phase A of a cluster sweep (``stop_after=shared``): the stages the training cells of one
    (model, dataset) share — samples, grades, base evaluations — built once, on all of this
    job's devices, before the cells start."""
    start = time.perf_counter()
    if not c.evaluation.only:
        samples = stages.sample(base, splits.train)
        stages.grade(samples)
    if c.evaluation.base or c.evaluation.only:
        for name, problems in splits.tests.items():
            stages.evaluate(base, name, problems, f"evaluate_base_{name}")
    return {
        "phase": "shared",
        "run": {
            "model": c.model.name,
            "dataset": c.dataset.name,
            "seed": c.seed,
            "experiment": c.experiment_name,
        },
        "stages": {k: v.summary() for k, v in stages.results.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }


def record_failure(cfg: DictConfig, error: BaseException) -> bool:
    """In a sweep job, write the failure into the job's folder (``failed.json``: the cell, the
    error, its traceback) and log it, so that the sweep goes on and its report lists the cell;
    True when recorded. Outside a sweep, False: the error ends the run as usual."""
    import traceback

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from east.runs import FAILED

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    folder = Path(HydraConfig.get().runtime.output_dir)
    record = {
        "experiment": cfg.get("experiment_name") or HydraConfig.get().job.override_dirname,
        "overrides": list(HydraConfig.get().overrides.task),
        "error": f"{type(error).__name__}: {error}".splitlines()[0][:500],
        "traceback": traceback.format_exception(error),
    }
    write_json(folder / FAILED, record)
    log.error("cell failed, the sweep goes on: %s (%s)", record["error"], folder / FAILED)
    return True


def _hydra_output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ValueError("paths.output_dir is null and no Hydra run folder exists: set paths.output_dir")
    return HydraConfig.get().runtime.output_dir


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
