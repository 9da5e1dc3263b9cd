/* The learning-rate schedule (adamw.h). */
#include "transform/train/adamw.h"

#include <math.h>

double lr_at(long s, long total, long warmup, double lr, lr_decay decay) {
    if (s < warmup) return lr * (double)(s + 1) / (double)warmup;
    if (decay == LR_CONSTANT || total <= warmup) return lr;
    const double span = (double)(total - warmup), done = (double)(s - warmup);
    if (decay == LR_COSINE) return lr * 0.5 * (1.0 + cos(M_PI * done / span));
    return lr * (span - done) / span;
}
