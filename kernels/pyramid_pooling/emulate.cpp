// The pyramid pooling passes on CPU threads (kernels/common/emulate.h), for tests on machines without a GPU:
// same arguments as edgestack_pyramid_pooling in kernel.h, but host pointers and no stream or workspace.
// Built by tests/test_pyramid_pooling.py with the host compiler; not part of the CUDA library.
#include "../common/emulate.h"
#include "device.cuh"

using namespace edgestack::pyramid_pooling;

extern "C" __attribute__((visibility("default"))) int edgestack_pyramid_pooling_emulated(
    const void* x, const void* weight, const void* bias, void* y, int dtype, int weight_dtype, int batch,
    int channels, int height, int width, int reduced, const int* bins, int nbins, int align_corners) {
    EDGESTACK_RETURN_IF_ERROR(shape_status(batch, channels, height, width, reduced, bins, nbins));
    Plan plan = make_plan(batch, channels, height, width, reduced, bins, nbins, align_corners);
    std::vector<float> workspace(size_t(batch) * plan.p.cells * (size_t(channels) + reduced), NAN);
    bind(plan, batch, x, weight, bias, y, workspace.data());
    return dispatch(plan, dtype, weight_dtype, edgestack::emulate::launcher());
}
