/* Two models' logits over the same windows (model_parity.h). */
#include "verify/model_parity.h"

#include <stdlib.h>
#include <string.h>

int kv_model_parity_run(kv_model_parity *r, kv_backend *ba, const kv_model *a, kv_backend *bb,
                        const kv_model *b, const int32_t *ids, int n, const kv_model_parity_opts *o,
                        kv_error *err) {
    memset(r, 0, sizeof *r);
    const int V = a->dims.vocab;
    if (b->dims.vocab != V)
        return kv_fail(err, KV_EMISMATCH, "the models' vocabularies differ (%d and %d tokens)", V,
                       b->dims.vocab);
    if (n < (o->bos >= 0 ? 1 : 2))
        return kv_fail(err, KV_EINVAL, "%d tokens are too few to score", n);
    const int ctx = o->ctx;
    if (ctx < 2 || ctx > a->dims.max_pos || ctx > b->dims.max_pos)
        return kv_fail(err, KV_EINVAL, "window of %d tokens: the models take 2..%d", ctx,
                       a->dims.max_pos < b->dims.max_pos ? a->dims.max_pos : b->dims.max_pos);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return kv_fail(err, KV_EINVAL,
                           "token %d at position %d is outside the vocabulary of %d", ids[i], i, V);
    long windows = kv_ppl_window_count(n, ctx, o->bos);
    if (o->max_windows > 0 && windows > o->max_windows) windows = o->max_windows;
    const int batch = o->max_batch > 0 ? o->max_batch : ctx;
    int32_t *win = malloc(sizeof *win * (size_t)ctx);
    kv_state sa = {0}, sb = {0};
    float *la = malloc(sizeof(float) * (size_t)ctx * (size_t)V);
    float *lb = malloc(sizeof(float) * (size_t)ctx * (size_t)V);
    int rc = 0;
    if (!la || !lb || !win)
        rc = kv_fail(err, KV_ENOMEM, "out of memory for 2 x %d x %d logits", ctx, V);
    if (!rc) rc = kv_state_init(&sa, ba, a, ctx, batch, o->kv_cache_dtype, err);
    if (!rc) rc = kv_state_init(&sb, bb, b, ctx, batch, o->kv_cache_dtype, err);
    const kv_forward_opts fo = {.logits = KV_LOGITS_ALL, .prefill = o->prefill};
    double nll_a = 0, nll_b = 0;
    for (long w = 0; w < windows && !rc; w++) {
        long end;
        const int len = kv_ppl_window(ids, n, ctx, o->bos, w, win, &end);
        kv_state_reset(&sa);
        kv_state_reset(&sb);
        if ((rc = kv_forward(&sa, win, len, &fo, la, err)) ||
            (rc = kv_forward(&sb, win, len, &fo, lb, err))) {
            kv_fail(err, rc, "window %ld: %s", w, err->msg);
            break;
        }
        kv_logits_report_add(&r->logits, la, lb, len, V);
        for (int t = 0; t + 1 < len; t++) { /* logits at t predict win[t + 1] */
            nll_a += kv_cross_entropy(la + (size_t)t * V, V, win[t + 1]);
            nll_b += kv_cross_entropy(lb + (size_t)t * V, V, win[t + 1]);
        }
        r->n_predicted += len - 1;
        r->windows++;
    }
    if (!rc && r->n_predicted) {
        r->nll_a = nll_a / (double)r->n_predicted;
        r->nll_b = nll_b / (double)r->n_predicted;
    }
    if (sa.model) kv_state_free(&sa);
    if (sb.model) kv_state_free(&sb);
    free(la);
    free(lb);
    free(win);
    return rc;
}
