// The pyramid pooling passes on CPU threads (kernels/common/emulate.h), for tests on machines without a GPU:
// same arguments as edgestack_pyramid_pooling in kernel.h, but host pointers and no stream or workspace.
// Built by tests/test_pyramid_pooling.py with the host compiler; not part of the CUDA library.
#include "../common/emulate.h"
#include "device.cuh"

namespace {

using namespace edgestack::pyramid_pooling;
using edgestack::emulate::launch;

template <typename T, typename TW>
void run(const Plan& plan) {
    const Params& p = plan.p;
    launch(pool_copy_kernel<T>, plan.pool_copy_grid, dim3(kThreads), plan.pool_copy_smem, p);
    launch(conv_kernel<TW>, plan.conv_grid, dim3(kThreads), 0, p);
    launch(upsample_kernel<T, TW>, plan.upsample_grid, dim3(kThreads), plan.upsample_smem, p);
}

template <typename T>
void dispatch_weight(const Plan& plan, int weight_dtype) {
    if (weight_dtype == EDGESTACK_FLOAT32) run<T, float>(plan);
    else run<T, __half>(plan);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int edgestack_pyramid_pooling_emulated(
    const void* x, const void* weight, const void* bias, void* y, int dtype, int weight_dtype, int batch,
    int channels, int height, int width, int reduced, const int* bins, int nbins, int align_corners) {
    EDGESTACK_RETURN_IF_ERROR(shape_status(batch, channels, height, width, reduced, bins, nbins));
    for (int d : {dtype, weight_dtype})
        if (d != EDGESTACK_FLOAT32 && d != EDGESTACK_FLOAT16) return EDGESTACK_ERR_BAD_DTYPE;
    Plan plan = make_plan(batch, channels, height, width, reduced, bins, nbins, align_corners);
    std::vector<float> workspace(size_t(batch) * plan.p.cells * (size_t(channels) + reduced), NAN);
    Params& p = plan.p;
    p.x = x;
    p.weight = weight;
    p.bias = bias;
    p.y = y;
    p.pooled = workspace.data();
    p.feat = p.pooled + size_t(batch) * p.cells * channels;
    if (dtype == EDGESTACK_FLOAT32) dispatch_weight<float>(plan, weight_dtype);
    else dispatch_weight<__half>(plan, weight_dtype);
    return EDGESTACK_OK;
}
