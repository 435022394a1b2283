// Windowed masked attention in one pass: cyclic shift, window partition, q k^T, region and key-mask
// biases, softmax, attn v, window reverse and the mask update. One block per (window, head, query chunk);
// KS adjacent lanes share one query and split its keys, each keeping an online-softmax state in registers,
// merged with warp shuffles at the end. Keys and values stream through shared memory in tiles of 64, so
// any window size works. The shift is index arithmetic on loads and stores: no rolled copies.
#include "kernel.h"

#include <cmath>
#include <cstdint>

#include "../common/dtype.cuh"

namespace {

using edgestack::from_float;
using edgestack::to_float;

constexpr int kThreads = 256;
constexpr int kKeyTile = 64;
constexpr float kLog2e = 1.4426950408889634f;

struct Params {
    const void* q;
    const void* k;
    const void* v;
    const void* mask;
    void* out;
    void* mask_out;
    int height, width, channels, head_dim, window, shift, tokens, windows_w, windows_per_image;
    float scale_log2;  // scale * log2(e): scores live in base 2 so exp2f does the softmax
    float bias_log2;   // masked_bias * log2(e)
};

// Token `t` of window `win` (shifted frame) -> its element index in the un-shifted [B, H, W] grid.
// The same index serves loads and stores: roll(-shift) before partition, roll(+shift) after reverse.
__device__ __forceinline__ int64_t token_index(const Params& p, int image, int win, int t) {
    int row = (win / p.windows_w) * p.window + t / p.window + p.shift;
    int col = (win % p.windows_w) * p.window + t % p.window + p.shift;
    row -= row >= p.height ? p.height : 0;
    col -= col >= p.width ? p.width : 0;
    return (int64_t(image) * p.height + row) * p.width + col;
}

// Swin's shifted-window region of token `t` (3x3 grid of regions in the shifted frame).
__device__ __forceinline__ int token_region(const Params& p, int win, int t) {
    const int row = (win / p.windows_w) * p.window + t / p.window;
    const int col = (win % p.windows_w) * p.window + t % p.window;
    const int r = (row >= p.height - p.window) + (row >= p.height - p.shift);
    const int c = (col >= p.width - p.window) + (col >= p.width - p.shift);
    return r * 3 + c;
}

// D: head_dim padded to a multiple of 16 (zeros in the pad); KS: lanes per query.
template <typename T, int D, int KS>
__global__ void __launch_bounds__(kThreads) window_attention_kernel(const Params p) {
    constexpr int kQueries = kThreads / KS;
    constexpr int kKeysPerLane = kKeyTile / KS;
    constexpr int kGroup = kKeysPerLane < 8 ? kKeysPerLane : 8;
    constexpr int kLd = D + 4;  // row pitch: keeps float4 alignment, spreads KS rows over distinct banks
    __shared__ __align__(16) float ks[kKeyTile][kLd];
    __shared__ __align__(16) float vs[kKeyTile][kLd];
    __shared__ int64_t key_index[kKeyTile];
    __shared__ float key_bias[kKeyTile];
    __shared__ int key_region[kKeyTile];
    __shared__ float window_valid;

    const T* q = static_cast<const T*>(p.q);
    const T* k = static_cast<const T*>(p.k);
    const T* v = static_cast<const T*>(p.v);
    const T* mask = static_cast<const T*>(p.mask);
    const int image = blockIdx.x / p.windows_per_image;
    const int win = blockIdx.x % p.windows_per_image;
    const int head_offset = blockIdx.y * p.head_dim;
    const int query = blockIdx.z * kQueries + threadIdx.x / KS;
    const int lane_key = threadIdx.x % KS;
    const bool has_query = query < p.tokens;
    const bool shifted = p.shift > 0;

    // Lanes without a query run along with zeros: every lane must reach the barriers and shuffles.
    const int64_t q_index = has_query ? token_index(p, image, win, query) : 0;
    const int q_region = has_query && shifted ? token_region(p, win, query) : 0;
    float qr[D];
    float acc[D];
#pragma unroll
    for (int c = 0; c < D; ++c) {
        const bool inside = has_query && c < p.head_dim;
        qr[c] = inside ? to_float(q[q_index * p.channels + head_offset + c]) * p.scale_log2 : 0.f;
        acc[c] = 0.f;
    }
    float m = -INFINITY;  // running max of this lane's scores
    float l = 0.f;        // running sum of exp2(score - m)

    for (int base = 0; base < p.tokens; base += kKeyTile) {
        const int n_keys = min(kKeyTile, p.tokens - base);
        __syncthreads();  // previous tile fully consumed
        for (int j = threadIdx.x; j < n_keys; j += kThreads) {
            const int64_t index = token_index(p, image, win, base + j);
            key_index[j] = index;
            key_bias[j] = to_float(mask[index]) == 0.f ? p.bias_log2 : 0.f;
            key_region[j] = shifted ? token_region(p, win, base + j) : 0;
        }
        __syncthreads();
#pragma unroll 2
        for (int e = threadIdx.x; e < kKeyTile * D; e += kThreads) {
            const int j = e / D;
            const int c = e % D;
            float kv = 0.f, vv = 0.f;
            if (j < n_keys && c < p.head_dim) {
                const int64_t offset = key_index[j] * p.channels + head_offset + c;
                kv = to_float(k[offset]);
                vv = to_float(v[offset]);
            }
            ks[j][c] = kv;
            vs[j][c] = vv;
        }
        __syncthreads();

        // Scores in groups of 8 keys per lane: one rescale of acc per group, few live registers.
#pragma unroll 1
        for (int g = 0; g < kKeysPerLane; g += kGroup) {
            float s[kGroup];
            float group_max = -INFINITY;
#pragma unroll
            for (int i = 0; i < kGroup; ++i) {
                const int j = lane_key + (g + i) * KS;
                const float4* kr = reinterpret_cast<const float4*>(ks[j]);
                float dot = 0.f;
#pragma unroll
                for (int c4 = 0; c4 < D / 4; ++c4) {
                    const float4 kk = kr[c4];
                    dot = fmaf(qr[4 * c4], kk.x, dot);
                    dot = fmaf(qr[4 * c4 + 1], kk.y, dot);
                    dot = fmaf(qr[4 * c4 + 2], kk.z, dot);
                    dot = fmaf(qr[4 * c4 + 3], kk.w, dot);
                }
                const float region_bias = key_region[j] != q_region ? p.bias_log2 : 0.f;
                s[i] = j < n_keys ? dot + key_bias[j] + region_bias : -INFINITY;
                group_max = fmaxf(group_max, s[i]);
            }
            const float m_new = fmaxf(m, group_max);
            if (m_new == -INFINITY) continue;  // no key for this lane in the group (tiny windows only)
            const float correction = exp2f(m - m_new);
            m = m_new;
            l *= correction;
#pragma unroll
            for (int c = 0; c < D; ++c) acc[c] *= correction;
#pragma unroll
            for (int i = 0; i < kGroup; ++i) {
                const float weight = exp2f(s[i] - m);
                l += weight;
                const float4* vr = reinterpret_cast<const float4*>(vs[lane_key + (g + i) * KS]);
#pragma unroll
                for (int c4 = 0; c4 < D / 4; ++c4) {
                    const float4 vv = vr[c4];
                    acc[4 * c4] = fmaf(weight, vv.x, acc[4 * c4]);
                    acc[4 * c4 + 1] = fmaf(weight, vv.y, acc[4 * c4 + 1]);
                    acc[4 * c4 + 2] = fmaf(weight, vv.z, acc[4 * c4 + 2]);
                    acc[4 * c4 + 3] = fmaf(weight, vv.w, acc[4 * c4 + 3]);
                }
            }
        }
    }

    // Merge the KS partial softmax states of one query (adjacent lanes).
#pragma unroll 1
    for (int offset = 1; offset < KS; offset <<= 1) {
        const float m_other = __shfl_xor_sync(0xffffffffu, m, offset);
        const float l_other = __shfl_xor_sync(0xffffffffu, l, offset);
        const float m_new = fmaxf(m, m_other);
        const float own = m_new == -INFINITY ? 0.f : exp2f(m - m_new);
        const float other = m_new == -INFINITY ? 0.f : exp2f(m_other - m_new);
        l = l * own + l_other * other;
#pragma unroll
        for (int c = 0; c < D; ++c) acc[c] = acc[c] * own + __shfl_xor_sync(0xffffffffu, acc[c], offset) * other;
        m = m_new;
    }
    if (has_query) {
        T* out = static_cast<T*>(p.out) + q_index * p.channels + head_offset;
        const float inv = 1.f / l;
#pragma unroll
        for (int c = 0; c < D; ++c) {
            if (c % KS == lane_key && c < p.head_dim) out[c] = from_float<T>(acc[c] * inv);
        }
    }

    // mask_out = clamp(sum of the window's mask, 0, 1) on every token: once per window (head 0, chunk 0).
    if (blockIdx.y == 0 && blockIdx.z == 0) {
        if (threadIdx.x < 32) {
            float sum = 0.f;
            for (int t = threadIdx.x; t < p.tokens; t += 32) sum += to_float(mask[token_index(p, image, win, t)]);
            for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
            if (threadIdx.x == 0) window_valid = fminf(fmaxf(sum, 0.f), 1.f);
        }
        __syncthreads();
        T* mask_out = static_cast<T*>(p.mask_out);
        for (int t = threadIdx.x; t < p.tokens; t += kThreads)
            mask_out[token_index(p, image, win, t)] = from_float<T>(window_valid);
    }
}

template <typename T, int D>
int launch(const Params& p, int batch, int num_heads, cudaStream_t stream) {
    // Few keys per window: 4 lanes per query keep the merge cheap; larger windows split keys 8 ways.
    const dim3 grid_base(unsigned(batch) * p.windows_per_image, num_heads, 1);
    if (p.tokens <= 64) {
        const dim3 grid(grid_base.x, grid_base.y, (p.tokens + kThreads / 4 - 1) / (kThreads / 4));
        window_attention_kernel<T, D, 4><<<grid, kThreads, 0, stream>>>(p);
    } else {
        const dim3 grid(grid_base.x, grid_base.y, (p.tokens + kThreads / 8 - 1) / (kThreads / 8));
        window_attention_kernel<T, D, 8><<<grid, kThreads, 0, stream>>>(p);
    }
    return edgestack::launch_status();
}

template <typename T>
int dispatch_head_dim(const Params& p, int batch, int num_heads, cudaStream_t stream) {
    if (p.head_dim <= 16) return launch<T, 16>(p, batch, num_heads, stream);
    if (p.head_dim <= 32) return launch<T, 32>(p, batch, num_heads, stream);
    return launch<T, 64>(p, batch, num_heads, stream);
}

}  // namespace

