// Windowed masked attention in one pass: cyclic shift, window partition, q k^T, region and key-mask biases,
// softmax, attn v, window reverse and the mask update. The shift is index arithmetic on loads and stores: no
// rolled copies. This header holds the device code and the dispatch that kernel.cu (CUDA launches) and
// emulate.cpp (CPU threads, for the tests) share. Two kernels:
// - tensor cores (fp16 on sm_80+, head_dim <= 32, windows of <= 256 tokens, i.e. MAT's): one block per
//   (window, head, 64 queries) holds the window's K and V^T in shared memory; each warp takes 16 queries
//   through mma.m16n8k16 (fp32 accumulation) for q k^T and for P v, with an online softmax in registers
//   (FlashAttention-2's layout: the score accumulators become P's A fragments without a shuffle);
// - CUDA cores (fp32, and fp16 shapes outside those limits): KS adjacent lanes share one query and split its
//   keys, each keeping an online-softmax state in registers, merged with warp shuffles at the end; keys and
//   values stream through shared memory in tiles of 64, so any window size works.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../common/dtype.cuh"
#include "../common/status.h"

namespace edgestack::window_attention {


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

// ---- tensor-core kernel ----------------------------------------------------------------------------------------

constexpr int kTcWarps = 4;
constexpr int kTcQueries = 16 * kTcWarps;  // queries per block

// mma.m16n8k16 needs sm_80; older targets compile the kernel as a trap that the host dispatch never launches.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define EDGESTACK_TENSOR_CORES 1
constexpr int kTcKeyTile = 64;  // keys per online-softmax step

#ifndef EDGESTACK_EMULATE  // emulate.h has its own
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

__device__ __forceinline__ uint32_t pack_half2(float low, float high) {
    const __half2 h = __floats2half2_rn(low, high);  // low half = lower column, as the fragments expect
    uint32_t bits;
    memcpy(&bits, &h, sizeof(bits));
    return bits;
}

// Two adjacent halves (4-byte aligned) as one 32-bit register, as mma fragments hold them.
__device__ __forceinline__ uint32_t half_pair(const __half* at) { return *reinterpret_cast<const uint32_t*>(at); }
#endif

// D: head_dim padded to 16 or 32; KT: window tokens padded to 64 or 256. `pairs`: channels and head_dim are
// even and q/k/v/out 4-byte aligned, so Q, K, V and out rows move as half2. The explicit 1 block/SM minimum
// keeps ptxas from capping the D = 16 variants at 72 registers, where they spilled.
template <int D, int KT>
__global__ void __launch_bounds__(kTcWarps * 32, 1) window_attention_tc_kernel(const Params p, bool pairs) {
#ifndef EDGESTACK_TENSOR_CORES
    __trap();
#else
    constexpr int kThreadsTc = kTcWarps * 32;
    constexpr int kKPitch = D + 8;   // halves; +8 spreads the 8 rows a fragment load touches over all banks
    constexpr int kVPitch = KT + 8;
    constexpr int kSteps = D / 16;   // k-steps of q k^T
    __shared__ __align__(16) __half ks[KT][kKPitch];
    __shared__ __align__(16) __half vt[D][kVPitch];  // V transposed: P v's B fragments are row pairs
    __shared__ int64_t key_index[KT];
    __shared__ float key_bias[KT];  // masked-key bias (base 2); -inf for the padding beyond the window
    __shared__ float key_mask[KT];
    __shared__ int key_region[KT];
    __shared__ float window_valid;

    const __half* q = static_cast<const __half*>(p.q);
    const __half* k = static_cast<const __half*>(p.k);
    const __half* v = static_cast<const __half*>(p.v);
    const __half* mask = static_cast<const __half*>(p.mask);
    const int image = blockIdx.x / p.windows_per_image;
    const int win = blockIdx.x % p.windows_per_image;
    const int head_offset = blockIdx.y * p.head_dim;
    const bool shifted = p.shift > 0;

    const int warp = threadIdx.x / 32;
    const int group = (threadIdx.x % 32) / 4;  // fragment row (and B column)
    const int quad = threadIdx.x % 4;          // fragment column pair
    const int query_base = blockIdx.z * kTcQueries + warp * 16;

    // This lane's two query rows (group and group + 8 of the warp's 16) and their Q fragments, loaded before
    // the key staging so their latency overlaps it.
    bool row_ok[2];
    int64_t row_index[2];
    int row_region[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int query = query_base + group + 8 * r;
        row_ok[r] = query < p.tokens;
        row_index[r] = row_ok[r] ? token_index(p, image, win, query) : 0;
        row_region[r] = row_ok[r] && shifted ? token_region(p, win, query) : 0;
    }
    // Q's A fragments: register i holds row (i & 1) * 8 + group, columns 16 s + 2 quad + (i >> 1) * 8 (+1).
    uint32_t qa[kSteps][4];
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = i & 1;
            const int c = 16 * s + 2 * quad + (i >> 1) * 8;
            const __half* row = q + row_index[r] * p.channels + head_offset;
            if (pairs) {  // c < head_dim implies c + 1 < head_dim: head_dim is even
                qa[s][i] = row_ok[r] && c < p.head_dim ? half_pair(row + c) : 0u;
            } else {
                const float low = row_ok[r] && c < p.head_dim ? __half2float(row[c]) : 0.f;
                const float high = row_ok[r] && c + 1 < p.head_dim ? __half2float(row[c + 1]) : 0.f;
                qa[s][i] = pack_half2(low, high);
            }
        }
    }

    for (int j = threadIdx.x; j < KT; j += kThreadsTc) {
        const bool inside = j < p.tokens;
        const int64_t index = inside ? token_index(p, image, win, j) : 0;
        const float m = inside ? __half2float(mask[index]) : 0.f;
        key_index[j] = index;
        key_mask[j] = m;
        key_bias[j] = inside ? (m == 0.f ? p.bias_log2 : 0.f) : -INFINITY;
        key_region[j] = inside && shifted ? token_region(p, win, j) : 0;
    }
    __syncthreads();
    if (pairs) {
        constexpr int kPairs = D / 2;
#pragma unroll 4
        for (int e = threadIdx.x; e < KT * kPairs; e += kThreadsTc) {
            const int j = e / kPairs;
            const int c = 2 * (e % kPairs);
            __half2 kk = __float2half2_rn(0.f), vv = kk;
            if (j < p.tokens && c < p.head_dim) {
                const int64_t offset = key_index[j] * p.channels + head_offset + c;
                kk = *reinterpret_cast<const __half2*>(k + offset);
                vv = *reinterpret_cast<const __half2*>(v + offset);
            }
            *reinterpret_cast<__half2*>(&ks[j][c]) = kk;
            vt[c][j] = __low2half(vv);
            vt[c + 1][j] = __high2half(vv);
        }
    } else {
#pragma unroll 4
        for (int e = threadIdx.x; e < KT * D; e += kThreadsTc) {
            const int j = e / D;
            const int c = e % D;
            __half kk = __float2half_rn(0.f), vv = kk;
            if (j < p.tokens && c < p.head_dim) {
                const int64_t offset = key_index[j] * p.channels + head_offset + c;
                kk = k[offset];
                vv = v[offset];
            }
            ks[j][c] = kk;
            vt[c][j] = vv;
        }
    }
    // mask_out = clamp(sum of the window's mask, 0, 1) on every token: once per window (head 0, chunk 0).
    if (blockIdx.y == 0 && blockIdx.z == 0) {
        if (threadIdx.x < 32) {
            float sum = 0.f;
            for (int t = threadIdx.x; t < p.tokens; t += 32) sum += key_mask[t];
            for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
            if (threadIdx.x == 0) window_valid = fminf(fmaxf(sum, 0.f), 1.f);
        }
        __syncthreads();
        __half* mask_out = static_cast<__half*>(p.mask_out);
        for (int t = threadIdx.x; t < p.tokens; t += kThreadsTc) mask_out[key_index[t]] = __float2half_rn(window_valid);
    }
    __syncthreads();
    if (query_base >= p.tokens) return;  // no barrier follows

    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY};  // running max per row (base-2 scores)
    float l[2] = {0.f, 0.f};              // this lane's part of the running sum per row

    for (int base = 0; base < p.tokens; base += kTcKeyTile) {
        // Scores of 16 queries x 64 keys: 8 accumulator tiles of 16 x 8, c0/c1 on row `group`, c2/c3 on +8.
        float score[8][4];
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            score[n][0] = score[n][1] = score[n][2] = score[n][3] = 0.f;
            const __half* key_row = ks[base + 8 * n + group];
#pragma unroll
            for (int s = 0; s < kSteps; ++s)
                mma_16816(score[n], qa[s], half_pair(key_row + 16 * s + 2 * quad),
                          half_pair(key_row + 16 * s + 2 * quad + 8));
        }
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int key = base + 8 * n + 2 * quad + (i & 1);
                const int r = i >> 1;
                const float region_bias = key_region[key] != row_region[r] ? p.bias_log2 : 0.f;
                score[n][i] = score[n][i] * p.scale_log2 + key_bias[key] + region_bias;
                tile_max[r] = fmaxf(tile_max[r], score[n][i]);
            }
        }
        float correction[2], m_used[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            // -inf while every key so far is masked with a masked_bias of -inf: exp2f(-inf - -inf) would be NaN
            const float m_new = fmaxf(m[r], tile_max[r]);
            correction[r] = m_new == -INFINITY ? 1.f : exp2f(m[r] - m_new);
            m[r] = m_new;
            m_used[r] = m_new == -INFINITY ? 0.f : m_new;  // those keys' exp2f(-inf - 0) is 0
            l[r] *= correction[r];
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            acc[n][0] *= correction[0];
            acc[n][1] *= correction[0];
            acc[n][2] *= correction[1];
            acc[n][3] *= correction[1];
        }
