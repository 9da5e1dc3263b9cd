// Softmax and the distillation KL loss twins: one block per row.
#include <stdlib.h>

#include "kernels/cuda/cuda_util.h"

__global__ void softmax_kernel(float *x, int n) {
    float *xr = x + (size_t)blockIdx.x * n;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = kv_block_max(m);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float e = expf(xr[i] - m);
        xr[i] = e;
        s += e;
    }
    const float inv = 1.0f / kv_block_sum(s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) xr[i] *= inv;
}

extern "C" int kv_cuda_softmax(float *x, int rows, int n, kv_error *err) {
    if (rows <= 0) return 0;
    softmax_kernel<<<rows, KV_CUDA_BLOCK>>>(x, n);
    return kv_cuda_check_launch("softmax", err);
}

// token_loss[t] = temp^2 KL(p || q) for row t; grad[t] += gscale * (q - p) when grad != NULL
__global__ void distill_kl_kernel(float *token_loss, float *grad, const float *student,
                                  const float *teacher, int V, float inv_temp, float temp2,
                                  float gscale) {
    const float *zs = student + (size_t)blockIdx.x * V, *zt = teacher + (size_t)blockIdx.x * V;
    float ms = -INFINITY, mt = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        ms = fmaxf(ms, zs[i] * inv_temp);
        mt = fmaxf(mt, zt[i] * inv_temp);
    }
    ms = kv_block_max(ms);
    mt = kv_block_max(mt);
    float ss = 0.0f, st = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        ss += expf(zs[i] * inv_temp - ms);
        st += expf(zt[i] * inv_temp - mt);
    }
    const float lse_s = ms + logf(kv_block_sum(ss)), lse_t = mt + logf(kv_block_sum(st));
    float kl = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float log_p = zt[i] * inv_temp - lse_t, log_q = zs[i] * inv_temp - lse_s;
        const float p = expf(log_p);
        kl += p * (log_p - log_q);
        if (grad) grad[(size_t)blockIdx.x * V + i] += gscale * (expf(log_q) - p);
    }
    kl = kv_block_sum(kl);
    if (threadIdx.x == 0) token_loss[blockIdx.x] = temp2 * kl;
}

extern "C" int kv_cuda_distill_kl(double *loss, float *dstudent, const float *student,
                                  const float *teacher, int T, int V, float temp,
                                  float grad_scale, kv_error *err) {
    if (T <= 0) {
        if (loss) *loss = 0.0;
        return 0;
    }
    float *token_loss = NULL;
    int rc = kv_cuda_alloc((void **)&token_loss, sizeof(float) * T, err);
    if (rc) return rc;
    distill_kl_kernel<<<T, KV_CUDA_BLOCK>>>(token_loss, dstudent, student, teacher, V,
                                            1.0f / temp, temp * temp, grad_scale * temp / T);
    rc = kv_cuda_check_launch("distill_kl", err);
    if (!rc && loss) {
        float *host = (float *)malloc(sizeof(float) * T);
        if (!host) {
            rc = kv_fail(err, KV_ENOMEM, "cuda distill_kl: %d losses", T);
        } else {
            rc = kv_cuda_download(host, token_loss, sizeof(float) * T, err);
            double sum = 0.0;
            for (int t = 0; t < T; t++) sum += host[t];
            *loss = sum / T;
            free(host);
        }
    }
    kv_cuda_free(token_loss);
    return rc;
}
