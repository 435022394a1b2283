#!/usr/bin/env bash
# One GPU-machine session, from the repository root: build the kernels for sm_90, install the package (no deps),
# GPU tests, MAT-512 fp16 robustness over 100 masks, whole-model benchmarks (eager / CUDA graph, then
# torch.compile of the reference path), then the kernel benchmark if time is left. Each step runs under a
# timeout that keeps the whole session within BUDGET seconds; a failed step does not stop the next.
#   OUT=results/gpu BUDGET=560 bash benchmarks/gpu_session.sh
# Writes to $OUT: session.log, pytest.xml, mat_fp16_robustness.json, models_gpu.{json,md}, kernels.{json,md}.
set -o pipefail
OUT=${OUT:-results/gpu}
BUDGET=${BUDGET:-560}
ARCHS=${ARCHS:-90}
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1
START=$SECONDS

# step NAME MAX_S RESERVE_S COMMAND...: run COMMAND for at most MAX_S seconds, leaving RESERVE_S of the budget.
step() {
  local name=$1 max=$2 reserve=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START) - reserve))
  local limit=$((max < left ? max : left))
  if ((limit < 20)); then
    echo "== $name: skipped, $((BUDGET - (SECONDS - START)))s of the budget left" | tee -a "$LOG"
    return 125
  fi
  echo "== $name (limit ${limit}s) at $((SECONDS - START))s: $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=$?
  echo "== $name: rc=$rc at $((SECONDS - START))s" | tee -a "$LOG"
  return $rc
}

compile_row() {  # compile_row MODEL MAX_S: torch.compile of the reference path, or a recorded skip
  local limit=$2
  step "compile $1" "$limit" 0 python3 benchmarks/models_gpu.py --out "$OUT" --models "$1" --dtypes fp16 \
    --variants compile_reference --runs 30
  local rc=$?
  if ((rc != 0)); then
    python3 benchmarks/models_gpu.py --out "$OUT" --models "$1" --dtypes fp16 --variants compile_reference \
      --skip-reason "torch.compile run did not finish within its ${limit}s limit (rc=$rc)" >>"$LOG" 2>&1
  fi
}

step env 30 0 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -2;
  python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"'
step build 240 300 bash -c "cmake -S . -B build -DEDGESTACK_CUDA_ARCHS=$ARCHS -DCMAKE_BUILD_TYPE=Release >/dev/null \
  && cmake --build build -j 16"
step install 90 280 python3 -m pip install --no-deps --no-build-isolation -q -e .
step import 30 260 python3 -c "from edgestack.kernels import loader; print('kernels library:', loader.library())"
step tests 200 200 python3 -m pytest tests/test_kernels_gpu.py tests/test_models_gpu.py -q -rfEs \
  -p no:cacheprovider -o junit_family=xunit1 --junitxml="$OUT/pytest.xml"
step robustness 100 100 python3 benchmarks/models_gpu.py --out "$OUT" --robustness 100
step models 150 0 python3 benchmarks/models_gpu.py --out "$OUT" --runs 30
compile_row mat-512 130
compile_row pspnet-r50 90
step kernels 150 0 python3 benchmarks/kernels.py --out "$OUT"

{
  echo
  echo "== summary at $((SECONDS - START))s"
  grep -E "passed|failed|error" "$LOG" | grep -E "^[0-9=]" | tail -2
  grep -E "^mat-[a-z0-9]+ fp16 on" "$LOG" | tail -1
  cat "$OUT/models_gpu.md" 2>/dev/null
  cat "$OUT/kernels.md" 2>/dev/null
} | tee -a "$LOG"
