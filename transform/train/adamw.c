/* AdamW update, learning-rate schedule, gradient norm and clipping. */
#include "transform/train/adamw.h"

#include <math.h>

void adamw_update(float *w, const float *g, float *m, float *v, size_t n,
                  const adamw_hparams *h, long t, double lr) {
    const double c1 = 1.0 - pow(h->beta1, (double)t), c2 = 1.0 - pow(h->beta2, (double)t);
    const double decay = 1.0 - lr * h->weight_decay;
    for (size_t i = 0; i < n; i++) {
        const double gi = g[i];
        const double mi = h->beta1 * m[i] + (1.0 - h->beta1) * gi;
        const double vi = h->beta2 * v[i] + (1.0 - h->beta2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        const double wi = (double)w[i] * decay;
        w[i] = (float)(wi - lr * (mi / c1) / (sqrt(vi / c2) + h->eps));
    }
}

double lr_at(long s, long total, long warmup, double lr, lr_decay decay) {
    if (s < warmup) return lr * (double)(s + 1) / (double)warmup;
    if (decay == LR_CONSTANT || total <= warmup) return lr;
    const double span = (double)(total - warmup), done = (double)(s - warmup);
    if (decay == LR_COSINE) return lr * 0.5 * (1.0 + cos(M_PI * done / span));
    return lr * (span - done) / span;
}

double grad_global_norm(float *const *g, const size_t *n, int parts) {
    double s = 0;
    for (int p = 0; p < parts; p++)
        for (size_t i = 0; i < n[p]; i++) s += (double)g[p][i] * g[p][i];
    return sqrt(s);
}

void grad_scale_all(float *const *g, const size_t *n, int parts, float k) {
    for (int p = 0; p < parts; p++)
        for (size_t i = 0; i < n[p]; i++) g[p][i] *= k;
}
