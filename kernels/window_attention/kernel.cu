// Windowed masked attention: launches of the kernels in device.cuh behind the C ABI of kernel.h.
#include "kernel.h"

#include "../common/launch.cuh"
#include "device.cuh"

namespace {

// A failed device query answers no: the CUDA-core launch that follows reports the error.
bool device_has_tensor_cores() {
    int device = 0, major = 0;
    return cudaGetDevice(&device) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 8;
}

}  // namespace

extern "C" int edgestack_window_attention_check(int batch, int height, int width, int channels, int num_heads,
                                                int window_size, int shift_size) {
    return edgestack::window_attention::shape_status(batch, height, width, channels, num_heads, window_size,
                                                     shift_size);
}

extern "C" int edgestack_window_attention(const void* q, const void* k, const void* v, const void* mask, void* out,
                                          void* mask_out, int dtype, int batch, int height, int width, int channels,
                                          int num_heads, int window_size, int shift_size, float scale,
                                          float masked_bias, cudaStream_t stream) {
    namespace wa = edgestack::window_attention;
    if (!q || !k || !v || !mask || !out || !mask_out) return EDGESTACK_ERR_NULL_POINTER;
    EDGESTACK_RETURN_IF_ERROR(wa::shape_status(batch, height, width, channels, num_heads, window_size, shift_size));
    const wa::Params p = wa::make_params(q, k, v, mask, out, mask_out, height, width, channels, num_heads,
                                         window_size, shift_size, scale, masked_bias);
    const bool tensor_cores = dtype == EDGESTACK_FLOAT16 && device_has_tensor_cores();
    return wa::dispatch(p, dtype, batch, num_heads, tensor_cores, edgestack::cuda_launcher(stream));
}
