#!/usr/bin/env bash
# The paper's Figure 3 on the testbed: accuracy vs the power mapping's sharpness a for SFT and
# DPO, 3 seeds, with a 95% band over test questions (a = 0 is vanilla self-training). Writes
# table.md / table.csv (every a with its paired Δ vs vanilla) and accuracy_vs_sharpness.png.
#
#   experiments/sharpness_sweep.sh [SWEEP_DIR] [extra overrides...]
#   SEEDS=0 OBJECTIVES=sft SHARPNESS=0,1 experiments/sharpness_sweep.sh /tmp/s   # shrunk (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-multirun/sharpness_sweep}"
shift || true
start=$(date +%s)
python run.py -m scale=testbed logger=none "objective=${OBJECTIVES:-sft,dpo}" mapping=power \
  "east.sharpness=${SHARPNESS:--2,-1,0,0.5,1,2,3}" "seed=${SEEDS:-0,1,2}" \
  hydra.sweep.dir="$dir" 'hydra.sweep.subdir=${hydra.job.num}' "$@"
echo "wall time: $(( $(date +%s) - start )) s"
