// Distillation losses, twin of kernels/cpu/loss.c: temperature KL on logits, next-token CE, MSE.
// One block per logits row; every reduction in double as on the CPU. The per-row (or per-block)
// values go to scratch, come back to the host and are added there in row order, so *host_loss
// is complete when the op returns.
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cuda/kv_cuda.h"

// log-sum-exp of x[n] * inv_temp in double (the block's threads; all get the result)
__device__ __forceinline__ double scaled_lse(const float *x, int n, double inv_temp) {
    double m = -INFINITY;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmax(m, (double)x[i] * inv_temp);
    m = kv_block_max(m);
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += exp((double)x[i] * inv_temp - m);
    return m + log(kv_block_sum(s));
}

// row t: row_loss[t] = w_t temp^2 KL(p_t || q_t); grad[t] += gscale w_t (q - p) when grad != NULL;
// weights NULL: w_t = 1 (and the unweighted arithmetic); a row with w_t = 0 is skipped
__global__ void distill_kl_kernel(double *row_loss, float *grad, const float *student,
                                  const float *teacher, const float *weights, int V,
                                  double inv_temp, double tt, double gscale) {
    const double w = weights ? (double)weights[blockIdx.x] : 1.0;
    if (w == 0.0) { // block-uniform
        if (threadIdx.x == 0) row_loss[blockIdx.x] = 0.0;
        return;
    }
    const size_t off = (size_t)blockIdx.x * V;
    const float *zs = student + off, *zt = teacher + off;
    const double lse_s = scaled_lse(zs, V, inv_temp);
    const double lse_t = scaled_lse(zt, V, inv_temp);
    double kl = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const double log_p = (double)zt[i] * inv_temp - lse_t; // teacher
        const double log_q = (double)zs[i] * inv_temp - lse_s; // student
        const double p = exp(log_p);
        kl += p * (log_p - log_q);
        if (grad && weights) grad[off + i] += (float)(gscale * w * (exp(log_q) - p));
        else if (grad) grad[off + i] += (float)(gscale * (exp(log_q) - p));
    }
    kl = kv_block_sum(kl);
    if (threadIdx.x == 0) row_loss[blockIdx.x] = weights ? w * tt * kl : tt * kl;
}

// downloads rows[n] and returns their sum in row order through *sum
static int rows_sum(kv_backend *b, double *sum, const double *rows, int n, const char *what,
                    kv_error *err) {
    return kv_cuda_partials_sum(b, sum, rows, (unsigned)n, what, err);
}

int kv_cuda_distill_kl(kv_backend *b, double *host_loss, float *dstudent, const float *student,
                       const float *teacher, const float *weights, int T, int V, float temp,
                       float grad_scale, kv_error *err) {
    char what[80];
    snprintf(what, sizeof what, "distill_kl [%d x %d] at temperature %g", T, V, (double)temp);
    if (T <= 0 || V <= 0) return kv_fail(err, KV_EINVAL, "cuda %s: empty logits", what);
    void *rows = NULL;
    int rc = kv_cuda_scratch(b, &rows, sizeof(double) * T, what, err);
    if (rc) return rc;
    const double inv_temp = 1.0 / (double)temp, tt = (double)temp * temp;
    const double gscale = (double)grad_scale * temp / T;
    distill_kl_kernel<<<T, KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(
        (double *)rows, dstudent, student, teacher, weights, V, inv_temp, tt, gscale);
    rc = kv_cuda_launched(what, err);
    double total = 0.0;
    if (!rc) rc = rows_sum(b, &total, (const double *)rows, T, what, err);
    if (!rc && host_loss) *host_loss = total / T;
    return rc;
}