#pragma unroll
        for (int n = 0; n < 8; ++n) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                score[n][i] = exp2f(score[n][i] - m_used[i >> 1]);
                l[i >> 1] += score[n][i];
            }
        }
        // P v: score tiles 2t and 2t+1 are P's A fragment for keys 16t..16t+15.
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const uint32_t pa[4] = {pack_half2(score[2 * t][0], score[2 * t][1]),
                                    pack_half2(score[2 * t][2], score[2 * t][3]),
                                    pack_half2(score[2 * t + 1][0], score[2 * t + 1][1]),
                                    pack_half2(score[2 * t + 1][2], score[2 * t + 1][3])};
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                const __half* value_row = vt[8 * n + group] + base + 16 * t + 2 * quad;
                mma_16816(acc[n], pa, half_pair(value_row), half_pair(value_row + 8));
            }
        }
    }

    __half* out = static_cast<__half*>(p.out);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    const float inverse[2] = {1.f / l[0], 1.f / l[1]};
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int c = 8 * n + 2 * quad;  // this lane's column pair
            if (!row_ok[r] || c >= p.head_dim) continue;
            __half* at = out + row_index[r] * p.channels + head_offset + c;
            const float low = acc[n][2 * r] * inverse[r], high = acc[n][2 * r + 1] * inverse[r];
            if (pairs) {
                *reinterpret_cast<__half2*>(at) = __floats2half2_rn(low, high);
            } else {
                at[0] = __float2half_rn(low);
                if (c + 1 < p.head_dim) at[1] = __float2half_rn(high);
            }
        }
    }
