#!/usr/bin/env bash
# Compile check of the CUDA kernels and TensorRT plugins (no GPU needed; fails on any compile error).
#  1. build/: libedgestack_kernels.so for the full default arch list (what the Python loader picks up).
#  2. ci-trt-<version>/: the plugin library against each TensorRT header set in ../shared, with the
#     kernels for one arch only (sm_75): the kernels were already checked for every arch in step 1. Not named
#     build-*: the runtime looks for the kernels and plugins there, and must not run these compile checks.
#  3. ci-trt-v10.16-sanitized/: the same with the plugins' host code and their check program under ASan and
#     UBSan, so tests/test_trt_plugins_host.py also drives them where an overflow or a misaligned read stops.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=$(nproc)
rm -rf build-trt-*  # the compile checks' earlier folders: the runtime would take their sm_75-only libraries
trt_headers=${EDGESTACK_TRT_HEADERS:-../shared/third_party/tensorrt}

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"

for version in v10.3.0 v10.16; do
    include="$trt_headers/$version/include"
    if [ ! -f "$include/NvInferRuntime.h" ]; then
        echo "missing TensorRT headers: $include" >&2
        exit 1
    fi
    cmake -S . -B "ci-trt-$version" -DCMAKE_BUILD_TYPE=Release -DEDGESTACK_CUDA_ARCHS=75 \
        -DTensorRT_INCLUDE_DIR="$(cd "$include" && pwd)"
    cmake --build "ci-trt-$version" -j "$jobs"
done
cmake -S . -B ci-trt-v10.16-sanitized -DCMAKE_BUILD_TYPE=Release -DEDGESTACK_CUDA_ARCHS=75 \
    -DTensorRT_INCLUDE_DIR="$(cd "$trt_headers/v10.16/include" && pwd)" -DEDGESTACK_SANITIZE=address,undefined
cmake --build ci-trt-v10.16-sanitized -j "$jobs"
echo "kernels and plugins built"