// row (b, t < T-1): row_loss = -log softmax(logits[row])[target], target = tokens[row + 1];
// grad[row] += gscale (softmax - onehot). A target outside [0, V) sets *bad and the row is skipped.
__global__ void next_token_ce_kernel(double *row_loss, int *bad, float *grad, const float *logits,
                                     const int32_t *tokens, int T, int V, double gscale) {
    const int b = blockIdx.x / (T - 1), t = blockIdx.x % (T - 1);
    const size_t row = (size_t)b * T + t;
    const float *z = logits + row * V;
    const int target = tokens[row + 1];
    if (target < 0 || target >= V) { // block-uniform
        if (threadIdx.x == 0) {
            *bad = 1;
            row_loss[blockIdx.x] = 0.0;
        }
        return;
    }
    float m = -INFINITY; // the CPU's logsumexp: max in float, sum and log in double
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, z[i]);
    m = kv_block_max(m);
    double s = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += exp((double)z[i] - (double)m);
    const double lse = (double)m + log(kv_block_sum(s));
    if (threadIdx.x == 0) row_loss[blockIdx.x] = lse - (double)z[target];
    if (!grad) return;
    float *g = grad + row * V;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        g[i] += (float)(gscale * exp((double)z[i] - lse));
        if (i == target) g[i] -= (float)gscale;
    }
}

int kv_cuda_next_token_ce(kv_backend *b, double *host_loss, float *dlogits, const float *logits,
                          const int32_t *tokens, int B, int T, int V, float grad_scale,
                          kv_error *err) {
    char what[80];
    snprintf(what, sizeof what, "next_token_ce [%d x %d x %d]", B, T, V);
    const long n_pred = (long)B * (T - 1);
    if (n_pred <= 0 || V <= 0) {
        if (host_loss) *host_loss = 0.0;
        return 0;
    }
    if (n_pred > 0x7fffffffL) return kv_fail(err, KV_EUNSUPPORTED, "cuda %s: too many rows", what);
    void *scratch = NULL;
    const size_t rows_bytes = sizeof(double) * (size_t)n_pred;
    int rc = kv_cuda_scratch(b, &scratch, rows_bytes + sizeof(int), what, err);
    if (rc) return rc;
    double *rows = (double *)scratch;
    int *bad = (int *)((char *)scratch + rows_bytes);
    cudaStream_t st = kv_cuda_stream(b);
    rc = kv_cuda_status(cudaMemsetAsync(bad, 0, sizeof(int), st), what, err);
    if (rc) return rc;
    next_token_ce_kernel<<<(unsigned)n_pred, KV_CUDA_BLOCK, 0, st>>>(
        rows, bad, dlogits, logits, tokens, T, V, (double)grad_scale / (double)n_pred);
    rc = kv_cuda_launched(what, err);
    int host_bad = 0;
    if (!rc)
        rc = kv_cuda_status(
            cudaMemcpyAsync(&host_bad, bad, sizeof(int), cudaMemcpyDeviceToHost, st), what, err);
    double total = 0.0;
    if (!rc) rc = rows_sum(b, &total, rows, (int)n_pred, what, err); // waits for the stream
    if (rc) return rc;
    if (host_bad)
        return kv_fail(err, KV_EINVAL, "cuda %s: a target token id is outside [0, %d)", what, V);
    if (host_loss) *host_loss = total / (double)n_pred;
    return 0;
}

// partial sums of (student - teacher)^2 per block; dstudent += gscale * d
__global__ void mse_kernel(double *partials, float *grad, const float *student,
                           const float *teacher, size_t n, double gscale) {
    double s = 0.0;
    KV_CUDA_FOR(i, n) {
        const double d = (double)student[i] - (double)teacher[i];
        s += d * d;
        if (grad) grad[i] += (float)(gscale * d);
    }
    s = kv_block_sum(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

int kv_cuda_mse(kv_backend *b, double *host_loss, float *dstudent, const float *student,
                const float *teacher, size_t n, float grad_scale, kv_error *err) {
    char what[48];
    snprintf(what, sizeof what, "mse [%zu]", n);
    if (n == 0) return kv_fail(err, KV_EINVAL, "cuda %s: no elements", what);
    const unsigned blocks = kv_cuda_partial_blocks(n);
    void *partials = NULL;
    int rc = kv_cuda_scratch(b, &partials, sizeof(double) * blocks, what, err);
    if (rc) return rc;
    mse_kernel<<<blocks, KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(
        (double *)partials, dstudent, student, teacher, n, 2.0 * (double)grad_scale / (double)n);
    rc = kv_cuda_launched(what, err);
    double sum = 0.0;
    if (!rc) rc = kv_cuda_partials_sum(b, &sum, (const double *)partials, blocks, what, err);
    if (!rc && host_loss) *host_loss = sum / (double)n;
    return rc;
}