#endif
}

// The shape rules of kernel.h; EDGESTACK_OK or why not.
inline int shape_status(int batch, int height, int width, int channels, int num_heads, int window_size,
                        int shift_size) {
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

// Only for shapes that passed shape_status.
inline Params make_params(const void* q, const void* k, const void* v, const void* mask, void* out, void* mask_out,
                          int height, int width, int channels, int num_heads, int window_size, int shift_size,
                          float scale, float masked_bias) {
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
    // A finite masked_bias stays finite in base 2, twice over (region and key bias add): finfo(float32).min times
    // log2(e) overflowed to -inf, and a window without a valid key then gave NaN where PyTorch gives a mean.
    p.bias_log2 = std::isfinite(masked_bias)
                      ? float(std::max(double(masked_bias) * kLog2e, -double(FLT_MAX) / 4))
                      : masked_bias * kLog2e;
    return p;
}

// `launch(kernel, grid, block, smem_bytes, args...)` runs a kernel and returns a status: CUDA launches on a
// stream (common/launch.cuh) or CPU threads (common/emulate.h).
template <int D, int KT, typename Launch>
int launch_tensor_cores(const Params& p, int batch, int num_heads, Launch& launch) {
    const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 4 == 0; };
    const bool pairs = p.channels % 2 == 0 && p.head_dim % 2 == 0 && aligned(p.q) && aligned(p.k) && aligned(p.v) &&
                       aligned(p.out);
    const dim3 grid(unsigned(batch) * p.windows_per_image, num_heads, (p.tokens + kTcQueries - 1) / kTcQueries);
    return launch(window_attention_tc_kernel<D, KT>, grid, dim3(kTcWarps * 32), size_t(0), p, pairs);
}

