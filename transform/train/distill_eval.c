/* Held-out evaluation: perplexity and KL of a student (and its teacher) on packed sequences
 * (distill.h). Logits are read on the host (downloaded when the backend is not unified); the KL
 * runs on the backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "transform/train/distill.h"

int distill_evaluate(kvt_run *s, kvt_run *t, const distill_seqs *seqs, long max_seqs,
                     distill_eval_result *out, void (*tick)(void *, long, long), void *tick_ctx,
                     kv_error *err) {
    memset(out, 0, sizeof *out);
    const int B = s->B, T = s->T, V = s->m->dims.vocab;
    kv_backend *b = s->b;
    if (seqs->T != T || (t && (t->B != B || t->T != T || t->m->dims.vocab != V || t->b != b)))
        return kv_fail(err, KV_EINVAL, "evaluate: runs and sequences differ in shape");
    long n = seqs->n;
    if (max_seqs > 0 && n > max_seqs) n = max_seqs;
    if (n < 1) return kv_fail(err, KV_EINVAL, "evaluate: no held-out sequences");
    const size_t nv = (size_t)B * T * V; /* logits [B*T, V] */
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)B * T);
    float *scratch = b->unified ? NULL : malloc(sizeof(float) * 2 * nv); /* host logits */
    if (!tokens || (!b->unified && !scratch)) {
        free(tokens);
        free(scratch);
        return kv_fail(err, KV_ENOMEM, "evaluate: out of memory");
    }
    double nll_s = 0, nll_t = 0, kl = 0;
    long n_pred = 0;
    int rc = 0;
    for (long i = 0; i < n && !rc; i += B) {
        const int real = (int)(n - i < B ? n - i : B);
        for (int k = 0; k < B; k++)
            memcpy(tokens + (size_t)k * T, seqs->ids + (size_t)(i + (k < real ? k : 0)) * T,
                   sizeof(int32_t) * (size_t)T);
        if ((rc = kvt_forward(s, tokens, err)) || (t && (rc = kvt_forward(t, tokens, err)))) break;
        const float *ls = NULL, *lt = NULL;
        if ((rc = kvt_run_host_view(s, &ls, s->logits, scratch, nv, err)) ||
            (t && (rc = kvt_run_host_view(t, &lt, t->logits, scratch ? scratch + nv : NULL, nv,
                                          err))))
            break;
        for (int k = 0; k < real; k++)
            for (int p = 0; p + 1 < T; p++) {
                const size_t row = (size_t)k * T + p;
                const int32_t next = tokens[row + 1];
                nll_s += kv_cross_entropy(ls + row * V, V, next);
                if (t) nll_t += kv_cross_entropy(lt + row * V, V, next);
                n_pred++;
            }
        if (t) {
            double kl_batch = 0; /* mean over the real rows, temperature 1, no gradient */
            if ((rc = b->ops->distill_kl(b, &kl_batch, NULL, s->logits, t->logits, real * T, V,
                                         1.0f, 0.0f, err)))
                break;
            kl += kl_batch * real * T;
        }
        if (tick) tick(tick_ctx, i + real, n);
    }
    free(tokens);
    free(scratch);
    if (rc) return rc;
    out->tokens = n_pred;
    out->student_ppl = exp(nll_s / (double)n_pred);
    out->teacher_ppl = t ? exp(nll_t / (double)n_pred) : NAN;
    out->kl = t ? kl / ((double)n * T) : NAN;
    return 0;
}
