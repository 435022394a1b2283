// Windowed masked attention: launches of the kernels in device.cuh behind the C ABI of kernel.h.
#include "kernel.h"

#include <atomic>

#include "../common/launch.cuh"
#include "device.cuh"

namespace {

// Whether the tensor-core kernel runs here: an sm_80+ device, and code for it built for sm_80+. A library built
// for older targets only (-DEDGESTACK_CUDA_ARCHS=75) holds that kernel as a trap, which an sm_80+ device would
// JIT from compute_75 PTX and run: a sticky error for the whole process. Known per device after its first call; a
// failed query answers no, and the CUDA-core launch that follows reports the error.
bool tensor_cores_usable() {
    constexpr int kDevices = 64;
    static std::atomic<signed char> known[kDevices] = {};  // 0: not asked yet, 1: usable, -1: not
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (device < kDevices && known[device] != 0) return known[device] > 0;
    cudaFuncAttributes compiled{};
    const bool usable =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 8 &&
        cudaFuncGetAttributes(&compiled, edgestack::window_attention::window_attention_tc_kernel<32, 256>) ==
            cudaSuccess &&
        compiled.ptxVersion >= 80;
    if (device < kDevices) known[device] = usable ? 1 : -1;
    return usable;
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
    const bool tensor_cores = dtype == EDGESTACK_FLOAT16 && tensor_cores_usable();
    return wa::dispatch(p, dtype, batch, num_heads, tensor_cores, edgestack::cuda_launcher(stream));
}
