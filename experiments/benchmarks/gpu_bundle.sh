#!/usr/bin/env bash
# Wheels for experiments/benchmarks/gpu_check.py on a GPU machine with no network.
#
#   experiments/benchmarks/gpu_bundle.sh OUT_DIR [PYTHON_VERSION]     # default 3.12
#
# The target image is assumed to hold torch, transformers, tokenizers, accelerate, numpy,
# pyarrow, pandas, xxhash, requests and fsspec (this workplace's CUDA image does). The bundle
# adds what it lacks: east itself, TRL, datasets and datasets' pure-Python helpers, omegaconf
# and hydra-core (east's configs; with their antlr runtime), and math-verify with its LaTeX
# parser (the pipeline check grades), and DeepSpeed with hjson and pydantic (ZeRO-3). All but
# pydantic-core are pure-Python wheels. Under 64 MiB (checked).
# On the GPU machine:
#   pip install --no-index --no-deps --target /tmp/site OUT_DIR/*.whl
#   PYTHONPATH=/tmp/site:. python experiments/benchmarks/gpu_check.py [--pipeline]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:?usage: gpu_bundle.sh OUT_DIR [PYTHON_VERSION]}"
py="${2:-3.12}"
mkdir -p "$out"
rm -rf build  # setuptools would pack modules a stale build/lib still holds
python -m pip wheel --quiet --no-deps --wheel-dir "$out" .
python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --dest "$out" "trl==1.16.*" "datasets==$(python -c 'import datasets; print(datasets.__version__)')" \
  "dill==$(python -c "import dill; print(dill.__version__)")" \
  "multiprocess==$(python -c "import multiprocess; print(multiprocess.__version__)")" \
  "omegaconf==$(python -c "import omegaconf; print(omegaconf.__version__)")" \
  "hydra-core==$(python -c "import hydra; print(hydra.__version__)")" \
  "math-verify==$(python -c "from importlib.metadata import version; print(version('math-verify'))")" \
  "latex2sympy2_extended==$(python -c "from importlib.metadata import version; print(version('latex2sympy2_extended'))")"
# DeepSpeed (gpu_check --pipeline trains under ZeRO-3), the version the engines tier pins
# (.ci/engines.txt): published as a source archive, built here into a pure-Python wheel; with
# what it imports that the image lacks (hjson, pydantic: pydantic-core is a binary wheel, for
# this machine's platform, so the bundle is for x86-64 when built on x86-64).
python -m pip wheel --quiet --no-deps --wheel-dir "$out" "$(grep -E '^deepspeed==' .ci/engines.txt)"
python -m pip download --quiet --only-binary=:all: --python-version "$py" --implementation cp \
  --dest "$out" hjson "pydantic>=2,<3"
# omegaconf's antlr runtime is published as a source archive only: built here into a
# pure-Python wheel.
python -m pip wheel --quiet --no-deps --wheel-dir "$out" \
  "antlr4-python3-runtime==$(python -c "from importlib.metadata import version; print(version('antlr4-python3-runtime'))")"
size=$(du -sm "$out" | cut -f1)
ls -1 "$out"
echo "bundle: ${size} MiB in $out"
if (( size >= 64 )); then
  echo "bundle is over 64 MiB" >&2
  exit 1
fi
