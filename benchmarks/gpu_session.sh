#!/usr/bin/env bash
# One GPU-machine session, from the repository root, within BUDGET seconds:
#   untimed: install (no deps), build the kernels for ARCHS, GPU tests, compute-sanitizer memcheck of the kernel
#            tests on small shapes, one Nsight Compute pass over the benchmark kernels, and in the background
#            (VGLAW_EPOCHS > 0) vglaw-s and vglaw-s-static trained side by side with the same budget,
#            (DEFECTSEG_EPOCHS > 0) DEFECTSEG_CONFIG (defectseg-s) trained with DEFECTSEG_ARGS (fine-tuned
#            from its shipped weights by default; e.g. DEFECTSEG_CONFIG=defectseg-m DEFECTSEG_ARGS="--size 256
#            --synthetic-count 12000 --batch-size 32 --lr 2e-3 --bf16" trains defectseg-m from scratch);
#   timed, once the GPU is otherwise idle: kernel benchmark, whole-model benchmark (fp16), MAT fp16 robustness
#            over 100 masks, torch.compile rows if time is left.
# Each step runs under a timeout that keeps the whole session within BUDGET; a failed step does not stop the next.
#   OUT=results/gpu BUDGET=560 VGLAW_EPOCHS=40 bash benchmarks/gpu_session.sh
#   OUT=... BUDGET=560 DEFECTSEG_EPOCHS=60 bash benchmarks/gpu_session.sh, carrying .whl/ with the pysodmetrics
#     wheel its validation needs (not in the GPU image): pip download --no-deps --only-binary=:all: -d .whl
#     pysodmetrics==1.6.2
#   OUT=... BUDGET=420 QUICK=1 NCU_KERNELS=window_attention bash benchmarks/gpu_session.sh
#     after a kernel change: no training and no torch.compile model rows, the kernel benchmark right after the
#     tests (about 7 minutes; give the device call a timeout of BUDGET + 60 s, so the final tar runs)
# Writes to $OUT: session.log, results.tgz (pytest.xml, memcheck.log, ncu.txt, kernels.*, models_gpu.*,
# mat_fp16_robustness.json, training logs/summaries/curves) and, when trained, vglaw-s.pt / vglaw-s-static.pt /
# $DEFECTSEG_CONFIG.pt (best checkpoint, fp16 weights, no optimizer state: what `train.loop.ship_weights` takes).
set -o pipefail
OUT=${OUT:-results/gpu}
BUDGET=${BUDGET:-560}
ARCHS=${ARCHS:-90}
VGLAW_EPOCHS=${VGLAW_EPOCHS:-0}
VGLAW_ARGS=${VGLAW_ARGS:---synthetic-count 12000 --batch-size 64 --lr 5e-4}
DEFECTSEG_EPOCHS=${DEFECTSEG_EPOCHS:-0}
DEFECTSEG_CONFIG=${DEFECTSEG_CONFIG:-defectseg-s}
DEFECTSEG_ARGS=${DEFECTSEG_ARGS:---size 256 --synthetic-count 12000 --batch-size 32 --lr 1e-3 --init shipped}
TRAIN_LIMIT=${TRAIN_LIMIT:-300}
WORK=${WORK:-$(mktemp -d /tmp/edgestack-gpu.XXXX)}  # fresh: a skipped step must not leave an earlier run's file
QUICK=${QUICK:-0}
NCU_KERNELS=${NCU_KERNELS:-window_attention|pool|conv|upsample}
if ((QUICK)); then VGLAW_EPOCHS=0 DEFECTSEG_EPOCHS=0; fi
mkdir -p "$OUT" "$WORK"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1
START=$SECONDS

# step NAME MAX_S RESERVE_S COMMAND...: run COMMAND for at most MAX_S seconds, leaving RESERVE_S of the budget.
step() {
  local name=$1 max=$2 reserve=$3
  shift 3
  if ((QUICK)); then reserve=0; fi
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
  step "compile $1" "$limit" 0 python3 benchmarks/models_gpu.py --out "$WORK" --models "$1" --dtypes fp16 \
    --variants compile_reference --runs 30
  local rc=$?
  if ((rc != 0)); then
    python3 benchmarks/models_gpu.py --out "$WORK" --models "$1" --dtypes fp16 --variants compile_reference \
      --skip-reason "torch.compile run did not finish within its ${limit}s limit (rc=$rc)" >>"$LOG" 2>&1
  fi
}

