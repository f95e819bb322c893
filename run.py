"""Run one EAST experiment (or a sweep with -m). See README.md and conf/config.yaml.

python run.py                                   # the embedded default, CPU, minutes
python run.py objective=dpo east.sharpness=2
python run.py -m objective=sft,dpo,kto east.sharpness=0,1,2
"""

import os
import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, ``kill``): stopped like Ctrl-C, every worker with it."""


def _terminate(signum, frame):
    raise Terminated


def _error(message: str) -> None:
    """The one line of a user's error, after any progress bar has drawn its last; exit 2."""
    if "east.tracking" in sys.modules:
        from east.tracking import close_progress_bars

        close_progress_bars()
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(2)


def _stopped(terminated: bool) -> None:
    """One line for Ctrl-C or SIGTERM, naming the stage it stopped in; exit 130 / 143."""
    stage = None
    if "east.stages.driver" in sys.modules:
        from east.stages.driver import current_stage
        from east.tracking import close_progress_bars

        close_progress_bars()
        stage = current_stage()
    where = f" in stage {stage}" if stage else ""
    print(
        f"{'terminated' if terminated else 'interrupted'}{where}; rerun the same command to continue",
        file=sys.stderr,
    )
    sys.exit(143 if terminated else 130)


if __name__ == "__main__":  # the driver; not a grading worker importing this file
    signal.signal(signal.SIGTERM, _terminate)
try:
    import hydra
    from omegaconf import DictConfig

    from east.config import register_configs
    from east.errors import UserError, storage_message

    register_configs()
except KeyboardInterrupt as e:  # Ctrl-C while starting: nothing ran yet
    _stopped(isinstance(e, Terminated))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # Imported here, not above: a grading worker starts by importing this file (Python's
    # forkserver loads __main__), and east.pipeline brings torch and transformers (seconds).
    from east.pipeline import record_failure, run

    try:
        results = run(cfg)
    except UserError as e:  # a config value or a data row: one line, no traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if record_failure(cfg, e):
            return None
        _error(str(e))
    except KeyboardInterrupt as e:
        _stopped(isinstance(e, Terminated))
    except Exception as e:
        storage = storage_message(e)  # a read-only or full disk: the machine's, one line
        if storage is not None and os.environ.get("HYDRA_FULL_ERROR") != "1":
            if record_failure(cfg, UserError(storage)):
                return None
            _error(storage)
        if record_failure(cfg, e):  # a sweep goes on; its report lists this cell as failed
            return None
        raise
    # A scalar for Hydra sweepers: mean accuracy (trained, or base for evaluation-only runs).
    accuracies = [e.get("trained", e.get("base")) for e in results.get("eval", {}).values()]
    return sum(accuracies) / len(accuracies) if accuracies else None


if __name__ == "__main__":
    try:
        if os.environ.get("HYDRA_FULL_ERROR") != "1":
            from pathlib import Path

            from east.cli import preflight

            preflight(sys.argv[1:], Path(__file__).resolve().parent / "conf")  # every job, before any runs
        main()
    except KeyboardInterrupt as e:  # before or after a job's own handling
        _stopped(isinstance(e, Terminated))
