#!/usr/bin/env bash
# Does EAST help? The results table on the embedded testbed (docs/testbed.md): SFT / DPO / KTO
# x vanilla / EAST x 3 seeds, each EAST row with its paired Δ vs vanilla, 95% bootstrap
# interval and p-value. Samples are shared across the six cells of a seed; the warm-up across
# everything. Writes table.md, table.csv and accuracy_vs_sharpness.png into the sweep folder.
#
#   experiments/testbed_table.sh [SWEEP_DIR] [extra overrides...]
#   SEEDS=0 OBJECTIVES=sft experiments/testbed_table.sh /tmp/t scale=tiny   # shrunk (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-multirun/testbed_table}"
shift || true
start=$(date +%s)
python run.py -m scale=testbed logger=none "objective=${OBJECTIVES:-sft,dpo,kto}" mapping=uniform,power \
  "seed=${SEEDS:-0,1,2}" hydra.sweep.dir="$dir" 'hydra.sweep.subdir=${hydra.job.num}' "$@"
echo "wall time: $(( $(date +%s) - start )) s"