// KS lanes per query, so kThreads / KS queries per block.
template <typename T, int D, int KS, typename Launch>
int launch_cuda_cores(const Params& p, int batch, int num_heads, Launch& launch) {
    constexpr int kQueries = kThreads / KS;
    const dim3 grid(unsigned(batch) * p.windows_per_image, num_heads, (p.tokens + kQueries - 1) / kQueries);
    return launch(window_attention_kernel<T, D, KS>, grid, dim3(kThreads), size_t(0), p);
}

// Few keys per window: 4 lanes per query keep the merge cheap; larger windows split keys 8 ways.
template <typename T, int D, typename Launch>
int launch_cuda_cores(const Params& p, int batch, int num_heads, Launch& launch) {
    return p.tokens <= 64 ? launch_cuda_cores<T, D, 4>(p, batch, num_heads, launch)
                          : launch_cuda_cores<T, D, 8>(p, batch, num_heads, launch);
}

template <typename T, typename Launch>
int dispatch_head_dim(const Params& p, int batch, int num_heads, Launch& launch) {
    if (p.head_dim <= 16) return launch_cuda_cores<T, 16>(p, batch, num_heads, launch);
    if (p.head_dim <= 32) return launch_cuda_cores<T, 32>(p, batch, num_heads, launch);
    return launch_cuda_cores<T, 64>(p, batch, num_heads, launch);
}

// The kernel for a call: fp16 with head_dim <= 32 and windows of <= 256 tokens takes the tensor cores where
// the device has them (`tensor_cores`: sm_80+), everything else the CUDA-core kernel.
template <typename Launch>
int dispatch(const Params& p, int dtype, int batch, int num_heads, bool tensor_cores, Launch&& launch) {
    switch (dtype) {
        case EDGESTACK_FLOAT32: return dispatch_head_dim<float>(p, batch, num_heads, launch);
        case EDGESTACK_FLOAT16:
            if (!tensor_cores || p.head_dim > 32 || p.tokens > 256)
                return dispatch_head_dim<__half>(p, batch, num_heads, launch);
            if (p.head_dim <= 16)
                return p.tokens <= 64 ? launch_tensor_cores<16, 64>(p, batch, num_heads, launch)
                                      : launch_tensor_cores<16, 256>(p, batch, num_heads, launch);
            return p.tokens <= 64 ? launch_tensor_cores<32, 64>(p, batch, num_heads, launch)
                                  : launch_tensor_cores<32, 256>(p, batch, num_heads, launch);
        default: return EDGESTACK_ERR_BAD_DTYPE;
    }
}

}  // namespace edgestack::window_attention
