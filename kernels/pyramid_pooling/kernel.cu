// Pyramid pooling: launches of the passes in device.cuh behind the C ABI of kernel.h.
#include "kernel.h"

#include <algorithm>

#include "device.cuh"

namespace {

using namespace edgestack::pyramid_pooling;

constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory a launch gets without opting in

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

// Opt in where a pass needs more than the default (smem_status has held `bytes` to the device's limit).
template <typename Kernel>
int prepare_smem(Kernel kernel, size_t bytes) {
    if (bytes <= kDefaultSmem) return EDGESTACK_OK;
    return edgestack::cuda_status(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <typename T, typename TW>
int run(const Plan& plan, cudaStream_t stream) {
    const Params& p = plan.p;
    EDGESTACK_RETURN_IF_ERROR(prepare_smem(pool_copy_kernel<T>, plan.pool_copy_smem));
    pool_copy_kernel<T><<<plan.pool_copy_grid, kThreads, plan.pool_copy_smem, stream>>>(p);
    EDGESTACK_RETURN_IF_ERROR(edgestack::launch_status());

    conv_kernel<TW><<<plan.conv_grid, kThreads, 0, stream>>>(p);
    EDGESTACK_RETURN_IF_ERROR(edgestack::launch_status());

    EDGESTACK_RETURN_IF_ERROR(prepare_smem(upsample_kernel<T, TW>, plan.upsample_smem));
    upsample_kernel<T, TW><<<plan.upsample_grid, kThreads, plan.upsample_smem, stream>>>(p);
    return edgestack::launch_status();
}

template <typename T>
int dispatch_weight(const Plan& plan, int weight_dtype, cudaStream_t stream) {
    switch (weight_dtype) {
        case EDGESTACK_FLOAT32: return run<T, float>(plan, stream);
        case EDGESTACK_FLOAT16: return run<T, __half>(plan, stream);
        default: return EDGESTACK_ERR_BAD_DTYPE;
    }
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

    Params& p = plan.p;
    p.x = x;
    p.weight = weight;
    p.bias = bias;
    p.y = y;
    p.pooled = static_cast<float*>(workspace);
    p.feat = p.pooled + size_t(batch) * p.cells * channels;
    switch (dtype) {
        case EDGESTACK_FLOAT32: return dispatch_weight<float>(plan, weight_dtype, stream);
        case EDGESTACK_FLOAT16: return dispatch_weight<__half>(plan, weight_dtype, stream);
        default: return EDGESTACK_ERR_BAD_DTYPE;
    }
}
