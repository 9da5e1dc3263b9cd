/* Perplexity of a token sequence in windows of ctx positions. With a BOS id, window w is
 * [BOS] + ids[w*(ctx-1) ...] (up to ctx-1 ids) and every id in it is scored; without one, window
 * w is ids[w*(ctx-1) ...] (up to ctx ids) and all but its first are scored. Either way every id
 * (but ids[0] without BOS) is scored exactly once, from at most ctx-1 tokens of context.
 * Every position's logits are computed (SwiftKV: all tokens run all layers). */
#ifndef KV_PPL_H
#define KV_PPL_H

#include <stdint.h>

#include "runtime/forward.h"

typedef struct {
    int ctx; /* window length in positions, 2 .. s->max_seq */
    int bos; /* BOS id prepended to each window, or -1 */
    int max_windows; /* 0: all */
    kv_prefill prefill; /* maps with upward layers */
} kv_ppl_opts;

typedef struct {
    double nats; /* sum of -log p(target) */
    long n_scored; /* targets scored */
    int n_windows;
    long n_ids_used; /* ids[0 .. n_ids_used) took part (for a byte count) */
} kv_ppl_result;

/* The windows above: how many there are for n_ids ids (before any max_windows), and window w
 * (< that count) written to win[ctx]; returns its length, *end = the index after its last id. */
long kv_ppl_window_count(long n_ids, int ctx, int bos);
int kv_ppl_window(const int32_t *ids, long n_ids, int ctx, int bos, long w, int32_t *win,
                  long *end);

/* progress (may be NULL) is called after every window with (windows done, windows in all) */
typedef void (*kv_ppl_progress)(void *ctx, int done, int total);
int kv_perplexity(kv_state *s, const int32_t *ids, long n_ids, const kv_ppl_opts *o,
                  kv_ppl_progress progress, void *progress_ctx, kv_ppl_result *r, kv_error *err);

#endif
