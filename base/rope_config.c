/* Validation, names and attention factors of kv_rope_config (base/rope_config.h); the
 * frequencies themselves are kernels' (kernels/cpu/rope.c). */
#include "base/rope_config.h"

#include <math.h>

static int positive(double v) { return v > 0.0 && isfinite(v); }

int kv_rope_check(int head_dim, const kv_rope_config *c, kv_error *err) {
    if (head_dim <= 0 || head_dim % 2)
        return kv_fail(err, KV_EINVAL, "rope: head_dim %d must be positive and even", head_dim);
    if (!positive(c->theta))
        return kv_fail(err, KV_EINVAL, "rope: rope_theta %g must be positive", c->theta);
    switch (c->scaling) {
    case KV_ROPE_PLAIN: return 0;
    case KV_ROPE_LLAMA3:
        if (!positive(c->factor) || !positive(c->low_freq_factor) ||
            !positive(c->high_freq_factor) || c->original_max_position <= 0)
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
        return 0;
    case KV_ROPE_LINEAR:
    case KV_ROPE_DYNAMIC:
    case KV_ROPE_YARN:
        if (!(c->factor >= 1.0) || !isfinite(c->factor))
            return kv_fail(err, KV_EINVAL, "rope_scaling (%s): factor %g must be >= 1",
                           kv_rope_scaling_name(c->scaling), c->factor);
        if (c->scaling == KV_ROPE_LINEAR) return 0;
        if (c->original_max_position <= 0)
            return kv_fail(err, KV_EINVAL,
                           "rope_scaling (%s): original_max_position_embeddings %d must be "
                           "positive",
                           kv_rope_scaling_name(c->scaling), c->original_max_position);
        if (c->scaling == KV_ROPE_DYNAMIC) {
            if (head_dim <= 2)
                return kv_fail(err, KV_EINVAL,
                               "rope_scaling (dynamic): head_dim %d must exceed 2 (the base is "
                               "raised to hd/(hd-2))",
                               head_dim);
            return 0;
        }
        if (!positive(c->beta_fast) || !positive(c->beta_slow) || c->beta_fast < c->beta_slow)
            return kv_fail(err, KV_EINVAL,
                           "rope_scaling (yarn): beta_fast %g and beta_slow %g must be positive, "
                           "beta_fast >= beta_slow",
                           c->beta_fast, c->beta_slow);
        if (c->mscale < 0.0 || c->mscale_all_dim < 0.0 || !isfinite(c->mscale) ||
            !isfinite(c->mscale_all_dim) || c->attention_factor < 0.0 ||
            !isfinite(c->attention_factor))
            return kv_fail(err, KV_EINVAL,
                           "rope_scaling (yarn): mscale %g, mscale_all_dim %g, attention_factor "
                           "%g must be finite and not negative",
                           c->mscale, c->mscale_all_dim, c->attention_factor);
        return 0;
    case KV_ROPE_LONGROPE:
        if (c->n_factors != head_dim / 2)
            return kv_fail(err, KV_EINVAL,
                           "rope_scaling (longrope): %d short/long factors, head_dim %d needs %d",
                           c->n_factors, head_dim, head_dim / 2);
        for (int i = 0; i < c->n_factors; i++)
            if (!positive(c->short_factor[i]) || !positive(c->long_factor[i]))
                return kv_fail(err, KV_EINVAL,
                               "rope_scaling (longrope): short_factor[%d] %g / long_factor[%d] %g "
                               "must be positive",
                               i, c->short_factor[i], i, c->long_factor[i]);
        if (c->original_max_position <= 1 || !positive(c->factor) || c->attention_factor < 0.0 ||
            !isfinite(c->attention_factor))
            return kv_fail(err, KV_EINVAL,
                           "rope_scaling (longrope): original_max_position_embeddings %d must "
                           "exceed 1, factor %g be positive, attention_factor %g not negative",
                           c->original_max_position, c->factor, c->attention_factor);
        return 0;
    }
    return kv_fail(err, KV_EUNSUPPORTED, "rope: unknown scaling kind %d", (int)c->scaling);
}

const char *kv_rope_scaling_name(kv_rope_scaling s) {
    switch (s) {
    case KV_ROPE_PLAIN: return "default";
    case KV_ROPE_LLAMA3: return "llama3";
    case KV_ROPE_LINEAR: return "linear";
    case KV_ROPE_DYNAMIC: return "dynamic";
    case KV_ROPE_YARN: return "yarn";
    case KV_ROPE_LONGROPE: return "longrope";
    }
    return "unknown";
}

/* YaRN's 0.1*m*ln(s) + 1 (1 for s <= 1) */
static double yarn_mscale(double s, double m) { return s <= 1.0 ? 1.0 : 0.1 * m * log(s) + 1.0; }

double kv_rope_attention_factor(const kv_rope_config *c) {
    if (c->scaling == KV_ROPE_YARN) {
        if (c->attention_factor > 0.0) return c->attention_factor;
        if (c->mscale > 0.0 && c->mscale_all_dim > 0.0)
            return yarn_mscale(c->factor, c->mscale) / yarn_mscale(c->factor, c->mscale_all_dim);
        return yarn_mscale(c->factor, 1.0);
    }
    if (c->scaling == KV_ROPE_LONGROPE) {
        if (c->attention_factor > 0.0) return c->attention_factor;
        if (c->factor <= 1.0) return 1.0;
        return sqrt(1.0 + log(c->factor) / log((double)c->original_max_position));
    }
    return 1.0;
}
