// RoPE twin (HF rotate-half): one thread per (token, head, pair), cos/sin from the CPU table.
#include "kernels/cuda/cuda_util.h"

__global__ void rope_kernel(float *x, int T, int n_heads, int head_dim, const int32_t *pos,
                            const float *cos_t, const float *sin_t) {
    const int half = head_dim / 2;
    const size_t n = (size_t)T * n_heads * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half);
        const size_t th = idx / half; // t * n_heads + h
        const int t = (int)(th / n_heads);
        const size_t table = (size_t)pos[t] * half + i;
        const float c = cos_t[table], s = sin_t[table];
        float *a = x + th * head_dim;
        const float x0 = a[i], x1 = a[i + half];
        a[i] = x0 * c - x1 * s;
        a[i + half] = x1 * c + x0 * s;
    }
}

extern "C" int kv_cuda_rope(float *x, int T, int n_heads, int head_dim, const int32_t *pos,
                            const float *cos, const float *sin, kv_error *err) {
    if (head_dim <= 0 || head_dim % 2)
        return kv_fail(err, KV_EINVAL, "cuda rope: head_dim %d must be positive and even",
                       head_dim);
    const size_t n = (size_t)T * n_heads * (head_dim / 2);
    if (n == 0) return 0;
    size_t blocks = (n + KV_CUDA_BLOCK - 1) / KV_CUDA_BLOCK;
    rope_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), KV_CUDA_BLOCK>>>(
        x, T, n_heads, head_dim, pos, cos, sin);
    return kv_cuda_check_launch("rope", err);
}
