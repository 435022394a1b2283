// Status codes shared by every edgestack kernel entry point (C ABI).
#pragma once

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGESTACK_API __attribute__((visibility("default")))

// 0 is success; codes >= EDGESTACK_CUDA_ERROR_BASE carry a cudaError_t (code - base).
enum EdgestackStatus {
    EDGESTACK_OK = 0,
    EDGESTACK_ERR_NULL_POINTER = 1,
    EDGESTACK_ERR_BAD_SHAPE = 2,
    EDGESTACK_ERR_BAD_DTYPE = 3,
    EDGESTACK_ERR_UNSUPPORTED = 4,
    EDGESTACK_ERR_WORKSPACE = 5,
    EDGESTACK_CUDA_ERROR_BASE = 1000,
};

// Element types of tensors crossing the C ABI.
enum EdgestackDtype { EDGESTACK_FLOAT32 = 0, EDGESTACK_FLOAT16 = 1 };

// Static, human-readable text for any status code (CUDA errors via cudaGetErrorString).
EDGESTACK_API const char* edgestack_status_string(int status);

#ifdef __cplusplus
}

namespace edgestack {

inline int cuda_status(cudaError_t err) { return err == cudaSuccess ? EDGESTACK_OK : EDGESTACK_CUDA_ERROR_BASE + int(err); }

// Status of the launch just issued (configuration errors surface here, not at the next sync).
inline int launch_status() { return cuda_status(cudaGetLastError()); }

}  // namespace edgestack

#define EDGESTACK_RETURN_IF_ERROR(expr)      \
    do {                                     \
        const int status_ = (expr);          \
        if (status_ != EDGESTACK_OK) return status_; \
    } while (0)
#endif
