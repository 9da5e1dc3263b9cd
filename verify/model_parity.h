/* Parity of two models' logits over the same token windows: one model on two devices (CPU
 * reference vs CUDA), or a student against its teacher on one device. Each window of ctx tokens
 * runs as one prefill with every position's logits; the report gathers max |a-b|, KL, argmax
 * agreement and each model's next-token perplexity over the windows. */
#ifndef KV_MODEL_PARITY_H
#define KV_MODEL_PARITY_H

#include <stdint.h>

#include "base/error.h"
#include "runtime/forward.h"
#include "runtime/model.h"
#include "runtime/ppl.h"
#include "verify/logits_parity.h"

typedef struct {
    int ctx; /* window length in positions (>= 2, <= both models' context) */
    int bos; /* BOS id opening each window, or -1 */
    int max_windows; /* 0: every window */
    int max_batch; /* tokens per pass (0: the whole window) */
    kv_dtype kv_cache_dtype; /* KV_F32 or KV_BF16, both models */
    kv_prefill prefill; /* multi-token passes over maps with upward layers */
} kv_model_parity_opts;

typedef struct {
    kv_logits_report logits; /* a vs b over every position of every window */
    int windows;
    long n_predicted; /* positions with a next token in their window */
    double nll_a, nll_b; /* mean next-token negative log-likelihood, nats (as kvrun --ppl) */
} kv_model_parity;

/* ids[n] (host, without BOS) split into the windows kvrun --ppl scores (runtime/ppl.h: with a
 * BOS, [BOS] + ctx-1 ids each), so ppl_a/ppl_b are what kvrun --ppl prints for the same ctx;
 * model a runs on backend ba, b on bb (the two may be one backend). The models must share the
 * vocabulary size. Errors name the model and window. */
int kv_model_parity_run(kv_model_parity *r, kv_backend *ba, const kv_model *a, kv_backend *bb,
                        const kv_model *b, const int32_t *ids, int n, const kv_model_parity_opts *o,
                        kv_error *err);

#endif
