#!/usr/bin/env bash
# The GPU validation in one call (docs/gpu-validation.md): build llama-cpp-python with CUDA, then
# everything that needs that build, in the same run, since the wheel (114 MB) cannot leave the
# machine. Every step writes under $OUT (the device tool's folder; ./gpu-out elsewhere) and goes
# on after a failing step; each has a time limit, and a step that would end past $DEADLINE_S
# seconds after the start is skipped and named, so a second call (STEPS=...) can run it.
#
#   make gpu-payload                      # here: .gpu/ (trimmed sdist, wheels the image lacks)
#   bash bench/gpu/validate.sh            # on the CUDA machine, from the repo root, .gpu/ beside it
#   STEPS="serve concurrency" bash bench/gpu/validate.sh      # again on the same machine: the
#                                         # wheel in .gpu-build/ is reused, no second build
#   GPU_BUILD=skip PY=.venv/bin/python bash bench/gpu/validate.sh   # every step on this build (CPU)
#
# Steps, in this order: machine build gpu-check serve verify import-order concurrency
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
PAYLOAD=${PAYLOAD:-$ROOT/.gpu}
BUILD_DIR=$ROOT/.gpu-build             # ignored by git; a warm machine keeps it between calls
WORK=${WORK:-/tmp/gpu-validate}
PY=${PY:-python3}
STEPS=${STEPS:-machine build gpu-check serve verify import-order concurrency}
DEADLINE_S=${DEADLINE_S:-570}
GPU_BUILD=${GPU_BUILD:-cuda}           # cuda | skip (use the llama-cpp-python PY already has)
SHAPE=${SHAPE:-qwen2-7b}               # the served model: qwen2-7b, or tiny for a quick CPU trial
CLIENTS=${CLIENTS:-1,16,64}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/validate.log") 2>&1
START=$SECONDS
export PYTHONUNBUFFERED=1

has_step() { [[ " $STEPS " == *" $1 "* ]]; }
# step NAME ESTIMATE_S LIMIT_S COMMAND...: run unless it would end past the deadline
step() {
  local name=$1 estimate=$2 limit=$3; shift 3
  has_step "$name" || return 0
  local used=$((SECONDS - START))
  if ((used + estimate > DEADLINE_S)); then
    echo "=== $name: SKIPPED (${used} s used, ~${estimate} s needed, deadline ${DEADLINE_S} s): run again with STEPS=\"$name\""
    return 0
  fi
  # Never past the deadline by more than 20 s: what ran before it still comes back.
  ((limit > DEADLINE_S + 20 - used)) && limit=$((DEADLINE_S + 20 - used))
  echo "=== $name (at ${used} s, limit ${limit} s)"
  local t0=$SECONDS
  # bash -c: a step may be one of the functions here (exported below), which timeout cannot run.
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@"
  local rc=$?
  echo "=== $name: exit $rc in $((SECONDS - t0)) s"
}

machine() {
  date -u
  uname -srm
  nproc
  nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  (nvcc --version 2>/dev/null | tail -2) || echo "no nvcc"
  "$PY" -c 'import sys, numpy; print("python", sys.version.split()[0], "numpy", numpy.__version__)'
  "$PY" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__, "at", llama_cpp.__file__)' 2>&1 | tail -1
}

install_wheels() {
  if "$PY" -c 'import litestar, granian, gguf, pydantic_settings, msgspec' 2>/dev/null; then
    export PYTHONPATH=$ROOT  # PY has what gateway serve needs (a venv here)
  elif [[ -d $PAYLOAD/wheels ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$PAYLOAD"/wheels/*.whl 2>&1 | grep -v "^WARNING: Target directory" | tail -3
    export PYTHONPATH=/tmp/site:$ROOT
  else
    export PYTHONPATH=$ROOT
  fi
}

build() {
  if [[ $GPU_BUILD == skip ]]; then
    echo "GPU_BUILD=skip: using the llama-cpp-python that $PY has"
  else
    if ! ls "$BUILD_DIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
      mkdir -p "$BUILD_DIR"
      local t0=$SECONDS
      CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc} CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON ${EXTRA_CMAKE_ARGS:-}" \
        "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$BUILD_DIR" "$PAYLOAD"/llama_cpp_python-*.tar.gz || return 1
      echo "built $(ls "$BUILD_DIR") in $((SECONDS - t0)) s"
    else
      echo "reusing $(ls "$BUILD_DIR"/llama_cpp_python-*.whl)"
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$BUILD_DIR"/llama_cpp_python-*.whl 2>&1 | grep -v "^WARNING: Target directory" | tail -3
  fi
  "$PY" -c 'from llama_cpp import llama_cpp as c; print("llama_supports_gpu_offload:", c.llama_supports_gpu_offload())'
}

gpu_check() {
  local args="--offload-vram-gib 20 --workdir $WORK --configs $WORK/configs --record $OUT/gpu-check.json"
  if command -v make >/dev/null; then
    make --no-print-directory gpu-check PY="$PY" GPU_CHECK_ARGS="$args"
  else
    "$PY" bench/gpu_check.py $args  # what make gpu-check runs
  fi
}

verify() {
  local rc=0
  for config in "$WORK"/configs/*.toml; do
    [[ -e $config ]] || { echo "no configs: run the gpu-check step first"; return 1; }
    echo "--- gateway plan --config $(basename "$config") --verify"
    timeout 120 "$PY" -m gateway.cli plan --config "$config" --verify || rc=$?
  done
  return $rc
}

concurrency() {
  "$PY" bench/gpu_serve.py --write-model-only "$WORK/served.gguf" --shape "$SHAPE" || return 1
  "$PY" bench/concurrency.py --model "$WORK/served.gguf" --clients "$CLIENTS" --tokens 128 \
    --paths gateway,llama_batch --repeat 1 --no-checks
}

export ROOT OUT PAYLOAD BUILD_DIR WORK PY GPU_BUILD SHAPE CLIENTS
export -f machine build gpu_check verify concurrency
install_wheels
step machine 10 60 machine
step build 420 540 build
# Most wanted first: the memory check, then a served model, then the rest.
step gpu-check 120 300 gpu_check
step serve 60 240 "$PY" bench/gpu_serve.py --out "$OUT" --shape "$SHAPE" --clients "$CLIENTS"
step verify 30 150 verify
step import-order 60 150 "$PY" bench/gpu_import_order.py --out "$OUT" --shape "$SHAPE"
step concurrency 90 300 concurrency
echo "=== done in $((SECONDS - START)) s; results in $OUT"