extern "C" int edgestack_window_attention_check(int batch, int height, int width, int channels, int num_heads,
                                                int window_size, int shift_size) {
    if (batch < 1 || height < 1 || width < 1 || channels < 1 || num_heads < 1 || window_size < 1)
        return EDGESTACK_ERR_BAD_SHAPE;
    if (channels % num_heads || height % window_size || width % window_size) return EDGESTACK_ERR_BAD_SHAPE;
    if (shift_size < 0 || shift_size >= window_size) return EDGESTACK_ERR_BAD_SHAPE;
    if (channels / num_heads > 64) return EDGESTACK_ERR_UNSUPPORTED;
    const int64_t windows = int64_t(batch) * (height / window_size) * (width / window_size);
    const int64_t elements = int64_t(batch) * height * width * channels;
    if (windows > INT32_MAX || num_heads > 65535 || int64_t(window_size) * window_size > 65535 * 32 ||
        elements > INT64_MAX / 2)
        return EDGESTACK_ERR_UNSUPPORTED;
    return EDGESTACK_OK;
}

extern "C" int edgestack_window_attention(const void* q, const void* k, const void* v, const void* mask, void* out,
                                          void* mask_out, int dtype, int batch, int height, int width, int channels,
                                          int num_heads, int window_size, int shift_size, float scale,
                                          float masked_bias, cudaStream_t stream) {
    if (!q || !k || !v || !mask || !out || !mask_out) return EDGESTACK_ERR_NULL_POINTER;
    EDGESTACK_RETURN_IF_ERROR(
        edgestack_window_attention_check(batch, height, width, channels, num_heads, window_size, shift_size));
    Params p{};
    p.q = q;
    p.k = k;
    p.v = v;
    p.mask = mask;
    p.out = out;
    p.mask_out = mask_out;
    p.height = height;
    p.width = width;
    p.channels = channels;
    p.head_dim = channels / num_heads;
    p.window = window_size;
    p.shift = shift_size;
    p.tokens = window_size * window_size;
    p.windows_w = width / window_size;
    p.windows_per_image = (height / window_size) * p.windows_w;
    p.scale_log2 = (scale > 0.f ? scale : 1.f / std::sqrt(float(p.head_dim))) * kLog2e;
    p.bias_log2 = masked_bias * kLog2e;
    switch (dtype) {
        case EDGESTACK_FLOAT32: return dispatch_head_dim<float>(p, batch, num_heads, stream);
        case EDGESTACK_FLOAT16: return dispatch_head_dim<__half>(p, batch, num_heads, stream);
        default: return EDGESTACK_ERR_BAD_DTYPE;
    }
}
