// SwiGLU forward and backward, twin of kernels/cpu/activation.c (element-wise). The softmax
// family there has no op of its own in the backend: the losses (loss.cu) do their own.
#include <stdio.h>

#include "kernels/cuda/kv_cuda.h"

__device__ __forceinline__ float sigmoidf(float g) { return 1.0f / (1.0f + expf(-g)); }

// h may alias gate or up: each element is read before it is written
__global__ void swiglu_kernel(float *h, const float *gate, const float *up, size_t n) {
    KV_CUDA_FOR(i, n) {
        const float g = gate[i];
        h[i] = g * sigmoidf(g) * up[i];
    }
}

int kv_cuda_swiglu(kv_backend *b, float *h, const float *gate, const float *up, int T, int n,
                   kv_error *err) {
    if (T <= 0 || n <= 0) return 0;
    const size_t total = (size_t)T * n;
    swiglu_kernel<<<kv_cuda_grid(total), KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(h, gate, up, total);
    char what[64];
    snprintf(what, sizeof what, "swiglu [%d x %d]", T, n);
    return kv_cuda_launched(what, err);
}

// silu'(g) = sig(g) * (1 + g * (1 - sig(g)))
__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dh, const float *gate,
                                       const float *up, size_t n) {
    KV_CUDA_FOR(i, n) {
        const float g = gate[i], sg = sigmoidf(g);
        if (dgate) dgate[i] += dh[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
        if (dup) dup[i] += dh[i] * g * sg;
    }
}

int kv_cuda_swiglu_backward(kv_backend *b, float *dgate, float *dup, const float *dh,
                            const float *gate, const float *up, size_t n, kv_error *err) {
    if (n == 0 || (!dgate && !dup)) return 0;
    swiglu_backward_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(dgate, dup, dh,
                                                                                     gate, up, n);
    char what[64];
    snprintf(what, sizeof what, "swiglu_backward [%zu]", n);
    return kv_cuda_launched(what, err);
}
