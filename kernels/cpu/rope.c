/* Rotary position embedding, HF rotate-half layout, with HF "llama3" frequency scaling. */
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>

int kv_rope_inv_freq(double *inv_freq, int head_dim, const kv_rope_config *c, kv_error *err) {
    if (head_dim <= 0 || head_dim % 2)
        return kv_fail(err, KV_EINVAL, "rope: head_dim %d must be positive and even", head_dim);
    if (!(c->theta > 0.0) || !isfinite(c->theta))
        return kv_fail(err, KV_EINVAL, "rope: rope_theta %g must be positive", c->theta);
    if (c->scaling == KV_ROPE_LLAMA3) {
        if (!(c->factor > 0.0) || !(c->low_freq_factor > 0.0) || !(c->high_freq_factor > 0.0) ||
            c->original_max_position <= 0 || !isfinite(c->factor))
            return kv_fail(err, KV_EINVAL,
                           "rope_scaling (llama3): factor %g, low_freq_factor %g, "
                           "high_freq_factor %g, original_max_position_embeddings %d must all be "
                           "positive",
                           c->factor, c->low_freq_factor, c->high_freq_factor,
                           c->original_max_position);
        if (!(c->high_freq_factor > c->low_freq_factor))
            return kv_fail(err, KV_EINVAL,
                           "rope_scaling (llama3): high_freq_factor %g must exceed "
                           "low_freq_factor %g",
                           c->high_freq_factor, c->low_freq_factor);
    } else if (c->scaling != KV_ROPE_PLAIN) {
        return kv_fail(err, KV_EUNSUPPORTED, "rope: unknown scaling kind %d", (int)c->scaling);
    }
    const int half = head_dim / 2;
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < half; i++) {
        double f = 1.0 / pow(c->theta, (double)(2 * i) / head_dim);
        if (c->scaling == KV_ROPE_LLAMA3) {
            double ctx = c->original_max_position;
            double wavelen = 2.0 * pi / f;
            double low_wavelen = ctx / c->low_freq_factor; /* longer: fully scaled */
            double high_wavelen = ctx / c->high_freq_factor; /* shorter: unchanged */
            if (wavelen > low_wavelen) {
                f = f / c->factor;
            } else if (!(wavelen < high_wavelen)) {
                double s = (ctx / wavelen - c->low_freq_factor) /
                           (c->high_freq_factor - c->low_freq_factor);
                f = (1.0 - s) * f / c->factor + s * f;
            }
        }
        inv_freq[i] = f;
    }
    return 0;
}

int kv_rope_table_init(kv_rope_table *t, int head_dim, int max_pos, const kv_rope_config *c,
                       kv_error *err) {
    *t = (kv_rope_table){0};
    if (max_pos <= 0) return kv_fail(err, KV_EINVAL, "rope: max positions %d", max_pos);
    if (head_dim <= 0 || head_dim % 2)
        return kv_fail(err, KV_EINVAL, "rope: head_dim %d must be positive and even", head_dim);
    const int half = head_dim / 2;
    double *inv_freq = malloc(sizeof(double) * half);
    size_t n;
    if (!inv_freq || __builtin_mul_overflow((size_t)max_pos, (size_t)half, &n)) {
        free(inv_freq);
        return kv_fail(err, KV_ENOMEM, "rope: table for %d positions x %d", max_pos, half);
    }
    int rc = kv_rope_inv_freq(inv_freq, head_dim, c, err);
    if (rc) {
        free(inv_freq);
        return rc;
    }
    t->cos = malloc(sizeof(float) * n);
    t->sin = malloc(sizeof(float) * n);
    if (!t->cos || !t->sin) {
        free(inv_freq);
        kv_rope_table_free(t);
        return kv_fail(err, KV_ENOMEM, "rope: table for %d positions x %d", max_pos, half);
    }
    for (int p = 0; p < max_pos; p++)
        for (int i = 0; i < half; i++) {
            double angle = (double)p * inv_freq[i];
            t->cos[(size_t)p * half + i] = (float)cos(angle);
            t->sin[(size_t)p * half + i] = (float)sin(angle);
        }
    free(inv_freq);
    t->head_dim = head_dim;
    t->max_pos = max_pos;
    return 0;
}

void kv_rope_table_free(kv_rope_table *t) {
    free(t->cos);
    free(t->sin);
    *t = (kv_rope_table){0};
}

/* rotates every head of x [T, n_heads, hd] by +angle (dir = 1) or -angle (dir = -1) */
static void rotate(float *x, int T, int n_heads, const int32_t *pos, const kv_rope_table *tab,
                   float dir) {
    const int hd = tab->head_dim, half = hd / 2;
    for (int t = 0; t < T; t++) {
        const float *cs = tab->cos + (size_t)pos[t] * half;
        const float *sn = tab->sin + (size_t)pos[t] * half;
        for (int h = 0; h < n_heads; h++) {
            float *a = x + ((size_t)t * n_heads + h) * hd, *b = a + half;
            for (int i = 0; i < half; i++) {
                float c = cs[i], s = dir * sn[i];
                float x0 = a[i], x1 = b[i];
                a[i] = x0 * c - x1 * s;
                b[i] = x1 * c + x0 * s;
            }
        }
    }
}

void kv_rope(float *x, int T, int n_heads, const int32_t *pos, const kv_rope_table *table) {
    rotate(x, T, n_heads, pos, table, 1.0f);
}

void kv_rope_backward(float *dx, int T, int n_heads, const int32_t *pos,
                      const kv_rope_table *table) {
    rotate(dx, T, n_heads, pos, table, -1.0f);
}
