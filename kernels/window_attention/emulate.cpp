// The window attention kernels on CPU threads (kernels/common/emulate.h), for tests on machines without a GPU:
// same arguments as edgestack_window_attention in kernel.h, but host pointers, no stream, and `tensor_cores`
// choosing what the device would (1: the tensor-core kernel where the shape allows it, as on sm_80+).
// Built by tests/test_window_attention.py with the host compiler; not part of the CUDA library.
#include "../common/emulate.h"
#include "device.cuh"

extern "C" __attribute__((visibility("default"))) int edgestack_window_attention_emulated(
    const void* q, const void* k, const void* v, const void* mask, void* out, void* mask_out, int dtype, int batch,
    int height, int width, int channels, int num_heads, int window_size, int shift_size, float scale,
    float masked_bias, int tensor_cores) {
    namespace wa = edgestack::window_attention;
    EDGESTACK_RETURN_IF_ERROR(wa::shape_status(batch, height, width, channels, num_heads, window_size, shift_size));
    const wa::Params p = wa::make_params(q, k, v, mask, out, mask_out, height, width, channels, num_heads,
                                         window_size, shift_size, scale, masked_bias);
    return wa::dispatch(p, dtype, batch, num_heads, tensor_cores != 0, edgestack::emulate::launcher());
}
