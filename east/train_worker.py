"""The train stage's multi-process entry point, started by `accelerate launch`.

Hydra runs only in the driver: it writes the resolved training spec (a JSON file) into the
stage's artifact folder and launches this module on it; every worker reads that file.

    accelerate launch [--config_file conf/accelerate/zero3.yaml] -m east.train_worker SPEC.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_path: str) -> None:
    from east.train_stage import train_from_spec

    spec = json.loads(Path(spec_path).read_text())
    train_from_spec(spec)
    # Leave together: a rank that exits while another still writes can abort in gloo's
    # teardown ("terminate called without an active exception"), failing a finished stage.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m east.train_worker SPEC.json")
    main(sys.argv[1])
