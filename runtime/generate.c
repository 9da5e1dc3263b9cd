#include "runtime/generate.h"

#include <math.h>
#include <stdlib.h>
#include <time.h>

int kv_sampler_init(kv_sampler *s, int vocab, float temperature, float top_p, uint64_t seed,
                    kv_error *err) {
    *s = (kv_sampler){0};
    if (vocab < 1) return kv_fail(err, KV_EINVAL, "sampler: vocabulary of %d", vocab);
    if (!(temperature >= 0.0f) || !isfinite(temperature))
        return kv_fail(err, KV_EINVAL, "sampler: temperature %g must be >= 0", (double)temperature);
    if (!(top_p >= 0.0f && top_p <= 1.0f))
        return kv_fail(err, KV_EINVAL, "sampler: top-p %g must be in [0, 1]", (double)top_p);
    s->cand = malloc(sizeof *s->cand * (size_t)vocab);
    if (!s->cand) return kv_fail(err, KV_ENOMEM, "sampler: out of memory");
    s->vocab = vocab;
    s->temperature = temperature;
    s->top_p = top_p;
    /* splitmix64 of the seed: any seed (0 too) gives a non-zero, well-mixed state */
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    s->rng = z ? z : 1;
    return 0;
}

void kv_sampler_free(kv_sampler *s) {
    free(s->cand);
    *s = (kv_sampler){0};
}

float kv_rng_uniform(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (float)((x * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f; /* 24 bits */
}

/* The first i with x[i] > x[best] for every best before it, as the one-pass loop finds it:
 * 0 when x[0] is NaN (nothing compares above it) or nothing beats x[0], else the first index of
 * the largest non-NaN value. ARGMAX_LANES running maxima (lane j sees i = j mod ARGMAX_LANES)
 * then the lanes' largest value at its smallest index: the loop reloading x[best] ran one
 * element per load-compare-move chain, some 170 us of a 110M decode step's 5 ms. */
enum { ARGMAX_LANES = 8 };

int kv_argmax(const float *x, int n) {
    if (n < 1) return 0;
    float lane_max[ARGMAX_LANES];
    int lane_at[ARGMAX_LANES];
    for (int j = 0; j < ARGMAX_LANES; j++) lane_max[j] = x[0], lane_at[j] = 0;
    int i = 1;
    for (; i + ARGMAX_LANES <= n; i += ARGMAX_LANES)
        for (int j = 0; j < ARGMAX_LANES; j++)
            if (x[i + j] > lane_max[j]) lane_max[j] = x[i + j], lane_at[j] = i + j;
    for (; i < n; i++)
        if (x[i] > lane_max[0]) lane_max[0] = x[i], lane_at[0] = i;
    int best = lane_at[0];
    float best_max = lane_max[0];
    for (int j = 1; j < ARGMAX_LANES; j++)
        if (lane_max[j] > best_max || (lane_max[j] == best_max && lane_at[j] < best))
            best_max = lane_max[j], best = lane_at[j];
    return best;
}

static int by_prob_desc(const void *a, const void *b) {
    const kv_candidate *x = a, *y = b;
    if (x->prob != y->prob) return x->prob > y->prob ? -1 : 1;
    return x->index - y->index;
}

/* probs[n] sum to 1: draws an index */
static int sample_all(const float *probs, int n, float r) {
    float cum = 0.0f;
    for (int i = 0; i < n; i++) {
        cum += probs[i];
        if (r < cum) return i;
    }
    return n - 1;
}

/* nucleus: smallest prefix of the sorted distribution with mass > top_p */
static int sample_top_p(kv_sampler *s, const float *probs, float r) {
    const int n = s->vocab;
    /* a token below (1 - p) / (n - 1) cannot be in the nucleus */
    const float cutoff = n > 1 ? (1.0f - s->top_p) / (float)(n - 1) : 0.0f;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (probs[i] >= cutoff) s->cand[m++] = (kv_candidate){i, probs[i]};
    qsort(s->cand, (size_t)m, sizeof *s->cand, by_prob_desc);
    float mass = 0.0f;
    int last = m - 1;
    for (int i = 0; i < m; i++) {
        mass += s->cand[i].prob;
        if (mass > s->top_p) {
            last = i;
            break;
        }
    }
    const float target = r * mass;
    float cum = 0.0f;
    for (int i = 0; i <= last; i++) {
        cum += s->cand[i].prob;
        if (target < cum) return s->cand[i].index;
    }
    return s->cand[last].index;
}

int kv_sampler_next(kv_sampler *s, float *logits) {
    if (s->temperature == 0.0f) return kv_argmax(logits, s->vocab);
    for (int i = 0; i < s->vocab; i++) logits[i] /= s->temperature;
    kv_softmax(logits, 1, s->vocab);
    const float r = kv_rng_uniform(&s->rng);
    if (s->top_p > 0.0f && s->top_p < 1.0f) return sample_top_p(s, logits, r);
    return sample_all(logits, s->vocab, r);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int is_stop(const kv_generate_opts *o, int id) {
    for (int i = 0; i < o->n_stop; i++)
        if (o->stop_ids[i] == id) return 1;
    return 0;
}

int kv_generate(kv_state *s, kv_sampler *smp, const int32_t *prompt, int n_prompt,
                const kv_generate_opts *o, kv_token_fn on_token, void *ctx, int32_t *out_ids,
                kv_generate_stats *st, kv_error *err) {
    kv_generate_stats local;
    if (!st) st = &local;
    *st = (kv_generate_stats){.n_prompt = n_prompt, .stopped_on = -1};
    if (n_prompt < 1) return kv_fail(err, KV_EINVAL, "generate: empty prompt");
    if (o->max_new_tokens < 0) return kv_fail(err, KV_EINVAL, "generate: negative token count");
    if (n_prompt + (o->max_new_tokens > 0 ? o->max_new_tokens - 1 : 0) > s->max_seq)
        return kv_fail(
            err, KV_EINVAL,
            "generate: %d prompt tokens + %d new need %d positions, the context holds %d", n_prompt,
            o->max_new_tokens, n_prompt + o->max_new_tokens - 1, s->max_seq);
    kv_state_reset(s);
    const kv_forward_opts fo = {.logits = KV_LOGITS_LAST, .prefill = o->prefill};
    double t = now_s();
    int rc = kv_forward(s, prompt, n_prompt, &fo, s->logits, err);
    st->prefill_s = now_s() - t;
    if (rc) return rc;
    int prev = prompt[n_prompt - 1];
    t = now_s();
    for (int i = 0; i < o->max_new_tokens; i++) {
        if (i > 0) {
            const int32_t tok = prev;
            if ((rc = kv_forward(s, &tok, 1, &fo, s->logits, err))) break;
        }
        const int next = kv_sampler_next(smp, s->logits);
        if (is_stop(o, next)) {
            st->stopped_on = next;
            break;
        }
        if (out_ids) out_ids[i] = next;
        st->n_generated++;
        if (on_token && on_token(ctx, prev, next)) break;
        prev = next;
    }
    st->decode_s = now_s() - t;
    return rc;
}
