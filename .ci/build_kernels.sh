#!/usr/bin/env bash
# Compile check of the CUDA kernels and TensorRT plugins (no GPU needed; fails on any compile error).
#  1. build/: libedgestack_kernels.so for the full default arch list (what the Python loader picks up).
#  2. build-trt-<version>/: the plugin library against each TensorRT header set in ../shared, with the
#     kernels for one arch only (sm_75): the kernels were already checked for every arch in step 1.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=$(nproc)
trt_headers=${EDGESTACK_TRT_HEADERS:-../shared/third_party/tensorrt}

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"

for version in v10.3.0 v10.16; do
    include="$trt_headers/$version/include"
    if [ ! -f "$include/NvInferRuntime.h" ]; then
        echo "missing TensorRT headers: $include" >&2
        exit 1
    fi
    cmake -S . -B "build-trt-$version" -DCMAKE_BUILD_TYPE=Release -DEDGESTACK_CUDA_ARCHS=75 \
        -DTensorRT_INCLUDE_DIR="$(cd "$include" && pwd)"
    cmake --build "build-trt-$version" -j "$jobs"
done
echo "kernels and plugins built"
