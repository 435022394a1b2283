// Pyramid pooling in three passes (device code) and the plan they run with; x is read from DRAM once.
// kernel.cu launches them on the GPU; emulate.cpp runs the same code on CPU threads for the tests.
//  1. pool_copy: one block per (b, c) plane copies x into y[:, :C] and sums the plane over the elementary
//     row/column segments that all bins' cells are unions of (cells overlap when a bin does not divide H or W),
//     then writes every cell's average: pooled [B, cells, C] fp32.
//  2. conv: the 1x1 convs as a small GEMM per bin, each output a warp's dot product over all C: feat [B, cells, R].
//  3. upsample: bias + ReLU on the tiny maps, bilinear (separably) to H x W, written into y[:, C:].
#pragma once

#include <algorithm>
#include <cstdint>

#include "../common/dtype.cuh"
#include "../common/status.h"

namespace edgestack::pyramid_pooling {

constexpr int kThreads = 256;
constexpr int kMaxBins = 8;
constexpr int kMaxCells1D = 32;                // sum(bins)
constexpr int kMaxSegments = 2 * kMaxCells1D;  // every cell adds at most a start and an end boundary
constexpr int kUnroll = 8;                     // elements in flight per thread in pass 1
constexpr int kConvRowsPerWarp = 4;            // conv: output channels per warp ...
constexpr int kConvCells = 8;                  // ... times cells per work item = 32, one sum per lane
constexpr int kConvRows = kConvRowsPerWarp * kThreads / 32;  // output channels per conv block
static_assert(kConvRowsPerWarp * kConvCells == 32, "the conv pass sums one (row, cell) per lane");

// One spatial axis: elementary segments [bound[s], bound[s+1]) and, per 1-D cell (bin-major), its segments.
struct Axis {
    int segments;
    int bound[kMaxSegments + 1];
    int seg_begin[kMaxCells1D];
    int seg_end[kMaxCells1D];
    int length[kMaxCells1D];
};

struct Params {
    const void* x;
    const void* weight;
    const void* bias;
    void* y;
    float* pooled;  // [B, cells, C]
    float* feat;    // [B, cells, R], pre-bias
    int channels, height, width, reduced, nbins, cells, out_channels, align_corners;
    int bins[kMaxBins];
    int cell_offset[kMaxBins];    // first 2-D cell of each bin
    int cell1d_offset[kMaxBins];  // first 1-D cell of each bin
    Axis rows, cols;
};

// PyTorch adaptive pooling: cell i of b covers [floor(i*n/b), ceil((i+1)*n/b)).
inline Axis make_axis(int n, const int* bins, int nbins) {
    Axis a{};
    int bounds[2 * kMaxCells1D];
    int count = 0;
    for (int k = 0; k < nbins; ++k) {
        for (int i = 0; i < bins[k]; ++i) {
            bounds[count++] = int(int64_t(i) * n / bins[k]);
            bounds[count++] = int((int64_t(i + 1) * n + bins[k] - 1) / bins[k]);
        }
    }
    std::sort(bounds, bounds + count);
    count = int(std::unique(bounds, bounds + count) - bounds);
    a.segments = count - 1;
    std::copy(bounds, bounds + count, a.bound);
    int cell = 0;
    for (int k = 0; k < nbins; ++k) {
        for (int i = 0; i < bins[k]; ++i, ++cell) {
            const int start = int(int64_t(i) * n / bins[k]);
            const int end = int((int64_t(i + 1) * n + bins[k] - 1) / bins[k]);
            a.seg_begin[cell] = int(std::lower_bound(bounds, bounds + count, start) - bounds);
            a.seg_end[cell] = int(std::lower_bound(bounds, bounds + count, end) - bounds);
            a.length[cell] = end - start;
        }
    }
    return a;
}

inline size_t pool_copy_smem(int row_segments, int col_segments, int width) {
    return sizeof(float) * (size_t(row_segments) * width + size_t(row_segments) * col_segments);
}

// N consecutive elements, moved as one load or store (N = 2: 4 bytes for fp16, 8 for fp32).
template <typename T, int N>
struct alignas(N * sizeof(T)) Vec {
    T v[N];
};

__device__ __forceinline__ bool aligned_to(const void* ptr, size_t bytes) {
    return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

// Threads cover (row group, unit of N columns): consecutive threads take consecutive units of one row, and
// the row groups the next rows, so each warp access is contiguous.
__device__ __forceinline__ void plane_layout(int units, int& per_row, int& row_groups) {
    per_row = min(units, kThreads);
    row_groups = kThreads / per_row;
}

// Pass 1's sweep of one plane: copies x into y and adds each column's values over every row segment into
// seg_sum [row segment, column], N columns per thread. A thread's rows ascend, so it sums in registers and
// adds to shared memory only where its rows cross into the next segment.
template <typename T, int N>
__device__ __forceinline__ void copy_and_sum_columns(const Params& p, const T* xp, T* yp, float* seg_sum) {
    constexpr int kLoads = kUnroll / N;  // rows in flight: the same bytes per thread as single columns
    const int units = p.width / N;
    int per_row, row_groups;
    plane_layout(units, per_row, row_groups);
    const int group = threadIdx.x / per_row;
    if (threadIdx.x >= per_row * row_groups || group >= p.height) return;
    for (int u = threadIdx.x % per_row; u < units; u += per_row) {
        const int w = u * N;
        float acc[N] = {};
        int seg = 0;
        while (p.rows.bound[seg + 1] <= group) ++seg;
        int seg_end = p.rows.bound[seg + 1];  // first row of the next segment
        const auto flush = [&] {  // the sums so far into the current segment's row of seg_sum
#pragma unroll
            for (int n = 0; n < N; ++n) {
                atomicAdd(&seg_sum[seg * p.width + w + n], acc[n]);
                acc[n] = 0.f;
            }
        };
        for (int h0 = group; h0 < p.height; h0 += row_groups * kLoads) {
            Vec<T, N> vals[kLoads];
#pragma unroll
            for (int k = 0; k < kLoads; ++k) {
                const int h = h0 + k * row_groups;
                if (h < p.height) vals[k] = *reinterpret_cast<const Vec<T, N>*>(xp + int64_t(h) * p.width + w);
            }
#pragma unroll
            for (int k = 0; k < kLoads; ++k) {
                const int h = h0 + k * row_groups;
                if (h < p.height) {
                    *reinterpret_cast<Vec<T, N>*>(yp + int64_t(h) * p.width + w) = vals[k];
                    if (h >= seg_end) {
                        flush();
                        while (p.rows.bound[seg + 1] <= h) ++seg;
                        seg_end = p.rows.bound[seg + 1];
                    }
#pragma unroll
                    for (int n = 0; n < N; ++n) acc[n] += to_float(vals[k].v[n]);
                }
            }
        }
        flush();
    }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pool_copy_kernel(const __grid_constant__ Params p) {
    float* smem = dynamic_smem<float>();
    const int nrs = p.rows.segments;
    const int ncs = p.cols.segments;
    float* seg_sum = smem;                       // [row segment, column]
    float* block_sum = seg_sum + nrs * p.width;  // [row segment, column segment]

    const int64_t plane = blockIdx.x;
    const int image = int(plane / p.channels);
    const int channel = int(plane % p.channels);
    const int64_t hw = int64_t(p.height) * p.width;
    const T* xp = static_cast<const T*>(p.x) + plane * hw;
    T* yp = static_cast<T*>(p.y) + (int64_t(image) * p.out_channels + channel) * hw;

    for (int i = threadIdx.x; i < nrs * p.width; i += kThreads) seg_sum[i] = 0.f;
    __syncthreads();
    // Column pairs where every row starts on a pair boundary of x and y.
    if (p.width % 2 == 0 && aligned_to(xp, 2 * sizeof(T)) && aligned_to(yp, 2 * sizeof(T)))
        copy_and_sum_columns<T, 2>(p, xp, yp, seg_sum);
    else
        copy_and_sum_columns<T, 1>(p, xp, yp, seg_sum);
    __syncthreads();

    for (int i = threadIdx.x; i < nrs * ncs; i += kThreads) {
        const int rs = i / ncs;
        const int cs = i % ncs;
        float sum = 0.f;
        for (int w = p.cols.bound[cs]; w < p.cols.bound[cs + 1]; ++w) sum += seg_sum[rs * p.width + w];
        block_sum[i] = sum;
    }
    __syncthreads();

    for (int cell = threadIdx.x; cell < p.cells; cell += kThreads) {
        int k = 0;
        while (k + 1 < p.nbins && p.cell_offset[k + 1] <= cell) ++k;
        const int local = cell - p.cell_offset[k];
        const int r1 = p.cell1d_offset[k] + local / p.bins[k];
        const int c1 = p.cell1d_offset[k] + local % p.bins[k];
        float sum = 0.f;
        for (int rs = p.rows.seg_begin[r1]; rs < p.rows.seg_end[r1]; ++rs)
            for (int cs = p.cols.seg_begin[c1]; cs < p.cols.seg_end[c1]; ++cs) sum += block_sum[rs * ncs + cs];
        const float count = float(p.rows.length[r1]) * float(p.cols.length[c1]);
        p.pooled[(int64_t(image) * p.cells + cell) * p.channels + channel] = sum / count;
    }
}

// 8 consecutive values from src as float, zeros from `count` on; `vector`: src is 16-byte aligned and
// count >= 8, so one 16-byte load (two for fp32) instead of eight.
__device__ __forceinline__ void load8(const float* src, int count, bool vector, float (&out)[8]) {
    if (vector) {
        const float4 lo = reinterpret_cast<const float4*>(src)[0];
        const float4 hi = reinterpret_cast<const float4*>(src)[1];
        out[0] = lo.x, out[1] = lo.y, out[2] = lo.z, out[3] = lo.w;
        out[4] = hi.x, out[5] = hi.y, out[6] = hi.z, out[7] = hi.w;
        return;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = i < count ? src[i] : 0.f;
}

__device__ __forceinline__ void load8(const __half* src, int count, bool vector, float (&out)[8]) {
    if (vector) {
        const uint4 raw = *reinterpret_cast<const uint4*>(src);
        const __half2* pairs = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __half22float2(pairs[i]);
            out[2 * i] = f.x;
            out[2 * i + 1] = f.y;
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = i < count ? __half2float(src[i]) : 0.f;
}

// Sums each of the 32 values over the warp's lanes in 31 shuffles (each step trades half of what a lane
// holds with its partner): lane l ends up with the sum of v[l], returned.
__device__ __forceinline__ float warp_transpose_sum(float (&v)[32]) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int half = 16; half >= 1; half /= 2) {
        const bool upper = lane & half;
#pragma unroll
        for (int i = 0; i < half; ++i) {
            const float send = upper ? v[i] : v[i + half];
            const float keep = upper ? v[i + half] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, half);
        }
    }
    return v[0];
}

// Work items of the conv pass: each bin's cells in chunks of kConvCells, bin after bin.
__host__ __device__ __forceinline__ int conv_items(int cells) { return (cells + kConvCells - 1) / kConvCells; }

// grid: (R / kConvRows, conv items, B). Each warp takes kConvRowsPerWarp rows of W and the item's cells; its
// lanes stride over C 8 channels at a time (16-byte loads), so every weight is read once per item and no
// two blocks write the same output.
template <typename TW>
__global__ void __launch_bounds__(kThreads) conv_kernel(const __grid_constant__ Params p) {
    int bin = 0, item = blockIdx.y;
    for (; item >= conv_items(p.bins[bin] * p.bins[bin]); ++bin) item -= conv_items(p.bins[bin] * p.bins[bin]);
    const int cells = p.bins[bin] * p.bins[bin];
    const int first = item * kConvCells;
    const int image = blockIdx.z;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int row0 = blockIdx.x * kConvRows + warp * kConvRowsPerWarp;
    const TW* weight = static_cast<const TW*>(p.weight) + (int64_t(bin) * p.reduced + row0) * p.channels;
    const float* pooled = p.pooled + (int64_t(image) * p.cells + p.cell_offset[bin] + first) * p.channels;
    const bool vector = p.channels % 8 == 0 && aligned_to(p.weight, 16) && aligned_to(p.pooled, 16);

    float acc[kConvRowsPerWarp * kConvCells] = {};
    for (int c = lane * 8; c < p.channels; c += 32 * 8) {
        const int count = p.channels - c;
        float w[kConvRowsPerWarp][8];
#pragma unroll
        for (int r = 0; r < kConvRowsPerWarp; ++r) {
            if (row0 + r < p.reduced) {
                load8(weight + int64_t(r) * p.channels + c, count, vector, w[r]);
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) w[r][i] = 0.f;
            }
        }
#pragma unroll
        for (int j = 0; j < kConvCells; ++j) {
            if (first + j >= cells) break;
            float x[8];
            load8(pooled + int64_t(j) * p.channels + c, count, vector, x);
#pragma unroll
            for (int r = 0; r < kConvRowsPerWarp; ++r)
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[r * kConvCells + j] = fmaf(w[r][i], x[i], acc[r * kConvCells + j]);
        }
    }
    const float sum = warp_transpose_sum(acc);  // this lane's (row, cell) of the warp's tile
    const int row = row0 + lane / kConvCells;
    const int cell = first + lane % kConvCells;
    if (row < p.reduced && cell < cells)
        p.feat[(int64_t(image) * p.cells + p.cell_offset[bin] + cell) * p.reduced + row] = sum;
}

// PyTorch's bilinear source index (upsample_bilinear2d, sizes given): index, next index, weight of the next.
__device__ __forceinline__ void source_index(int dst, int in, int out, bool align_corners, int& i0, int& i1,
                                             float& frac) {
    float src;
    if (align_corners) {
        src = out > 1 ? float(in - 1) / float(out - 1) * dst : 0.f;
    } else {
        src = fmaxf(float(in) / float(out) * (dst + 0.5f) - 0.5f, 0.f);
    }
    i0 = min(int(src), in - 1);
    i1 = i0 + (i0 < in - 1 ? 1 : 0);
    frac = src - i0;
}

// Upsample's shared memory: the b x b map, then its b rows interpolated along W from this float offset on
// (even, so those rows are 8-byte aligned for the pair loads).
__host__ __device__ __forceinline__ int along_w_offset(int b) { return (b * b + 1) / 2 * 2; }

inline size_t upsample_smem(int width, int max_bin) {
    return sizeof(float) * (size_t(along_w_offset(max_bin)) + size_t(max_bin) * width);
}

__device__ __forceinline__ void store(__half* dst, const float (&values)[1]) { *dst = __float2half_rn(values[0]); }
__device__ __forceinline__ void store(float* dst, const float (&values)[1]) { *dst = values[0]; }
__device__ __forceinline__ void store(__half* dst, const float (&values)[2]) {
    *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(values[0], values[1]);
}
__device__ __forceinline__ void store(float* dst, const float (&values)[2]) {
    *reinterpret_cast<float2*>(dst) = make_float2(values[0], values[1]);
}

// Pass 3's sweep of one plane: each output row mixes two rows of `along_w` (the b source rows already
// interpolated to W columns), N columns per thread.
template <typename T, int N>
__device__ __forceinline__ void blend_rows(const Params& p, int b, const float* along_w, T* yp) {
    const int units = p.width / N;
    int per_row, row_groups;
    plane_layout(units, per_row, row_groups);
    if (threadIdx.x >= per_row * row_groups) return;
    for (int h = threadIdx.x / per_row; h < p.height; h += row_groups) {
        int h0, h1;
        float fh;
        source_index(h, b, p.height, p.align_corners, h0, h1, fh);
        const float* top = along_w + h0 * p.width;
        const float* bottom = along_w + h1 * p.width;
        for (int u = threadIdx.x % per_row; u < units; u += per_row) {
            const int w = u * N;
            float out[N];
#pragma unroll
            for (int n = 0; n < N; ++n) out[n] = (1.f - fh) * top[w + n] + fh * bottom[w + n];
            store(yp + int64_t(h) * p.width + w, out);
        }
    }
}

// grid: B * nbins * R output planes. Bilinear upsampling is separable: the b x b map (bias + ReLU applied)
// is first interpolated along W for each of its b rows, then every output row blends two of those rows.
template <typename T, typename TW>
__global__ void __launch_bounds__(kThreads) upsample_kernel(const __grid_constant__ Params p) {
    float* smem = dynamic_smem<float>();
    const int64_t plane = blockIdx.x;
    const int r = int(plane % p.reduced);
    const int bin = int(plane / p.reduced % p.nbins);
    const int image = int(plane / (int64_t(p.reduced) * p.nbins));
    const int b = p.bins[bin];
    float* map = smem;                          // [b, b]
    float* along_w = smem + along_w_offset(b);  // [b, W]
    const float bias = to_float(static_cast<const TW*>(p.bias)[bin * p.reduced + r]);
    for (int i = threadIdx.x; i < b * b; i += kThreads)
        map[i] = fmaxf(p.feat[(int64_t(image) * p.cells + p.cell_offset[bin] + i) * p.reduced + r] + bias, 0.f);
    __syncthreads();
    for (int e = threadIdx.x; e < b * p.width; e += kThreads) {
        const int i = e / p.width;
        int w0, w1;
        float fw;
        source_index(e % p.width, b, p.width, p.align_corners, w0, w1, fw);
        along_w[e] = (1.f - fw) * map[i * b + w0] + fw * map[i * b + w1];
    }
    __syncthreads();

    const int channel = p.channels + bin * p.reduced + r;
    T* yp = static_cast<T*>(p.y) + (int64_t(image) * p.out_channels + channel) * p.height * p.width;
    if (p.width % 2 == 0 && aligned_to(yp, 2 * sizeof(T)))
        blend_rows<T, 2>(p, b, along_w, yp);
    else
        blend_rows<T, 1>(p, b, along_w, yp);
}

inline int cells_of(const int* bins, int nbins) {
    int cells = 0;
    for (int k = 0; k < nbins; ++k) cells += bins[k] * bins[k];
    return cells;
}

// What depends on the shapes alone: every Params field but the pointers, and each pass's grid and dynamic
// shared memory (that grows with H and W: column sums, bilinear taps). The check and the launch build it once
// each; every pass runs kThreads threads per block.
struct Plan {
    Params p;
    dim3 pool_copy_grid;
    size_t pool_copy_smem;
    dim3 conv_grid;
    dim3 upsample_grid;
    size_t upsample_smem;
};

// The limits that need no device; bins is a host array.
inline int shape_status(int batch, int channels, int height, int width, int reduced, const int* bins, int nbins) {
    if (!bins) return EDGESTACK_ERR_NULL_POINTER;
    if (batch < 1 || channels < 1 || height < 1 || width < 1 || reduced < 1 || nbins < 1)
        return EDGESTACK_ERR_BAD_SHAPE;
    int sum = 0;
    for (int k = 0; k < nbins; ++k) {
        if (bins[k] < 1) return EDGESTACK_ERR_BAD_SHAPE;
        sum += std::min(bins[k], kMaxCells1D + 1);
    }
    if (nbins > kMaxBins || sum > kMaxCells1D) return EDGESTACK_ERR_UNSUPPORTED;
    const int64_t planes = int64_t(batch) * std::max(channels, nbins * reduced);
    // Grid limits: planes on x (2^31 - 1), the conv pass's batch on z (65535).
    if (planes > INT32_MAX || batch > 65535 || channels + int64_t(nbins) * reduced > INT32_MAX)
        return EDGESTACK_ERR_UNSUPPORTED;
    return EDGESTACK_OK;
}

// Only for shapes that passed shape_status.
inline Plan make_plan(int batch, int channels, int height, int width, int reduced, const int* bins, int nbins,
                      int align_corners) {
    Plan plan{};
    Params& p = plan.p;
    p.channels = channels;
    p.height = height;
    p.width = width;
    p.reduced = reduced;
    p.nbins = nbins;
    p.cells = cells_of(bins, nbins);
    p.out_channels = channels + nbins * reduced;
    p.align_corners = align_corners != 0;
    int max_bin = 0;
    for (int k = 0, cells = 0, cells1d = 0; k < nbins; ++k) {
        p.bins[k] = bins[k];
        p.cell_offset[k] = cells;
        p.cell1d_offset[k] = cells1d;
        cells += bins[k] * bins[k];
        cells1d += bins[k];
        max_bin = std::max(max_bin, bins[k]);
    }
    p.rows = make_axis(height, bins, nbins);
    p.cols = make_axis(width, bins, nbins);
    plan.pool_copy_grid = dim3(unsigned(int64_t(batch) * channels));
    plan.pool_copy_smem = pool_copy_smem(p.rows.segments, p.cols.segments, width);
    int items = 0;
    for (int k = 0; k < nbins; ++k) items += conv_items(bins[k] * bins[k]);
    plan.conv_grid = dim3((reduced + kConvRows - 1) / kConvRows, items, batch);
    plan.upsample_grid = dim3(unsigned(int64_t(batch) * nbins * reduced));
    plan.upsample_smem = upsample_smem(width, max_bin);
    return plan;
}

// The plan with its pointers; workspace: edgestack_pyramid_pooling_workspace_size bytes (pooled, then feat).
inline void bind(Plan& plan, int batch, const void* x, const void* weight, const void* bias, void* y, void* workspace) {
    Params& p = plan.p;
    p.x = x;
    p.weight = weight;
    p.bias = bias;
    p.y = y;
    p.pooled = static_cast<float*>(workspace);
    p.feat = p.pooled + size_t(batch) * p.cells * p.channels;
}

// The three passes through `launch(kernel, grid, block, smem_bytes, args...)`: CUDA launches on a stream
// (common/launch.cuh) or CPU threads (common/emulate.h).
template <typename T, typename TW, typename Launch>
int run(const Plan& plan, Launch& launch) {
    const dim3 block(kThreads);
    EDGESTACK_RETURN_IF_ERROR(launch(pool_copy_kernel<T>, plan.pool_copy_grid, block, plan.pool_copy_smem, plan.p));
    EDGESTACK_RETURN_IF_ERROR(launch(conv_kernel<TW>, plan.conv_grid, block, size_t(0), plan.p));
    return launch(upsample_kernel<T, TW>, plan.upsample_grid, block, plan.upsample_smem, plan.p);
}

template <typename Launch>
int dispatch(const Plan& plan, int dtype, int weight_dtype, Launch&& launch) {
    const bool x_half = dtype == EDGESTACK_FLOAT16, w_half = weight_dtype == EDGESTACK_FLOAT16;
    if ((!x_half && dtype != EDGESTACK_FLOAT32) || (!w_half && weight_dtype != EDGESTACK_FLOAT32))
        return EDGESTACK_ERR_BAD_DTYPE;
    if (x_half) return w_half ? run<__half, __half>(plan, launch) : run<__half, float>(plan, launch);
    return w_half ? run<float, __half>(plan, launch) : run<float, float>(plan, launch);
}

}  // namespace edgestack::pyramid_pooling
