// AdamW and the gradient-norm helpers, twin of kernels/cpu/optim.c. sumsq: fixed per-block
// partial sums in double, added on the host in block order (deterministic for a given n).
#include <math.h>
#include <stdio.h>

#include "kernels/cuda/kv_cuda.h"

__global__ void sumsq_kernel(double *partials, const float *x, size_t n) {
    double s = 0.0;
    KV_CUDA_FOR(i, n) s += (double)x[i] * x[i];
    s = kv_block_sum(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

int kv_cuda_sumsq(kv_backend *b, double *host_sumsq, const float *x, size_t n, kv_error *err) {
    if (n == 0) return 0;
    char what[48];
    snprintf(what, sizeof what, "sumsq [%zu]", n);
    const unsigned blocks = kv_cuda_partial_blocks(n);
    void *partials = NULL;
    int rc = kv_cuda_scratch(b, &partials, sizeof(double) * blocks, what, err);
    if (rc) return rc;
    sumsq_kernel<<<blocks, KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>((double *)partials, x, n);
    rc = kv_cuda_launched(what, err);
    double s = 0.0;
    if (!rc) rc = kv_cuda_partials_sum(b, &s, (const double *)partials, blocks, what, err);
    if (!rc) *host_sumsq += s;
    return rc;
}

__global__ void scale_kernel(float *x, float k, size_t n) { KV_CUDA_FOR(i, n) x[i] *= k; }

int kv_cuda_scale(kv_backend *b, float *x, float k, size_t n, kv_error *err) {
    if (n == 0) return 0;
    scale_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(x, k, n);
    char what[48];
    snprintf(what, sizeof what, "scale [%zu]", n);
    return kv_cuda_launched(what, err);
}

__global__ void add_kernel(float *dst, const float *src, size_t n) {
    KV_CUDA_FOR(i, n) dst[i] += src[i];
}

int kv_cuda_add(kv_backend *b, float *dst, const float *src, size_t n, kv_error *err) {
    if (n == 0) return 0;
    add_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(dst, src, n);
    char what[48];
    snprintf(what, sizeof what, "add [%zu]", n);
    return kv_cuda_launched(what, err);
}

// kv_adamw's arithmetic per element, in double; c1, c2, decay computed once on the host
__global__ void adamw_kernel(float *w, const float *g, float *m, float *v, size_t n, double beta1,
                             double beta2, double eps, double lr, double c1, double c2,
                             double decay) {
    KV_CUDA_FOR(i, n) {
        const double gi = g[i];
        const double mi = beta1 * m[i] + (1.0 - beta1) * gi;
        const double vi = beta2 * v[i] + (1.0 - beta2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        const double wi = (double)w[i] * decay;
        w[i] = (float)(wi - lr * (mi / c1) / (sqrt(vi / c2) + eps));
    }
}

int kv_cuda_adamw(kv_backend *b, float *w, const float *g, float *m, float *v, size_t n,
                  const kv_adamw_step *s, kv_error *err) {
    if (n == 0) return 0;
    const double c1 = 1.0 - pow(s->beta1, (double)s->t), c2 = 1.0 - pow(s->beta2, (double)s->t);
    const double decay = 1.0 - s->lr * s->weight_decay;
    adamw_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(
        w, g, m, v, n, s->beta1, s->beta2, s->eps, s->lr, c1, c2, decay);
    char what[64];
    snprintf(what, sizeof what, "adamw [%zu] step %ld", n, s->t);
    return kv_cuda_launched(what, err);
}
