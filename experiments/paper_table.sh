#!/usr/bin/env bash
# Run the paper's results table (east-method.md section 3) as one Hydra sweep: every
# conf/experiment/*.yaml cell for the chosen model prefix, then build the table.
#
#   experiments/paper_table.sh                       # all 28 cells, locally, one after another
#   experiments/paper_table.sh 'llama1b_*'           # the 1B half
#   experiments/paper_table.sh 'llama1b_*' hydra/launcher=slurm hydra.launcher.partition=gpu
#
# Cells share stage artifacts through paths.cache_dir: the base model is evaluated once per
# test set and each (model, dataset) is sampled and graded once for all six training cells.
set -euo pipefail
cd "$(dirname "$0")/.."
pattern="${1:-*}"
shift || true
python run.py -m "experiment=glob(${pattern})" "$@"
