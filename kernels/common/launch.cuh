// How kernel.cu runs what an op's device.cuh dispatch picks: `launch(kernel, grid, block, smem_bytes, args...)`
// returns a status. emulate.h has the CPU-thread counterpart with the same signature.
#pragma once

#include "status.h"

namespace edgestack {

constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory a launch gets without opting in

// Launches on `stream`, opting in first where a kernel needs more than the default dynamic shared memory
// (the op's check has held that to the device's limit).
inline auto cuda_launcher(cudaStream_t stream) {
    return [stream](auto kernel, dim3 grid, dim3 block, size_t smem_bytes, const auto&... args) -> int {
        if (smem_bytes > kDefaultSmem)
            EDGESTACK_RETURN_IF_ERROR(cuda_status(
                cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes))));
        kernel<<<grid, block, smem_bytes, stream>>>(args...);
        return launch_status();
    };
}

}  // namespace edgestack
