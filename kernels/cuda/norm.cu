// RMSNorm forward/backward and the embedding row copy, twin of kernels/cpu/norm.c.
// Sums of squares in double as on the CPU; one block per row.
#include <stdio.h>

#include "kernels/cuda/kv_cuda.h"

// 1 / sqrt(mean(x^2) + eps) of row xr, every thread of the block gets it
__device__ __forceinline__ float inv_rms(const float *xr, int dim, float eps) {
    double ss = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = kv_block_sum(ss);
    return (float)(1.0 / sqrt(ss / dim + (double)eps));
}

// in place allowed: every x of the row is read (and summed) before any out is written
__global__ void rmsnorm_kernel(float *out, const float *x, const float *w, int dim, float eps) {
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *yr = out + (size_t)blockIdx.x * dim;
    const float r = inv_rms(xr, dim, eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = w[i] * (xr[i] * r);
}

int kv_cuda_rmsnorm(kv_backend *b, float *out, const float *x, const float *w, int T, int dim,
                    float eps, kv_error *err) {
    if (T <= 0 || dim <= 0) return 0;
    rmsnorm_kernel<<<T, KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(out, x, w, dim, eps);
    char what[64];
    snprintf(what, sizeof what, "rmsnorm [%d x %d]", T, dim);
    return kv_cuda_launched(what, err);
}

// y_i = w_i x_i r: dx_i += r w_i g_i - x_i r^3 / dim * sum_j g_j w_j x_j; r of each row to rs
__global__ void rmsnorm_dx_kernel(float *dx, float *rs, const float *dout, const float *x,
                                  const float *w, int dim, float eps) {
    const size_t off = (size_t)blockIdx.x * dim;
    const float *xr = x + off, *g = dout + off;
    const float r = inv_rms(xr, dim, eps);
    if (rs && threadIdx.x == 0) rs[blockIdx.x] = r;
    if (!dx) return; // block-uniform
    double gwx = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) gwx += (double)g[i] * w[i] * xr[i];
    gwx = kv_block_sum(gwx);
    const float c = (float)((double)r * r * r * gwx / dim);
    float *dxr = dx + off;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dxr[i] += r * w[i] * g[i] - xr[i] * c;
}

// dw_i += g_ti x_ti r_t, added row after row as on the CPU: one thread per column
__global__ void rmsnorm_dw_kernel(float *dw, const float *rs, const float *dout, const float *x,
                                  int T, int dim) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= dim) return;
    float acc = dw[i];
    for (int t = 0; t < T; t++) {
        const size_t at = (size_t)t * dim + i;
        acc += dout[at] * x[at] * rs[t];
    }
    dw[i] = acc;
}

int kv_cuda_rmsnorm_backward(kv_backend *b, float *dx, float *dw, const float *dout, const float *x,
                             const float *w, int T, int dim, float eps, kv_error *err) {
    if (T <= 0 || dim <= 0 || (!dx && !dw)) return 0;
    char what[64];
    snprintf(what, sizeof what, "rmsnorm_backward [%d x %d]", T, dim);
    cudaStream_t st = kv_cuda_stream(b);
    void *rs = NULL;
    if (dw) {
        int rc = kv_cuda_scratch(b, &rs, sizeof(float) * T, what, err);
        if (rc) return rc;
    }
    rmsnorm_dx_kernel<<<T, KV_CUDA_BLOCK, 0, st>>>(dx, (float *)rs, dout, x, w, dim, eps);
    if (dw)
        rmsnorm_dw_kernel<<<(unsigned)((dim + KV_CUDA_BLOCK - 1) / KV_CUDA_BLOCK), KV_CUDA_BLOCK, 0,
                            st>>>(dw, (const float *)rs, dout, x, T, dim);
    return kv_cuda_launched(what, err);
}

__global__ void embedding_kernel(float *out, const float *table, const int32_t *ids, int dim,
                                 size_t n) {
    KV_CUDA_FOR(i, n) {
        const size_t t = i / dim, d = i % dim;
        out[i] = table[(size_t)ids[t] * dim + d];
    }
}

int kv_cuda_embedding(kv_backend *b, float *out, const float *table, int vocab, int dim,
                      const int32_t *host_ids, int T, kv_error *err) {
    for (int t = 0; t < T; t++) // checked on the host, before anything is queued
        if (host_ids[t] < 0 || host_ids[t] >= vocab)
            return kv_fail(err, KV_EINVAL, "embedding: token id %d at position %d outside [0, %d)",
                           (int)host_ids[t], t, vocab);
    if (T <= 0 || dim <= 0) return 0;
    char what[80];
    snprintf(what, sizeof what, "embedding [%d ids] of [%d x %d]", T, vocab, dim);
    cudaStream_t st = kv_cuda_stream(b);
    void *ids = NULL;
    int rc = kv_cuda_scratch(b, &ids, sizeof(int32_t) * T, what, err);
    if (rc) return rc;
    // synchronous: host_ids may change once the call returns
    rc = kv_cuda_status(
        cudaMemcpyAsync(ids, host_ids, sizeof(int32_t) * T, cudaMemcpyHostToDevice, st), what, err);
    if (!rc) rc = kv_cuda_status(cudaStreamSynchronize(st), what, err);
    if (rc) return rc;
    const size_t n = (size_t)T * dim;
    embedding_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, st>>>(out, table, (const int32_t *)ids,
                                                                dim, n);
    return kv_cuda_launched(what, err);
}
