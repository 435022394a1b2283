#include "status.h"

extern "C" const char* edgestack_status_string(int status) {
    switch (status) {
        case EDGESTACK_OK: return "ok";
        case EDGESTACK_ERR_NULL_POINTER: return "a required pointer is null";
        case EDGESTACK_ERR_BAD_SHAPE: return "tensor shapes or attributes violate the op's contract";
        case EDGESTACK_ERR_BAD_DTYPE: return "unsupported dtype (float32 and float16 only)";
        case EDGESTACK_ERR_UNSUPPORTED: return "shape outside what this kernel implements (see kernel.h limits)";
        case EDGESTACK_ERR_WORKSPACE: return "workspace missing or smaller than the size the op asked for";
        default: break;
    }
    if (status >= EDGESTACK_CUDA_ERROR_BASE) return cudaGetErrorString(cudaError_t(status - EDGESTACK_CUDA_ERROR_BASE));
    return "unknown edgestack status";
}
