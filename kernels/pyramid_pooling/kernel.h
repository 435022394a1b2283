// PSPNet pyramid pooling as three CUDA passes, C ABI.
//
// x: [B, C, H, W]; weight: [nbins, R, C]; bias: [nbins, R]; y: [B, C + nbins*R, H, W]; all contiguous device
// pointers. x and y share `dtype`, weight and bias share `weight_dtype` (EDGESTACK_FLOAT32 / EDGESTACK_FLOAT16).
// bins: host array of nbins bin sizes. workspace: device memory of at least
// edgestack_pyramid_pooling_workspace_size(...) bytes. Work is queued on `stream`; returns an EdgestackStatus.
// Limits: nbins <= 8, sum(bins) <= 32, and W small enough that the per-plane column sums and interpolated rows
// fit in the current device's shared memory (for bins 1,2,3,6 about W <= 1100 within the default 48 KiB, and
// several thousand where the device allows more); EDGESTACK_ERR_UNSUPPORTED beyond, from the check as well.
#pragma once

#include <stddef.h>

#include "../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

// Shape/attribute check alone (no launch): EDGESTACK_OK or the status the launch would return.
EDGESTACK_API int edgestack_pyramid_pooling_check(int batch, int channels, int height, int width, int reduced,
                                                  const int* bins, int nbins);

EDGESTACK_API size_t edgestack_pyramid_pooling_workspace_size(int batch, int channels, int reduced, const int* bins,
                                                              int nbins);

EDGESTACK_API int edgestack_pyramid_pooling(const void* x, const void* weight, const void* bias, void* y,
                                            void* workspace, size_t workspace_bytes, int dtype, int weight_dtype,
                                            int batch, int channels, int height, int width, int reduced,
                                            const int* bins, int nbins, int align_corners, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
