/* RMSNorm (HF LlamaRMSNorm, float32) forward and backward, and the embedding row copy. */
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>

/* 1 / sqrt(mean(x^2) + eps), the sum of squares in double */
static float inv_rms(const float *x, int dim, float eps) {
    double ss = 0.0;
    for (int i = 0; i < dim; i++) ss += (double)x[i] * x[i];
    return (float)(1.0 / sqrt(ss / dim + (double)eps));
}

void kv_rmsnorm(float *out, const float *x, const float *w, int T, int dim, float eps) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * dim;
        float *yr = out + (size_t)t * dim;
        float r = inv_rms(xr, dim, eps);
        for (int i = 0; i < dim; i++) yr[i] = w[i] * (xr[i] * r);
    }
}

/* y_i = w_i x_i r, r = (mean(x^2) + eps)^(-1/2):
 * dL/dx_i = r w_i g_i - x_i r^3 / dim * sum_j g_j w_j x_j;  dL/dw_i = g_i x_i r */
void kv_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                         int T, int dim, float eps) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * dim, *g = dout + (size_t)t * dim;
        float r = inv_rms(xr, dim, eps);
        if (dw)
            for (int i = 0; i < dim; i++) dw[i] += g[i] * xr[i] * r;
        if (dx) {
            double gwx = 0.0;
            for (int i = 0; i < dim; i++) gwx += (double)g[i] * w[i] * xr[i];
            float c = (float)((double)r * r * r * gwx / dim);
            float *dxr = dx + (size_t)t * dim;
            for (int i = 0; i < dim; i++) dxr[i] += r * w[i] * g[i] - xr[i] * c;
        }
    }
}

int kv_embedding(float *out, const float *table, int vocab, int dim, const int32_t *ids, int T,
                 kv_error *err) {
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= vocab)
            return kv_fail(err, KV_EINVAL, "embedding: token id %d at position %d outside [0, %d)",
                           (int)ids[t], t, vocab);
    for (int t = 0; t < T; t++)
        memcpy(out + (size_t)t * dim, table + (size_t)ids[t] * dim, sizeof(float) * dim);
    return 0;
}
