#include "runtime/ppl.h"

#include <stdlib.h>
#include <string.h>

long kv_ppl_window_count(long n_ids, int ctx, int bos) {
    const long stride = ctx - 1;
    /* windows start at w * stride; without BOS the last start must leave an id to score */
    return bos >= 0 ? (n_ids + stride - 1) / stride : (n_ids - 1 + stride - 1) / stride;
}

int kv_ppl_window(const int32_t *ids, long n_ids, int ctx, int bos, long w, int32_t *win,
                  long *end) {
    const long start = w * (ctx - 1);
    int n = 0;
    if (bos >= 0) win[n++] = bos;
    const long avail = n_ids - start, take = avail < ctx - n ? avail : ctx - n;
    memcpy(win + n, ids + start, sizeof *win * (size_t)take);
    *end = start + take;
    return n + (int)take;
}

int kv_perplexity(kv_state *s, const int32_t *ids, long n_ids, const kv_ppl_opts *o,
                  kv_ppl_progress progress, void *progress_ctx, kv_ppl_result *r, kv_error *err) {
    *r = (kv_ppl_result){0};
    const int V = s->model->dims.vocab, ctx = o->ctx, has_bos = o->bos >= 0;
    if (ctx < 2 || ctx > s->max_seq)
        return kv_fail(err, KV_EINVAL, "perplexity: window of %d positions (2..%d)", ctx,
                       s->max_seq);
    if (n_ids < (has_bos ? 1 : 2))
        return kv_fail(err, KV_EINVAL, "perplexity: %ld tokens are too few to score", n_ids);
    long total = kv_ppl_window_count(n_ids, ctx, o->bos);
    if (o->max_windows > 0 && total > o->max_windows) total = o->max_windows;
    int32_t *win = malloc(sizeof *win * (size_t)ctx);
    float *logits = malloc(sizeof *logits * (size_t)ctx * (size_t)V);
    if (!win || !logits) {
        free(win);
        free(logits);
        return kv_fail(err, KV_ENOMEM, "perplexity: out of memory for %d x %d logits", ctx, V);
    }
    const kv_forward_opts fo = {.logits = KV_LOGITS_ALL, .prefill = o->prefill};
    int rc = 0;
    for (long w = 0; w < total && !rc; w++) {
        long end;
        const int n = kv_ppl_window(ids, n_ids, ctx, o->bos, w, win, &end);
        kv_state_reset(s);
        if ((rc = kv_forward(s, win, n, &fo, logits, err))) break;
        for (int t = 0; t + 1 < n; t++) /* logits at t predict win[t + 1] */
            r->nats += kv_cross_entropy(logits + (size_t)t * V, V, win[t + 1]);
        r->n_scored += n - 1;
        r->n_windows++;
        r->n_ids_used = end;
        if (progress) progress(progress_ctx, (int)(w + 1), (int)total);
    }
    free(win);
    free(logits);
    return rc;
}
