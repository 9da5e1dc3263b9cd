/* AdamW update, learning-rate schedule, gradient norm and clipping. */
#include "transform/train/adamw.h"

#include <math.h>

#include "kernels/kernels.h"

void adamw_update(float *w, const float *g, float *m, float *v, size_t n,
                  const adamw_hparams *h, long t, double lr) {
    kv_adamw(w, g, m, v, n, h->beta1, h->beta2, h->eps, h->weight_decay, t, lr);
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
    for (int p = 0; p < parts; p++) s = kv_sumsq(s, g[p], n[p]);
    return sqrt(s);
}

void grad_scale_all(float *const *g, const size_t *n, int parts, float k) {
    for (int p = 0; p < parts; p++) kv_scale(g[p], k, n[p]);
}
