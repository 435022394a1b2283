// Pyramid pooling: launches of the passes in device.cuh behind the C ABI of kernel.h.
#include "kernel.h"

#include <algorithm>

#include "../common/launch.cuh"
#include "device.cuh"

namespace {

using namespace edgestack::pyramid_pooling;
using edgestack::kDefaultSmem;

// Beyond the default, the current device's opt-in limit decides (99 KiB on sm_86/89, 163 KiB on sm_80/87,
// 227 KiB on sm_90); the device is only queried then, so small shapes check on a machine without one.
int smem_status(size_t bytes) {
    if (bytes <= kDefaultSmem) return EDGESTACK_OK;
    int device = 0, limit = 0;
    EDGESTACK_RETURN_IF_ERROR(edgestack::cuda_status(cudaGetDevice(&device)));
    EDGESTACK_RETURN_IF_ERROR(
        edgestack::cuda_status(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)));
    return bytes > size_t(limit) ? EDGESTACK_ERR_UNSUPPORTED : EDGESTACK_OK;
}

}  // namespace

extern "C" int edgestack_pyramid_pooling_check(int batch, int channels, int height, int width, int reduced,
                                               const int* bins, int nbins) {
    EDGESTACK_RETURN_IF_ERROR(shape_status(batch, channels, height, width, reduced, bins, nbins));
    const Plan plan = make_plan(batch, channels, height, width, reduced, bins, nbins, 0);
    return smem_status(std::max(plan.pool_copy_smem, plan.upsample_smem));
}

extern "C" size_t edgestack_pyramid_pooling_workspace_size(int batch, int channels, int reduced, const int* bins,
                                                           int nbins) {
    if (!bins || batch < 1 || channels < 1 || reduced < 1 || nbins < 1 || nbins > kMaxBins) return 0;
    const size_t cells = size_t(cells_of(bins, nbins));
    return sizeof(float) * size_t(batch) * cells * (size_t(channels) + size_t(reduced));
}

extern "C" int edgestack_pyramid_pooling(const void* x, const void* weight, const void* bias, void* y,
                                         void* workspace, size_t workspace_bytes, int dtype, int weight_dtype,
                                         int batch, int channels, int height, int width, int reduced,
                                         const int* bins, int nbins, int align_corners, cudaStream_t stream) {
    if (!x || !weight || !bias || !y) return EDGESTACK_ERR_NULL_POINTER;
    EDGESTACK_RETURN_IF_ERROR(shape_status(batch, channels, height, width, reduced, bins, nbins));
    Plan plan = make_plan(batch, channels, height, width, reduced, bins, nbins, align_corners);
    EDGESTACK_RETURN_IF_ERROR(smem_status(std::max(plan.pool_copy_smem, plan.upsample_smem)));
    const size_t needed = edgestack_pyramid_pooling_workspace_size(batch, channels, reduced, bins, nbins);
    if (!workspace || workspace_bytes < needed) return EDGESTACK_ERR_WORKSPACE;

    bind(plan, batch, x, weight, bias, y, workspace);
    return dispatch(plan, dtype, weight_dtype, edgestack::cuda_launcher(stream));
}
