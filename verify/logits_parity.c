#include "verify/logits_parity.h"

#include <math.h>
#include <string.h>

#include "formats/safetensors.h"

typedef struct {
    const float *logits; /* [T, V] */
    const int32_t *tokens; /* [T] or NULL */
    int T, V;
} logits_view;

static int view_of(logits_view *v, const st_file *f, int batch, kv_error *err) {
    const st_tensor *l = st_find(f, "logits"), *t = st_find(f, "tokens");
    if (!l) return kv_fail(err, KV_EFORMAT, "%s: no tensor 'logits'", f->path);
    if (l->dtype != KV_F32 || (l->n_dims != 2 && l->n_dims != 3))
        return kv_fail(err, KV_EFORMAT, "%s: 'logits' must be F32 [T, V] or [B, T, V]", f->path);
    int64_t B = l->n_dims == 3 ? l->shape[0] : 1;
    if (batch < 0) batch = 0;
    if (batch >= B || (l->n_dims == 2 && batch > 0))
        return kv_fail(err, KV_EINVAL, "%s: batch row %d but the file holds %lld", f->path, batch,
                       (long long)B);
    v->T = (int)l->shape[l->n_dims - 2];
    v->V = (int)l->shape[l->n_dims - 1];
    v->logits = (const float *)l->data + (size_t)batch * (size_t)v->T * (size_t)v->V;
    v->tokens = NULL;
    if (t) {
        if (t->dtype != KV_I32 || t->n_elements != (size_t)B * (size_t)v->T)
            return kv_fail(err, KV_EFORMAT, "%s: 'tokens' must be I32 with one id per position",
                           f->path);
        v->tokens = (const int32_t *)t->data + (size_t)batch * (size_t)v->T;
    }
    return 0;
}

/* KL(softmax(a) || softmax(b)) in double */
static double kl_row(const float *a, const float *b, int V) {
    double ma = a[0], mb = b[0], za = 0, zb = 0, kl = 0;
    for (int i = 1; i < V; i++) {
        if (a[i] > ma) ma = a[i];
        if (b[i] > mb) mb = b[i];
    }
    for (int i = 0; i < V; i++) {
        za += exp(a[i] - ma);
        zb += exp(b[i] - mb);
    }
    double lza = log(za), lzb = log(zb);
    for (int i = 0; i < V; i++) {
        double la = a[i] - ma - lza, lb = b[i] - mb - lzb;
        kl += exp(la) * (la - lb);
    }
    return kl > 0 ? kl : 0;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

void kv_logits_report_add(kv_logits_report *r, const float *a, const float *b, int T, int V) {
    const int first = r->n_positions;
    double kl_sum = r->mean_kl * first;
    r->vocab = V;
    for (int t = 0; t < T; t++) {
        const float *x = a + (size_t)t * V, *y = b + (size_t)t * V;
        for (int i = 0; i < V; i++) {
            double d = fabs((double)x[i] - y[i]);
            if (d > r->max_abs || isnan(d)) {
                r->max_abs = isnan(d) ? INFINITY : d;
                r->worst_position = first + t;
            }
        }
        double kl = kl_row(x, y, V);
        kl_sum += kl;
        if (kl > r->max_kl) r->max_kl = kl;
        r->argmax_agree += argmax(x, V) == argmax(y, V);
    }
    r->n_positions = first + T;
    r->mean_kl = r->n_positions ? kl_sum / r->n_positions : 0;
}

int kv_logits_compare(kv_logits_report *r, const char *path_a, int batch_a, const char *path_b,
                      int batch_b, kv_error *err) {
    memset(r, 0, sizeof *r);
    st_file fa, fb;
    int rc = st_open(&fa, path_a, err);
    if (rc) return rc;
    rc = st_open(&fb, path_b, err);
    if (rc) {
        st_close(&fa);
        return rc;
    }
    logits_view a, b;
    rc = view_of(&a, &fa, batch_a, err);
    if (!rc) rc = view_of(&b, &fb, batch_b, err);
    if (!rc && (a.T != b.T || a.V != b.V))
        rc = kv_fail(err, KV_EMISMATCH, "%s [%d, %d] and %s [%d, %d]: logits shapes differ", path_a,
                     a.T, a.V, path_b, b.T, b.V);
    if (!rc && a.tokens && b.tokens) {
        for (int t = 0; t < a.T && !rc; t++)
            if (a.tokens[t] != b.tokens[t])
                rc = kv_fail(err, KV_EMISMATCH,
                             "%s and %s: token ids differ at position %d (%d vs %d)", path_a,
                             path_b, t, a.tokens[t], b.tokens[t]);
        r->tokens_checked = 1;
    }
    if (!rc) kv_logits_report_add(r, a.logits, b.logits, a.T, a.V);
    st_close(&fa);
    st_close(&fb);
    return rc;
}