train_on_gpu() {  # train_on_gpu CONFIG EPOCHS WORKERS ARGS...: GPU training, then the best checkpoint slimmed
  local config=$1 epochs=$2 workers=$3  # into $OUT
  shift 3
  timeout "$TRAIN_LIMIT" python3 -m edgestack train "$config" --data synthetic --epochs "$epochs" "$@" \
    --workers "$workers" --threads 1 --device cuda --out "$WORK/$config" >"$WORK/train-$config.log" 2>&1
  echo "$config training rc=$?" >>"$WORK/train-$config.log"
  python3 - "$WORK/$config/best.pt" "$OUT/$config.pt" >>"$WORK/train-$config.log" 2>&1 <<'PY'
import sys, torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
for key in ("optimizer", "scheduler"):
    state.pop(key)
state["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in state["state_dict"].items()}
torch.save(state, sys.argv[2])
print("slimmed", sys.argv[1], "epoch", state["epoch"], state["metrics"])
PY
}

step env 30 0 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvcc --version | tail -2;
  python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"'
step install 90 400 python3 -m pip install --no-deps --no-build-isolation -q -e .
TRAIN_PIDS=()
if ((VGLAW_EPOCHS > 0)); then
  echo "== vglaw: training vglaw-s and vglaw-s-static in the background at $((SECONDS - START))s" | tee -a "$LOG"
  for config in vglaw-s vglaw-s-static; do
    train_on_gpu "$config" "$VGLAW_EPOCHS" 5 $VGLAW_ARGS &
    TRAIN_PIDS+=($!)
  done
fi
if ((DEFECTSEG_EPOCHS > 0)); then
  # pysodmetrics (its validation metrics) is not in the GPU image: install the carried wheel beside the checkout.
  step pysodmetrics 60 400 python3 -m pip install --no-deps -q --target "$WORK/site" .whl/pysodmetrics-*.whl
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  echo "== defectseg: training $DEFECTSEG_CONFIG in the background at $((SECONDS - START))s" | tee -a "$LOG"
  train_on_gpu "$DEFECTSEG_CONFIG" "$DEFECTSEG_EPOCHS" 5 $DEFECTSEG_ARGS &
  TRAIN_PIDS+=($!)
fi
step build 180 350 bash -c "cmake -S . -B build -DEDGESTACK_CUDA_ARCHS=$ARCHS -DCMAKE_BUILD_TYPE=Release >/dev/null \
  && cmake --build build -j 8"
step import 30 330 python3 -c "from edgestack.kernels import loader; print('kernels library:', loader.library())"
step tests 150 280 python3 -m pytest tests/test_kernels_gpu.py tests/test_models_gpu.py \
  tests/test_detector.py::test_nms_on_cuda_tensors_gives_the_hosts_detections_on_the_device -q -rfEs \
  -p no:cacheprovider -o junit_family=xunit1 --junitxml="$WORK/pytest.xml"
if ((QUICK)); then  # nothing trains beside it: the GPU is idle now, and the benchmark is what a quick session is for
  step kernels 120 0 python3 benchmarks/kernels.py --out "$WORK"
fi
# Small shapes only: the sanitizer instruments every kernel, torch's float64 references included. Without torch's
# caching allocator, which hands small tensors out of shared 2 MiB blocks where a write past the end looks valid.
step memcheck 120 240 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
  --log-file "$WORK/memcheck.log" python3 -m pytest tests/test_kernels_gpu.py -q -p no:cacheprovider \
  -k "not (pyramid_pooling_matches_reference and (shape0 or shape1))"
step ncu 60 220 bash -c "ncu --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis -k regex:'$NCU_KERNELS' \
  python3 benchmarks/kernels.py --profile >$WORK/ncu.txt 2>&1; rc=\$?; tail -5 $WORK/ncu.txt; exit \$rc"
if ((${#TRAIN_PIDS[@]})); then
  echo "== training: waiting at $((SECONDS - START))s" | tee -a "$LOG"
  wait "${TRAIN_PIDS[@]}"
  grep -hE "^(data|epoch [0-9]+:|trained|[a-z0-9-]+ training rc|slimmed)" "$WORK"/train-*.log | tee -a "$LOG"
fi
if ((!QUICK)); then
  step kernels 120 130 python3 benchmarks/kernels.py --out "$WORK"
fi
step models 100 40 python3 benchmarks/models_gpu.py --out "$WORK" --dtypes fp16 --runs 30
step robustness 40 0 python3 benchmarks/models_gpu.py --out "$WORK" --robustness 100
if ((!QUICK)); then
  compile_row pspnet-r50 90
  compile_row mat-512 130
fi

{
  echo
  echo "== summary at $((SECONDS - START))s"
  grep -E "[0-9]+ (passed|failed)" "$LOG" | tail -2
  grep -E "ERROR SUMMARY" "$WORK/memcheck.log" 2>/dev/null | tail -1
  grep -E "^mat-[a-z0-9]+ fp16 on" "$LOG" | tail -1
  cat "$WORK/models_gpu.md" "$WORK/kernels.md" 2>/dev/null
} | tee -a "$LOG"
tar -czf "$OUT/results.tgz" -C "$WORK" --exclude='*.pt' --exclude='*.so' $(cd "$WORK" && ls)
