/* AdamW hyper-parameters (decoupled weight decay, as torch.optim.AdamW) and the learning-rate
 * schedule. The update itself runs on the backend (kernels/backend.h: adamw, kv_adamw_step;
 * optim.h): one update of w[n] at step t (1-based) with gradient g:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   w -= lr * wd * w;  w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * Moments are float; the arithmetic of one element is double. */
#ifndef KV_ADAMW_H
#define KV_ADAMW_H

typedef struct {
    double beta1, beta2, eps, weight_decay;
} adamw_hparams;

typedef enum { LR_LINEAR = 0, LR_COSINE = 1, LR_CONSTANT = 2 } lr_decay;

/* learning rate of step s (0-based) out of total: linear warm-up lr*(s+1)/warmup over the first
 * `warmup` steps, then linear decay lr*(total-s)/(total-warmup) or cosine decay
 * lr*0.5*(1+cos(pi*(s-warmup)/(total-warmup))), or constant. */
double lr_at(long s, long total, long warmup, double lr, lr_decay decay);

#endif
