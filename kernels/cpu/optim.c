/* AdamW and the gradient-norm helpers (kernels.h, optimiser). */
#include "kernels/kernels.h"

#include <math.h>

void kv_adamw(float *w, const float *g, float *m, float *v, size_t n, double beta1, double beta2,
              double eps, double weight_decay, long t, double lr) {
    const double c1 = 1.0 - pow(beta1, (double)t), c2 = 1.0 - pow(beta2, (double)t);
    const double decay = 1.0 - lr * weight_decay;
    for (size_t i = 0; i < n; i++) {
        const double gi = g[i];
        const double mi = beta1 * m[i] + (1.0 - beta1) * gi;
        const double vi = beta2 * v[i] + (1.0 - beta2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        const double wi = (double)w[i] * decay;
        w[i] = (float)(wi - lr * (mi / c1) / (sqrt(vi / c2) + eps));
    }
}

double kv_sumsq(double acc, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) acc += (double)x[i] * x[i];
    return acc;
}

void kv_scale(float *x, float k, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] *= k;
}

void kv_add(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}
