/* Rotary position embedding, HF rotate-half layout, with HF's rope_scaling kinds (llama3,
 * linear, dynamic NTK, YaRN, LongRoPE). */
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>

static const double pi = 3.14159265358979323846;

/* YaRN's dimension index at which a frequency makes `rotations` turns over the context */
static double yarn_correction_dim(double rotations, int hd, double theta, int context) {
    return hd * log(context / (rotations * 2.0 * pi)) / (2.0 * log(theta));
}

static void yarn_inv_freq(double *f, int hd, const kv_rope_config *c) {
    double low = yarn_correction_dim(c->beta_fast, hd, c->theta, c->original_max_position);
    double high = yarn_correction_dim(c->beta_slow, hd, c->theta, c->original_max_position);
    if (c->truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0.0) low = 0.0;
    if (high > hd - 1) high = hd - 1;
    if (low == high) high += 0.001;
    for (int i = 0; i < hd / 2; i++) {
        double ramp = (i - low) / (high - low); /* 0: keep f_i, 1: f_i / factor */
        ramp = ramp < 0.0 ? 0.0 : ramp > 1.0 ? 1.0 : ramp;
        f[i] = f[i] / c->factor * ramp + f[i] * (1.0 - ramp);
    }
}

static void llama3_inv_freq(double *f, int hd, const kv_rope_config *c) {
    const double ctx = c->original_max_position;
    const double low_wavelen = ctx / c->low_freq_factor; /* longer: fully scaled */
    const double high_wavelen = ctx / c->high_freq_factor; /* shorter: unchanged */
    for (int i = 0; i < hd / 2; i++) {
        double wavelen = 2.0 * pi / f[i];
        if (wavelen > low_wavelen) {
            f[i] = f[i] / c->factor;
        } else if (!(wavelen < high_wavelen)) {
            double s =
                (ctx / wavelen - c->low_freq_factor) / (c->high_freq_factor - c->low_freq_factor);
            f[i] = (1.0 - s) * f[i] / c->factor + s * f[i];
        }
    }
}

int kv_rope_inv_freq_at(double *inv_freq, int head_dim, const kv_rope_config *c, long seq_len,
                        kv_error *err) {
    int rc = kv_rope_check(head_dim, c, err);
    if (rc) return rc;
    const int half = head_dim / 2;
    const int beyond = seq_len > c->original_max_position;
    double theta = c->theta;
    if (c->scaling == KV_ROPE_DYNAMIC && beyond) /* dynamic NTK: a larger base */
        theta *= pow(c->factor * (double)seq_len / c->original_max_position - (c->factor - 1.0),
                     (double)head_dim / (head_dim - 2));
    for (int i = 0; i < half; i++) inv_freq[i] = 1.0 / pow(theta, (double)(2 * i) / head_dim);
    switch (c->scaling) {
    case KV_ROPE_LLAMA3: llama3_inv_freq(inv_freq, head_dim, c); break;
    case KV_ROPE_LINEAR:
        for (int i = 0; i < half; i++) inv_freq[i] /= c->factor;
        break;
    case KV_ROPE_YARN: yarn_inv_freq(inv_freq, head_dim, c); break;
    case KV_ROPE_LONGROPE: {
        const double *ext = beyond ? c->long_factor : c->short_factor;
        for (int i = 0; i < half; i++) inv_freq[i] /= ext[i];
        break;
    }
    default: break;
    }
    return 0;
}

int kv_rope_inv_freq(double *inv_freq, int head_dim, const kv_rope_config *c, kv_error *err) {
    return kv_rope_inv_freq_at(inv_freq, head_dim, c, 0, err);
}

/* whether the frequencies depend on the sequence length (dynamic NTK, longrope) */
static int length_dependent(const kv_rope_config *c) {
    return c->scaling == KV_ROPE_DYNAMIC || c->scaling == KV_ROPE_LONGROPE;
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
    const double scale = kv_rope_attention_factor(c);
    for (int p = 0; p < max_pos && !rc; p++) {
        /* dynamic / longrope: row p is what HF uses when the sequence is p+1 long */
        if (length_dependent(c) && p + 1 > c->original_max_position)
            rc = kv_rope_inv_freq_at(inv_freq, head_dim, c, (long)p + 1, err);
        for (int i = 0; i < half; i++) {
            double angle = (double)p * inv_freq[i];
            double cs = cos(angle), sn = sin(angle);
            if (scale != 1.0) cs *= scale, sn *= scale;
            t->cos[(size_t)p * half + i] = (float)cs;
            t->sin[(size_t)p * half + i] = (float)sn;
        }
    }
    if (rc) {
        free(inv_freq);
        kv_rope_table_free(t);
        return rc;
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
