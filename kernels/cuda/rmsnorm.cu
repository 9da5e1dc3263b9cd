// RMSNorm twin: one block per row.
#include "kernels/cuda/cuda_util.h"

__global__ void rmsnorm_kernel(float *out, const float *x, const float *w, int dim, float eps) {
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *yr = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = kv_block_sum(ss);
    const float r = rsqrtf(ss / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = w[i] * (xr[i] * r);
}

extern "C" int kv_cuda_rmsnorm(float *out, const float *x, const float *w, int T, int dim,
                               float eps, kv_error *err) {
    if (T <= 0) return 0;
    rmsnorm_kernel<<<T, KV_CUDA_BLOCK>>>(out, x, w, dim, eps);
    return kv_cuda_check_launch("rmsnorm", err);
}
