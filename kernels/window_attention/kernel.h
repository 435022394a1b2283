// Windowed masked attention (MAT's multi-head contextual attention) as one CUDA kernel, C ABI.
//
// q, k, v, out: [B, H, W, C]; mask, mask_out: [B, H, W, 1]; all contiguous, one dtype
// (EDGESTACK_FLOAT32 or EDGESTACK_FLOAT16), device pointers. Math: see kernels/window_attention/README.md
// and reference.py. scale <= 0 means head_dim^-0.5. Work is queued on `stream`; returns an EdgestackStatus.
// Limits: head_dim = C / num_heads <= 64 (EDGESTACK_ERR_UNSUPPORTED beyond); any window size.
#pragma once

#include "../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Shape/attribute check alone (no launch): EDGESTACK_OK or the status the launch would return.
EDGESTACK_API int edgestack_window_attention_check(int batch, int height, int width, int channels, int num_heads,
                                                   int window_size, int shift_size);

EDGESTACK_API int edgestack_window_attention(const void* q, const void* k, const void* v, const void* mask, void* out,
                                             void* mask_out, int dtype, int batch, int height, int width,
                                             int channels, int num_heads, int window_size, int shift_size, float scale,
                                             float masked_bias, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
