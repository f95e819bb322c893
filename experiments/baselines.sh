#!/usr/bin/env bash
# The paper's baselines on the testbed, in one table with EAST and vanilla SFT: accuracy
# ((1-A)^a), rejected (R^a), local_uncertainty (mean token entropy^a), power (EAST) and
# uniform (vanilla), each at its config's a (1; uniform 0), 3 seeds, each row with its paired Δ vs vanilla and 95% interval.
#
#   experiments/baselines.sh [SWEEP_DIR] [extra overrides...]
#   SEEDS=0 experiments/baselines.sh /tmp/b   # shrunk (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-multirun/baselines}"
shift || true
start=$(date +%s)
python run.py -m scale=testbed logger=none "objective=${OBJECTIVES:-sft}" \
  mapping=uniform,power,accuracy,rejected,local_uncertainty "seed=${SEEDS:-0,1,2}" \
  hydra.sweep.dir="$dir" 'hydra.sweep.subdir=${hydra.job.num}' "$@"
echo "wall time: $(( $(date +%s) - start )) s"
