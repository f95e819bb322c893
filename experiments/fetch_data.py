"""Fetch GSM8K and MATH from the Hugging Face hub into local JSONL, once.

    python experiments/fetch_data.py ~/data/east          # then: export EAST_DATA_DIR=~/data/east

writes DIR/gsm8k/{train,test}.jsonl and DIR/math/{train,test,test500}.jsonl: the layout that
``paths.data_dir=DIR`` (or ``EAST_DATA_DIR``) reads, so that no run, cluster job or offline
node touches the hub again. The hub ids, configs and splits are the ones in
``conf/dataset/<name>.yaml``; each record keeps the hub's fields. A file already there is left
alone (delete it to fetch again); each file is written under a temporary name and renamed
when complete, so an interrupted fetch leaves no partial file. The closing line is JSON: the
files written or kept, with their record counts and sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("gsm8k", "math")


def sources(name: str) -> list[dict[str, Any]]:
    """The splits ``dataset=<name>`` reads (its typed config, with no local copy set): its
    training split and every test set, each with the hub id, config and split it comes from
    (``DatasetConfig.test_source``) and the local file name it gets."""
    from hydra import compose, initialize_config_dir

    from east.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"dataset={name}", "paths.data_dir=null", "paths.output_dir=/tmp"])
    d = OmegaConf.to_object(cfg.dataset)
    out = [
        {"file": d.train_split, "hub_id": d.hub_id, "hub_config": d.hub_config, "hub_split": d.train_split}
    ]
    for test in d.tests:
        spec, split, hub_split = d.test_source(test)
        out.append(
            {
                "file": split,
                "hub_id": spec.hub_id,
                "hub_config": spec.hub_config,
                "hub_split": hub_split or split,
            }
        )
    return out


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(out: Path, names: tuple[str, ...] = DATASETS) -> list[dict[str, Any]]:
    import datasets

    written = []
    for name in names:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for src in sources(name):
            path = folder / f"{src['file']}.jsonl"
            kept = path.exists()
            if not kept:
                rows = datasets.load_dataset(src["hub_id"], src["hub_config"], split=src["hub_split"])
                tmp = path.with_suffix(".jsonl.partial")
                with tmp.open("w", encoding="utf-8") as f:
                    for row in rows:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                os.replace(tmp, path)
            with path.open("rb") as f:
                records = sum(1 for line in f if line.strip())
            written.append(
                {
                    "file": str(path),
                    "kept": kept,
                    "records": records,
                    "sha256": _digest(path),
                    "from": src["hub_id"],
                }
            )
            print(
                f"{'kept' if kept else 'wrote'} {path}: {records} records from {src['hub_id']}",
                file=sys.stderr,
            )
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path, help="where DIR/gsm8k and DIR/math go (then paths.data_dir=DIR)")
    parser.add_argument("--only", choices=DATASETS, action="append", help="one dataset (repeatable)")
    args = parser.parse_args(argv)
    files = fetch(args.dir.expanduser(), tuple(args.only or DATASETS))
    print(json.dumps({"data_dir": str(args.dir.expanduser()), "files": files}))


if __name__ == "__main__":
    main()
