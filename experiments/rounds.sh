#!/usr/bin/env bash
# The paper's Figure 4 on the testbed: iterative self-training, EAST (power, a = 1) vs vanilla
# SFT over 3 rounds (each round samples from the model the previous one trained), 3 seeds.
# Writes table.md / table.csv (the last round, with paired Δ) and accuracy_vs_round.png
# (every round's accuracy with its 95% band) into the sweep folder.
#
#   experiments/rounds.sh [SWEEP_DIR] [extra overrides...]
#   SEEDS=0 ROUNDS=2 experiments/rounds.sh /tmp/r   # shrunk (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-multirun/rounds}"
shift || true
start=$(date +%s)
python run.py -m scale=testbed logger=none objective=sft mapping=uniform,power "rounds=${ROUNDS:-3}" \
  "seed=${SEEDS:-0,1,2}" hydra.sweep.dir="$dir" 'hydra.sweep.subdir=${hydra.job.num}' "$@"
echo "wall time: $(( $(date +%s) - start )) s"
