#!/usr/bin/env bash
# The EAST table on the embedded default, on a CPU: SFT / DPO / KTO x vanilla / EAST x 3 seeds,
# then the table (Markdown + CSV) and the figures, written into the sweep folder.
#
#   experiments/tiny_table.sh [SWEEP_DIR] [extra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-multirun/tiny_table}"
shift || true
start=$(date +%s)
python run.py -m objective=sft,dpo,kto mapping=uniform,power seed=0,1,2 logger=none \
  hydra.sweep.dir="$dir" 'hydra.sweep.subdir=${hydra.job.num}' "$@"
python -m east.report "$dir"
python -c "from east.plots import plot_mappings; plot_mappings('$dir/mappings.png')"
echo "wall time: $(( $(date +%s) - start )) s"
