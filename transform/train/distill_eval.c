/* Held-out evaluation: perplexity and KL of a student (and its teacher) on packed sequences
 * (distill.h). Logits are read on the host (downloaded when the backend is not unified); the KL
 * runs on the backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "transform/train/distill.h"

long distill_eval_count(const distill_seqs *seqs, long max_seqs) {
    long n = seqs->n;
    if (max_seqs > 0 && n > max_seqs) n = max_seqs;
    return n;
}

int distill_evaluate_part(kvt_run *s, kvt_run *t, const distill_seqs *seqs, long max_seqs, int part,
                          int parts, distill_eval_sums *sums, void (*tick)(void *, long, long),
                          void *tick_ctx, kv_error *err) {
    memset(sums, 0, sizeof *sums);
    const int B = s->B, T = s->T, V = s->m->dims.vocab;
    kv_backend *b = s->b;
    if (seqs->T != T || (t && (t->B != B || t->T != T || t->m->dims.vocab != V || t->b != b)))
        return kv_fail(err, KV_EINVAL, "evaluate: runs and sequences differ in shape");
    if (parts < 1 || part < 0 || part >= parts)
        return kv_fail(err, KV_EINVAL, "evaluate: part %d of %d", part, parts);
    const long n = distill_eval_count(seqs, max_seqs);
    if (n < 1) return kv_fail(err, KV_EINVAL, "evaluate: no held-out sequences");
    const size_t nv = (size_t)B * T * V; /* logits [B*T, V] */
    const uint8_t *mask = seqs->kl_mask; /* [n, T] or NULL */
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)B * T);
    float *scratch = b->unified ? NULL : malloc(sizeof(float) * 2 * nv); /* host logits */
    float *host_w = mask ? malloc(sizeof(float) * (size_t)B * T) : NULL; /* the KL's row weights */
    float *w = NULL; /* host_w on the backend */
    int rc = 0;
    if (!tokens || (!b->unified && !scratch) || (mask && !host_w))
        rc = kv_fail(err, KV_ENOMEM, "evaluate: out of memory");
    else if (mask && t) rc = b->ops->alloc(b, (void **)&w, sizeof(float) * (size_t)B * T, err);
    if (rc) {
        free(tokens);
        free(scratch);
        free(host_w);
        return rc;
    }
    double nll_s = 0, nll_t = 0, kl = 0, a_nll_s = 0, a_nll_t = 0, a_kl = 0;
    long n_pred = 0, a_pred = 0, a_rows = 0;
    /* batch j (sequences j*B ..) is part j % parts's */
    for (long i = (long)part * B; i < n && !rc; i += (long)parts * B) {
        const int real = (int)(n - i < B ? n - i : B);
        for (int k = 0; k < B; k++)
            memcpy(tokens + (size_t)k * T, seqs->ids + (size_t)(i + (k < real ? k : 0)) * T,
                   sizeof(int32_t) * (size_t)T);
        if ((rc = kvt_forward(s, tokens, err)) || (t && (rc = kvt_forward(t, tokens, err)))) break;
        const float *ls = NULL, *lt = NULL;
        if ((rc = kvt_run_host_view(s, &ls, s->logits, scratch, nv, err)) ||
            (t &&
             (rc = kvt_run_host_view(t, &lt, t->logits, scratch ? scratch + nv : NULL, nv, err))))
            break;
        for (int k = 0; k < real; k++)
            for (int p = 0; p + 1 < T; p++) {
                const size_t row = (size_t)k * T + p;
                const int32_t next = tokens[row + 1];
                const double ce_s = kv_cross_entropy(ls + row * V, V, next);
                const double ce_t = t ? kv_cross_entropy(lt + row * V, V, next) : 0;
                nll_s += ce_s;
                nll_t += ce_t;
                n_pred++;
                if (mask && mask[(size_t)(i + k) * T + p]) {
                    a_nll_s += ce_s;
                    a_nll_t += ce_t;
                    a_pred++;
                }
            }
        if (t) {
            double kl_batch = 0; /* mean over the real rows, temperature 1, no gradient */
            if ((rc = b->ops->distill_kl(b, &kl_batch, NULL, s->logits, t->logits, NULL, real * T,
                                         V, 1.0f, 0.0f, err)))
                break;
            kl += kl_batch * real * T;
        }
        if (t && mask) { /* the same with weight 1 on the assistant rows, 0 elsewhere */
            long rows = 0;
            for (size_t row = 0; row < (size_t)real * T; row++) {
                host_w[row] = mask[(size_t)i * T + row] ? 1.0f : 0.0f;
                rows += mask[(size_t)i * T + row] != 0;
            }
            double kl_masked = 0; /* (1 / (real T)) sum over assistant rows */
            if ((rc = b->ops->upload(b, w, host_w, sizeof(float) * (size_t)real * T, err)) ||
                (rc = b->ops->distill_kl(b, &kl_masked, NULL, s->logits, t->logits, w, real * T, V,
                                         1.0f, 0.0f, err)))
                break;
            a_kl += kl_masked * real * T;
            a_rows += rows;
        }
        /* the sequences every part has done when this part has done this batch (the parts go
         * at one pace): all batches up to the end of this round */
        const long round_end = i - (long)part * B + (long)parts * B;
        if (tick) tick(tick_ctx, round_end < n ? round_end : n, n);
    }
    free(tokens);
    free(scratch);
    free(host_w);
    b->ops->free(b, w);
    if (rc) return rc;
    *sums = (distill_eval_sums){.nll_s = nll_s,
                                .nll_t = nll_t,
                                .kl = kl,
                                .tokens = n_pred,
                                .asst_nll_s = a_nll_s,
                                .asst_nll_t = a_nll_t,
                                .asst_kl = a_kl,
                                .asst_tokens = a_pred,
                                .asst_kl_rows = a_rows};
    return 0;
}

void distill_evaluate_finish(const distill_eval_sums *sums, long n_seqs, int T, int teacher,
                             distill_eval_result *out) {
    memset(out, 0, sizeof *out);
    out->tokens = sums->tokens;
    out->student_ppl = exp(sums->nll_s / (double)sums->tokens);
    out->teacher_ppl = teacher ? exp(sums->nll_t / (double)sums->tokens) : NAN;
    out->kl = teacher ? sums->kl / ((double)n_seqs * T) : NAN;
    out->asst_tokens = sums->asst_tokens;
    out->asst_kl_rows = sums->asst_kl_rows;
    const double a_n = (double)sums->asst_tokens;
    out->asst_student_ppl = a_n > 0 ? exp(sums->asst_nll_s / a_n) : NAN;
    out->asst_teacher_ppl = teacher && a_n > 0 ? exp(sums->asst_nll_t / a_n) : NAN;
    out->asst_kl =
        teacher && sums->asst_kl_rows > 0 ? sums->asst_kl / (double)sums->asst_kl_rows : NAN;
}

int distill_evaluate(kvt_run *s, kvt_run *t, const distill_seqs *seqs, long max_seqs,
                     distill_eval_result *out, void (*tick)(void *, long, long), void *tick_ctx,
                     kv_error *err) {
    memset(out, 0, sizeof *out);
    distill_eval_sums sums;
    int rc = distill_evaluate_part(s, t, seqs, max_seqs, 0, 1, &sums, tick, tick_ctx, err);
    if (rc) return rc;
    distill_evaluate_finish(&sums, distill_eval_count(seqs, max_seqs), s->T, t != NULL, out);
    return 0;
}
