"""Run one EAST experiment (or a sweep with -m). See README.md and conf/config.yaml.

python run.py                                   # the embedded default, CPU, minutes
python run.py objective=dpo east.sharpness=2
python run.py -m objective=sft,dpo,kto east.sharpness=0,1,2
"""

import os
import sys

import hydra
from omegaconf import DictConfig

from east.config import register_configs
from east.errors import UserError

register_configs()


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
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        from east.stages.driver import current_stage
        from east.tracking import close_progress_bars

        close_progress_bars()
        stage = current_stage()
        where = f" in stage {stage}" if stage else ""
        print(f"interrupted{where}; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if record_failure(cfg, e):  # a sweep goes on; its report lists this cell as failed
            return None
        raise
    # A scalar for Hydra sweepers: mean accuracy (trained, or base for evaluation-only runs).
    accuracies = [e.get("trained", e.get("base")) for e in results.get("eval", {}).values()]
    return sum(accuracies) / len(accuracies) if accuracies else None


if __name__ == "__main__":
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        from pathlib import Path

        from east.cli import preflight

        preflight(sys.argv[1:], Path(__file__).resolve().parent / "conf")  # every job, before any runs
    main()
