#!/usr/bin/env bash
# Calibrating the testbed (docs/testbed.md): vanilla SFT only (mapping=uniform, seed 0), over
# a grid of task and budget settings given as Hydra sweep overrides; then, per cell, the base
# and trained accuracy, the per-question accuracy spread of the samples and the share of
# "correct" samples whose worked lines are wrong. EAST rows are not run here: the testbed is
# chosen on vanilla SFT's gain alone. On scale=testbed: the testbed's model and budget, every
# question (the default's own calibration ran run.py -m directly: docs/testbed.md, "The default").
#
#   experiments/testbed/calibrate.sh SWEEP_DIR dataset.arith.steps=2,3 model.tiny.warmup_steps=200 ...
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:?usage: calibrate.sh SWEEP_DIR [sweep overrides...]}"
shift
cache="${EAST_CACHE_DIR:-$HOME/.cache/east}"
start=$(date +%s)
python run.py -m scale=testbed logger=none objective=sft mapping=uniform seed=0 hydra.sweep.dir="$dir" 'hydra.sweep.subdir=${hydra.job.num}' "$@"
python experiments/testbed/analyse.py --cache "$cache" "$dir"/*/ | tee "$dir/calibration.txt"
echo "wall time: $(( $(date +%s) - start )) s"
