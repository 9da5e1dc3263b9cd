// SwiGLU twin: elementwise.
#include "kernels/cuda/cuda_util.h"

__global__ void swiglu_kernel(float *h, const float *gate, const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        h[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" int kv_cuda_swiglu(float *h, const float *gate, const float *up, size_t n,
                              kv_error *err) {
    if (n == 0) return 0;
    size_t blocks = (n + KV_CUDA_BLOCK - 1) / KV_CUDA_BLOCK;
    swiglu_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), KV_CUDA_BLOCK>>>(h, gate, up, n);
    return kv_cuda_check_launch("swiglu", err);
}
