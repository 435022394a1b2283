// Load/store helpers so kernels template on the storage type and compute in float, and the block's
// dynamic shared memory.
#pragma once

#include <cuda_fp16.h>

namespace edgestack {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// Kernels take their dynamic shared memory from here, not from their own `extern __shared__` array: the
// CPU emulator (emulate.h) provides this buffer instead.
#ifndef EDGESTACK_EMULATE
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
    extern __shared__ float4 dynamic_smem_storage[];
    return reinterpret_cast<T*>(dynamic_smem_storage);
}
#endif

}  // namespace edgestack
