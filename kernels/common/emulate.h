// Runs CUDA kernels on CPU threads so the tests can check their indexing and arithmetic on a machine
// without a GPU. Compile the device code with a host C++20 compiler after this header: one OS thread per
// CUDA thread, blocks one after another, __syncthreads, warp shuffles and mma.m16n8k16 through barriers.
// Static __shared__ arrays become function statics (one per block, since blocks run in turn); dynamic shared
// memory comes from dynamic_smem(). Built with -fsanitize (tests/test_kernels_sanitized.py), out-of-bounds and
// misaligned accesses and races between a block's threads stop the run. What it cannot show: timing, memory
// coalescing, races between blocks (they run one after another), shared-memory ordering that a GPU's shuffles
// and mma do not give but these do, and anything the device compiler alone decides (fast-math, spills).
#pragma once

#define EDGESTACK_EMULATE 1

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "status.h"

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)
#ifndef __grid_constant__
#define __grid_constant__
#endif

using std::max;  // CUDA's integer min/max overloads
using std::min;

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace edgestack::emulate {

constexpr int kWarp = 32;

// Fills dynamic shared memory: on a GPU its contents start undefined, and NaN makes a read before the
// block's own write show in the result.
constexpr float4 kPoison = {NAN, NAN, NAN, NAN};

// What the threads of the running block share.
struct Block {
    Block(int threads, size_t smem_bytes)
        : sync(threads),
          shuffle(threads),
          mma_operands(6 * size_t(threads)),
          smem((smem_bytes + sizeof(float4) - 1) / sizeof(float4), kPoison) {
#if defined(__SANITIZE_ADDRESS__)
        // Under ASan, the bytes rounded up to a whole float4 are out of bounds too, as on the GPU.
        ASAN_POISON_MEMORY_REGION(reinterpret_cast<char*>(smem.data()) + smem_bytes,
                                  smem.size() * sizeof(float4) - smem_bytes);
#endif
        for (int first = 0; first < threads; first += kWarp)
            warp_sync.push_back(std::make_unique<std::barrier<>>(std::min(kWarp, threads - first)));
    }
    std::barrier<> sync;
    std::vector<std::unique_ptr<std::barrier<>>> warp_sync;
    std::vector<uint64_t> shuffle;       // one slot per thread for the value it offers a shuffle
    std::vector<uint32_t> mma_operands;  // 6 registers per thread (A's 4, B's 2) for mma_16816
    std::vector<float4> smem;
};

inline thread_local Block* current = nullptr;
inline thread_local int linear_thread = 0;

inline std::barrier<>& warp_barrier() { return *current->warp_sync[linear_thread / kWarp]; }

// Runs kernel(args...) over the grid, blocks one after another on one set of block.x*y*z threads, with
// smem_bytes of dynamic shared memory per block.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, const Args&... args) {
    const int threads = int(block.x * block.y * block.z);
    const unsigned blocks = grid.x * grid.y * grid.z;
    std::unique_ptr<Block> shared;
    unsigned block_index = 0, next = 0;
    // Between blocks, once every thread has finished the last one: a fresh Block for the next.
    auto next_block = [&]() noexcept {
        block_index = next++;
        shared = std::make_unique<Block>(threads, smem_bytes);
    };
    std::barrier step(threads, next_block);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            linear_thread = t;
            threadIdx = {unsigned(t) % block.x, unsigned(t) / block.x % block.y, unsigned(t) / (block.x * block.y)};
            blockDim = block;
            gridDim = grid;
            for (;;) {
                step.arrive_and_wait();
                if (block_index >= blocks) return;
                current = shared.get();
                blockIdx = {block_index % grid.x, block_index / grid.x % grid.y, block_index / (grid.x * grid.y)};
                kernel(args...);
                // A finished thread no longer holds up the barriers of those still running.
                warp_barrier().arrive_and_drop();
                current->sync.arrive_and_drop();
            }
        });
    }
    for (std::thread& thread : pool) thread.join();
}

// launch() in the form the ops' dispatch takes (common/launch.cuh's signature); always EDGESTACK_OK.
inline auto launcher() {
    return [](auto kernel, dim3 grid, dim3 block, size_t smem_bytes, const auto&... args) -> int {
        launch(kernel, grid, block, smem_bytes, args...);
        return EDGESTACK_OK;
    };
}

}  // namespace edgestack::emulate

namespace edgestack {
template <typename T>
inline T* dynamic_smem() {
    return reinterpret_cast<T*>(emulate::current->smem.data());
}
}  // namespace edgestack

inline void __syncthreads() { edgestack::emulate::current->sync.arrive_and_wait(); }

// Every lane of the warp must take part (full mask), as in the kernels that use it.
template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T value, int lane_mask) {
    static_assert(sizeof(T) <= sizeof(uint64_t));
    using edgestack::emulate::current;
    using edgestack::emulate::kWarp;
    using edgestack::emulate::linear_thread;
    const int lane = linear_thread % kWarp;
    const int warp_base = linear_thread - lane;
    std::memcpy(&current->shuffle[linear_thread], &value, sizeof(T));
    edgestack::emulate::warp_barrier().arrive_and_wait();
    T other;
    std::memcpy(&other, &current->shuffle[warp_base + (lane ^ lane_mask)], sizeof(T));
    edgestack::emulate::warp_barrier().arrive_and_wait();  // the slot is not overwritten before all have read
    return other;
}

inline float atomicAdd(float* address, float value) { return std::atomic_ref<float>(*address).fetch_add(value); }

// PTX mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, d += a b, for the 32 lanes of a warp together. With
// g = lane / 4 and t = lane % 4, per the PTX ISA fragment layouts: a[0] holds A[g][2t, 2t+1], a[1]
// A[g+8][2t, 2t+1], a[2] A[g][2t+8, 2t+9], a[3] A[g+8][2t+8, 2t+9] (lower column in the low half); b0 holds
// B[2t, 2t+1][g], b1 B[2t+8, 2t+9][g]; d[0..1] is D[g][2t, 2t+1], d[2..3] D[g+8][2t, 2t+1]. Sums in fp32.
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    using edgestack::emulate::current;
    using edgestack::emulate::kWarp;
    using edgestack::emulate::linear_thread;
    const int lane = linear_thread % kWarp;
    const int warp_base = linear_thread - lane;
    uint32_t* mine = &current->mma_operands[6 * size_t(linear_thread)];
    std::copy(a, a + 4, mine);
    mine[4] = b0;
    mine[5] = b1;
    edgestack::emulate::warp_barrier().arrive_and_wait();
    // Element `half` (0 low, 1 high) of register `reg` of `from_lane`, as float.
    const auto element = [&](int from_lane, int reg, int half) {
        const uint32_t bits = current->mma_operands[6 * size_t(warp_base + from_lane) + reg];
        __half_raw raw;
        raw.x = uint16_t(half ? bits >> 16 : bits & 0xffff);
        return __half2float(__half(raw));
    };
    const auto a_at = [&](int row, int k) {  // A[row][k]
        return element(4 * (row % 8) + (k % 8) / 2, (row >= 8) + 2 * (k >= 8), k % 2);
    };
    const auto b_at = [&](int k, int col) {  // B[k][col]
        return element(4 * col + (k % 8) / 2, 4 + (k >= 8), k % 2);
    };
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        float sum = d[i];
        for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
        d[i] = sum;
    }
    edgestack::emulate::warp_barrier().arrive_and_wait();  // operands are not overwritten before all have read
}
