/* Sampling and the generation loop: prefill the prompt, then one decode step per new token.
 * Sampling: temperature 0 = greedy (argmax, first index on ties); otherwise softmax(logits / T),
 * restricted to the smallest set of most likely tokens whose probability exceeds top_p when
 * 0 < top_p < 1, drawn with a seeded xorshift64* generator (same seed, same tokens). */
#ifndef KV_GENERATE_H
#define KV_GENERATE_H

#include <stdint.h>

#include "runtime/forward.h"

typedef struct {
    int index;
    float prob;
} kv_candidate;

typedef struct {
    int vocab;
    float temperature; /* 0: greedy */
    float top_p; /* (0, 1): nucleus; otherwise off */
    uint64_t rng; /* xorshift64* state, never 0 */
    kv_candidate *cand; /* [vocab] top-p scratch */
} kv_sampler;

int kv_sampler_init(kv_sampler *s, int vocab, float temperature, float top_p, uint64_t seed,
                    kv_error *err);
void kv_sampler_free(kv_sampler *s);
/* next token from logits[vocab] (overwritten with probabilities unless greedy) */
int kv_sampler_next(kv_sampler *s, float *logits);
int kv_argmax(const float *x, int n);
float kv_rng_uniform(uint64_t *state); /* [0, 1) */

/* called for every generated token (prev = the token before it); non-zero stops generation */
typedef int (*kv_token_fn)(void *ctx, int prev, int token);

typedef struct {
    int max_new_tokens; /* stop after this many (>= 0) */
    kv_prefill prefill; /* for maps with upward layers */
    const int *stop_ids; /* generation stops before emitting any of these (EOS, ...) */
    int n_stop;
} kv_generate_opts;

typedef struct {
    int n_prompt, n_generated;
    int stopped_on; /* the stop id that ended generation, or -1 */
    double prefill_s, decode_s; /* seconds in the prompt's forward / in decode steps */
} kv_generate_stats;

/* resets s, runs prompt[n_prompt] (n_prompt >= 1), then samples up to max_new_tokens tokens,
 * calling on_token (may be NULL) for each. The context must hold n_prompt + max_new_tokens - 1
 * positions. out_ids (may be NULL) receives the generated ids (room for max_new_tokens). */
int kv_generate(kv_state *s, kv_sampler *smp, const int32_t *prompt, int n_prompt,
                const kv_generate_opts *o, kv_token_fn on_token, void *ctx, int32_t *out_ids,
                kv_generate_stats *st, kv_error *err);

#endif
