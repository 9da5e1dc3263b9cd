/* AdamW (decoupled weight decay, as torch.optim.AdamW) and the learning-rate schedule.
 * One update of w[n] at step t (1-based) with gradient g:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   w -= lr * wd * w;  w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * Moments are float; the arithmetic of one element is double. */
#ifndef KV_ADAMW_H
#define KV_ADAMW_H

#include <stddef.h>

typedef struct {
    double beta1, beta2, eps, weight_decay;
} adamw_hparams;

void adamw_update(float *w, const float *g, float *m, float *v, size_t n,
                  const adamw_hparams *h, long t, double lr);

typedef enum { LR_LINEAR = 0, LR_COSINE = 1, LR_CONSTANT = 2 } lr_decay;

/* learning rate of step s (0-based) out of total: linear warm-up lr*(s+1)/warmup over the first
 * `warmup` steps, then linear decay lr*(total-s)/(total-warmup) or cosine decay
 * lr*0.5*(1+cos(pi*(s-warmup)/(total-warmup))), or constant. */
double lr_at(long s, long total, long warmup, double lr, lr_decay decay);

/* global L2 norm of the gradient parts g[i][0..n[i]) (double accumulation) */
double grad_global_norm(float *const *g, const size_t *n, int parts);
/* multiplies every part by k */
void grad_scale_all(float *const *g, const size_t *n, int parts, float k);

#endif
