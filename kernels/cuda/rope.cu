// RoPE (HF rotate-half), twin of kernels/cpu/rope.c: one thread per (token, head, pair), cos/sin
// from the table kv_backend_rope_table put on the device, positions pos[T] on the device.
#include <stdio.h>

#include "kernels/cuda/kv_cuda.h"

// rotates every head of x [T, n_heads, hd] by +angle (dir = 1) or -angle (dir = -1)
__global__ void rope_kernel(float *x, int n_heads, int head_dim, const int32_t *pos,
                            const float *cos_t, const float *sin_t, float dir, size_t n) {
    const int half = head_dim / 2;
    KV_CUDA_FOR(idx, n) {
        const int i = (int)(idx % half);
        const size_t th = idx / half; // t * n_heads + h
        const size_t t = th / n_heads;
        const size_t at = (size_t)pos[t] * half + i;
        const float c = cos_t[at], s = dir * sin_t[at];
        float *a = x + th * head_dim;
        const float x0 = a[i], x1 = a[i + half];
        a[i] = x0 * c - x1 * s;
        a[i + half] = x1 * c + x0 * s;
    }
}

static int rope_run(kv_backend *b, float *x, int T, int n_heads, const int32_t *pos,
                    const kv_rope_table *table, float dir, const char *op, kv_error *err) {
    const int hd = table->head_dim;
    char what[80];
    snprintf(what, sizeof what, "%s [%d x %d heads x %d]", op, T, n_heads, hd);
    if (hd <= 0 || hd % 2)
        return kv_fail(err, KV_EINVAL, "cuda %s: head_dim must be positive and even", what);
    const size_t n = (size_t)(T > 0 ? T : 0) * (size_t)(n_heads > 0 ? n_heads : 0) * (hd / 2);
    if (n == 0) return 0;
    rope_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(
        x, n_heads, hd, pos, table->cos, table->sin, dir, n);
    return kv_cuda_launched(what, err);
}

int kv_cuda_rope(kv_backend *b, float *x, int T, int n_heads, const int32_t *pos,
                 const kv_rope_table *table, kv_error *err) {
    return rope_run(b, x, T, n_heads, pos, table, 1.0f, "rope", err);
}

int kv_cuda_rope_backward(kv_backend *b, float *dx, int T, int n_heads, const int32_t *pos,
                          const kv_rope_table *table, kv_error *err) {
    return rope_run(b, dx, T, n_heads, pos, table, -1.0f, "rope_backward", err);
}
