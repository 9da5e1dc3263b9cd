/* Internal to kernels/cuda: error reporting and warp/block reductions (C++/CUDA only). */
#ifndef KV_CUDA_UTIL_H
#define KV_CUDA_UTIL_H

#include <cuda_runtime.h>

#include "kernels/cuda/kv_cuda.h"

/* 0, or KV_EIO naming the kernel and the CUDA error of the last launch */
static inline int kv_cuda_check_launch(const char *what, kv_error *err) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return kv_fail(err, KV_EIO, "cuda %s: %s", what, cudaGetErrorString(e));
    return 0;
}

/* blocks of reductions use this many threads (a multiple of 32, at most 1024) */
#define KV_CUDA_BLOCK 256

__device__ __forceinline__ float kv_warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

__device__ __forceinline__ float kv_warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

/* sum / max over the whole block (blockDim.x a multiple of 32); every thread gets the result.
 * Uses 32 floats of shared memory and two barriers: call it from all threads. */
__device__ __forceinline__ float kv_block_sum(float x) {
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    x = kv_warp_sum(x);
    __syncthreads(); /* part may still be read by a previous reduction */
    if (lane == 0) part[warp] = x;
    __syncthreads();
    x = lane < nwarps ? part[lane] : 0.0f;
    return kv_warp_sum(x);
}

__device__ __forceinline__ float kv_block_max(float x) {
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    x = kv_warp_max(x);
    __syncthreads();
    if (lane == 0) part[warp] = x;
    __syncthreads();
    x = lane < nwarps ? part[lane] : -INFINITY;
    return kv_warp_max(x);
}

#endif
