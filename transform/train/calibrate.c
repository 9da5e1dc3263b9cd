/* Calibration: layer similarity, zero-shot candidates, ranking, JSON and SVG. */
#include "transform/train/calibrate.h"
#include "transform/convert/model_info.h"
#include "formats/hfwindow.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "transform/train/distill.h"
#include "transform/train/distill_data.h"
#include "transform/train/distill_init.h"
#include "transform/train/train_forward.h"
#include "transform/train/train_model.h"

void calib_opts_default(calib_opts *o) {
    memset(o, 0, sizeof *o);
    o->seq_len = 128;
    o->batch = 8;
    o->passes = 9;
    o->max_seqs = 64;
    o->budget_pct = 5;
}

void calib_result_free(calib_result *r) {
    free(r->hidden_sim);
    free(r->k_sim);
    free(r->v_sim);
    free(r->cand);
    memset(r, 0, sizeof *r);
}

/* sum over rows of cos(a[row], b[row]) */
static double cos_rows(const float *a, const float *b, int rows, int dim) {
    double total = 0;
    for (int r = 0; r < rows; r++) {
        const float *x = a + (size_t)r * dim, *y = b + (size_t)r * dim;
        double xy = 0, xx = 0, yy = 0;
        for (int i = 0; i < dim; i++) {
            xy += (double)x[i] * y[i];
            xx += (double)x[i] * x[i];
            yy += (double)y[i] * y[i];
        }
        total += xx > 0 && yy > 0 ? xy / sqrt(xx * yy) : (xx == yy ? 1.0 : 0.0);
    }
    return total;
}

static const float *state_of(const kvt_run *r, int i) {
    return i < r->m->dims.n_layers ? r->acts[i].x_in : r->x_out;
}

/* teacher similarity over the calibration batches; states and K/V are read on the host
 * (downloaded first when the backend is not unified) */
static int similarity(calib_result *res, kvt_run *t, const distill_seqs *seqs, long n_seqs,
                      kv_error *err) {
    const int L = t->m->dims.n_layers, B = t->B, T = t->T;
    const int H = t->m->dims.hidden, KV = t->m->dims.kv_dim;
    const size_t N = (size_t)B * T;
    int32_t *tokens = malloc(sizeof(int32_t) * N);
    const float **hs = calloc((size_t)L + 1, sizeof *hs), **ks = calloc((size_t)L, sizeof *ks),
                **vs = calloc((size_t)L, sizeof *vs);
    /* host copies: L + 1 states [N, H], L keys and values [N, KV] */
    const size_t per_row = (size_t)(L + 1) * H + 2 * (size_t)L * KV;
    float *scratch = t->b->unified ? NULL : malloc(sizeof(float) * N * per_row);
    if (!tokens || !hs || !ks || !vs || (!t->b->unified && !scratch)) {
        free(tokens), free(hs), free(ks), free(vs), free(scratch);
        return kv_fail(err, KV_ENOMEM, "calibrate: out of memory");
    }
    long rows = 0;
    int rc = 0;
    for (long s = 0; s < n_seqs && !rc; s += B) {
        const int real = (int)(n_seqs - s < B ? n_seqs - s : B);
        for (int b = 0; b < B; b++)
            memcpy(tokens + (size_t)b * T, seqs->ids + (size_t)(s + (b < real ? b : 0)) * T,
                   sizeof(int32_t) * (size_t)T);
        if ((rc = kvt_forward(t, tokens, err))) break;
        const int n = real * T;
        float *next = scratch;
        for (int i = 0; i <= L && !rc; i++, next = next ? next + (size_t)n * H : NULL)
            rc = kvt_run_host_view(t, &hs[i], state_of(t, i), next, (size_t)n * H, err);
        for (int i = 0; i < L && !rc; i++) {
            rc = kvt_run_host_view(t, &ks[i], t->k[i], next, (size_t)n * KV, err);
            next = next ? next + (size_t)n * KV : NULL;
            if (!rc) rc = kvt_run_host_view(t, &vs[i], t->v[i], next, (size_t)n * KV, err);
            next = next ? next + (size_t)n * KV : NULL;
        }
        if (rc) break;
        rows += n;
        for (int i = 0; i <= L; i++)
            for (int j = i; j <= L; j++) {
                double c = cos_rows(hs[i], hs[j], n, H);
                res->hidden_sim[i * (L + 1) + j] += c;
                if (i != j) res->hidden_sim[j * (L + 1) + i] += c;
            }
        for (int i = 0; i < L; i++)
            for (int j = i; j < L; j++) {
                double ck = cos_rows(ks[i], ks[j], n, KV), cv = cos_rows(vs[i], vs[j], n, KV);
                res->k_sim[i * L + j] += ck, res->v_sim[i * L + j] += cv;
                if (i != j) res->k_sim[j * L + i] += ck, res->v_sim[j * L + i] += cv;
            }
    }
    free(tokens), free(hs), free(ks), free(vs), free(scratch);
    if (rc) return rc;
    for (int i = 0; i < (L + 1) * (L + 1); i++) res->hidden_sim[i] /= (double)rows;
    for (int i = 0; i < L * L; i++) res->k_sim[i] /= (double)rows, res->v_sim[i] /= (double)rows;
    return 0;
}

static int cmp_kl(const void *a, const void *b) {
    const calib_candidate *x = a, *y = b;
    return (x->kl > y->kl) - (x->kl < y->kl);
}

int calib_run(const calib_opts *o, const kv_map *maps, int n_maps, void (*tick)(void *, int, int),
              void *tick_ctx, calib_result *res, kv_error *err) {
    memset(res, 0, sizeof *res);
    res->recommended = -1;
    res->best_saving = -1;
    res->budget_pct = o->budget_pct;
    kv_backend own, *b = o->backend;
    if (!b) {
        int rc = kv_backend_cpu_init(&own, 0, err);
        if (rc) return rc;
        b = &own;
    }
    kvt_model teacher;
    int rc = kvt_model_load(&teacher, o->teacher_dir, err);
    if (rc) {
        if (b == &own) kv_backend_free(&own);
        return rc;
    }
    kv_tokenizer *tok = NULL;
    distill_tokens d = {0};
    distill_seqs seqs = {0};
    kvt_run rt = {0};
    const int L = teacher.dims.n_layers;
    if (!kvmap_is_identity(&teacher.cfg.map)) {
        rc = kv_fail(err, KV_EINVAL, "%s: calibrate needs the original model (KV map %s)",
                     o->teacher_dir, teacher.cfg.map.name);
        goto out;
    }
    const char *dirs[] = {o->teacher_dir};
    if ((rc = distill_tokenizer_load(&tok, dirs, 1, &teacher.cfg, err))) goto out;
    for (int i = 0; i < o->n_data && !rc; i++)
        rc = distill_tokens_load(&d, o->data[i], tok, teacher.dims.vocab, err);
    if (rc || (rc = distill_pack(&seqs, &d, 0, d.n, o->seq_len, err))) goto out;
    if (seqs.n < 1) {
        rc = kv_fail(err, KV_EINVAL, "calibrate: fewer than %d tokens of data", o->seq_len);
        goto out;
    }
    if (o->max_seqs > 0 && seqs.n > o->max_seqs) seqs.n = o->max_seqs;
    res->L = L;
    res->hidden_sim = calloc((size_t)(L + 1) * (L + 1), sizeof(double));
    res->k_sim = calloc((size_t)L * L, sizeof(double));
    res->v_sim = calloc((size_t)L * L, sizeof(double));
    res->cand = calloc((size_t)(n_maps ? n_maps : 1), sizeof *res->cand);
    if (!res->hidden_sim || !res->k_sim || !res->v_sim || !res->cand) {
        rc = kv_fail(err, KV_ENOMEM, "calibrate: out of memory");
        goto out;
    }
    if ((rc = kvt_run_init(&rt, b, &teacher, o->batch, o->seq_len, 1, 0, err)) ||
        (rc = similarity(res, &rt, &seqs, seqs.n, err)))
        goto out;
    /* sliding windows: SwiftKV does not run with them, its candidates skipped */
    const int windows = hf_has_windows(&teacher.cfg);
    for (int c = 0; c < n_maps && !rc; c++) {
        kvt_model student;
        kvt_run rs;
        distill_eval_result ev;
        if (windows && maps[c].kind == KVMAP_SWIFTKV) continue;
        if ((rc = distill_student_init(&student, &teacher, &maps[c], DISTILL_INIT_MEAN, err)))
            break;
        rc = kvt_run_init(&rs, b, &student, o->batch, o->seq_len, o->passes, 0, err);
        if (!rc) {
            rc = distill_evaluate(&rs, &rt, &seqs, 0, &ev, NULL, NULL, err);
            kvt_run_free(&rs);
        }
        kvt_model_free(&student);
        if (rc) break;
        calib_candidate *cd = &res->cand[res->n_cand++];
        cd->map = maps[c];
        cd->slots = kvmap_n_slots(&maps[c]);
        cd->cache_saving = kvmap_cache_saving(&maps[c]);
        cd->prefill_saving =
            maps[c].kind == KVMAP_SWIFTKV
                ? model_swiftkv_prefill_saving(&teacher.cfg, maps[c].swiftkv_l, maps[c].swiftkv_g)
                : 0.0;
        cd->saves = cd->slots < L || cd->prefill_saving > 0;
        cd->ppl = ev.student_ppl;
        cd->kl = ev.kl;
        res->teacher_ppl = ev.teacher_ppl;
        res->tokens = ev.tokens;
        if (tick) tick(tick_ctx, c + 1, n_maps);
    }
    if (rc) goto out;
    qsort(res->cand, (size_t)res->n_cand, sizeof *res->cand, cmp_kl);
    for (int c = 0; c < res->n_cand; c++) {
        calib_candidate *cd = &res->cand[c];
        cd->ppl_increase_pct = 100.0 * (cd->ppl / res->teacher_ppl - 1.0);
        cd->within_budget = cd->ppl_increase_pct <= o->budget_pct;
        if (!cd->saves) continue; /* a no-op is never recommended */
        if (res->best_saving < 0) res->best_saving = c; /* sorted by KL */
        if (!cd->within_budget) continue;
        const calib_candidate *best = res->recommended >= 0 ? &res->cand[res->recommended] : NULL;
        if (!best || cd->slots < best->slots)
            res->recommended = c; /* sorted by KL: ties keep
                                                                       the lower KL */
    }
out:
    kvt_run_free(&rt);
    distill_seqs_free(&seqs);
    distill_tokens_free(&d);
    kv_tokenizer_free(tok);
    kvt_model_free(&teacher);
    if (b == &own) kv_backend_free(&own);
    if (rc) calib_result_free(res);
    return rc;
}

static cJSON *matrix_json(const double *m, int n) {
    cJSON *rows = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(rows, cJSON_CreateDoubleArray(m + i * n, n));
    return rows;
}

char *calib_json(const calib_result *r) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    cJSON_AddNumberToObject(j, "layers", r->L);
    cJSON_AddNumberToObject(j, "tokens", (double)r->tokens);
    cJSON_AddNumberToObject(j, "teacher_ppl", r->teacher_ppl);
    cJSON_AddNumberToObject(j, "budget_pct", r->budget_pct);
    cJSON_AddItemToObject(j, "hidden_similarity", matrix_json(r->hidden_sim, r->L + 1));
    cJSON_AddItemToObject(j, "k_similarity", matrix_json(r->k_sim, r->L));
    cJSON_AddItemToObject(j, "v_similarity", matrix_json(r->v_sim, r->L));
    cJSON *cands = cJSON_AddArrayToObject(j, "candidates");
    for (int c = 0; c < r->n_cand; c++) {
        const calib_candidate *cd = &r->cand[c];
        cJSON *o = cJSON_CreateObject();
        char types[HF_MAX_LAYERS * 6];
        kvmap_layer_types(&cd->map, types, sizeof types);
        cJSON_AddNumberToObject(o, "rank", c + 1);
        cJSON_AddStringToObject(o, "map", cd->map.name);
        cJSON_AddStringToObject(o, "kind", cd->map.kind == KVMAP_SWIFTKV ? "swiftkv" : "cross");
        cJSON_AddStringToObject(o, "layer_types", types);
        cJSON_AddNumberToObject(o, "kv_slots", cd->slots);
        cJSON_AddNumberToObject(o, "cache_saving", cd->cache_saving);
        cJSON_AddNumberToObject(o, "prefill_compute_saving", cd->prefill_saving);
        cJSON_AddBoolToObject(o, "saves", cd->saves);
        cJSON_AddNumberToObject(o, "ppl", cd->ppl);
        cJSON_AddNumberToObject(o, "kl", cd->kl);
        cJSON_AddNumberToObject(o, "ppl_increase_pct", cd->ppl_increase_pct);
        cJSON_AddBoolToObject(o, "within_budget", cd->within_budget);
        cJSON_AddItemToArray(cands, o);
    }
    if (r->recommended >= 0)
        cJSON_AddStringToObject(j, "recommended", r->cand[r->recommended].map.name);
    else cJSON_AddNullToObject(j, "recommended");
    if (r->recommended < 0 && r->best_saving >= 0) /* nothing saving fits the budget */
        cJSON_AddStringToObject(j, "best_saving_over_budget", r->cand[r->best_saving].map.name);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    return text;
}

/* ---- SVG ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *s, const char *fmt, ...) {
    if (s->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(s->buf ? s->buf + s->len : NULL, s->buf ? s->cap - s->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            s->oom = 1;
            return;
        }
        if (s->buf && s->len + (size_t)n < s->cap) {
            s->len += (size_t)n;
            return;
        }
        size_t cap = s->cap ? s->cap * 2 : 4096;
        while (cap < s->len + (size_t)n + 1) cap *= 2;
        char *p = realloc(s->buf, cap);
        if (!p) {
            s->oom = 1;
            return;
        }
        s->buf = p;
        s->cap = cap;
    }
}

/* cosine in [lo, 1] -> white .. dark blue */
static void color_of(double v, double lo, int *r, int *g, int *b) {
    double t = lo < 1 ? (v - lo) / (1 - lo) : 1;
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    *r = (int)lround(255 - t * (255 - 8));
    *g = (int)lround(255 - t * (255 - 48));
    *b = (int)lround(255 - t * (255 - 107));
}

#define SVG_CHAR_W 0.62 /* average sans-serif advance, in font sizes: for laying out titles */

/* one heat map: title (and subtitle) above, layer numbers on both axes (every `step`-th when the
 * cells are small), "layer" axis names; colours on the shared scale [lo, 1] */
static void svg_panel(sbuf *s, const char *title, const char *subtitle, const double *m, int n,
                      double x0, double y0, double cell, const char *last_label, double lo) {
    sb_printf(s, "<g class=\"panel\">\n");
    sb_printf(s,
              "<text class=\"title\" x=\"%.1f\" y=\"%.1f\" font-size=\"14\" "
              "font-weight=\"bold\">%s</text>\n",
              x0, y0 - 34, title);
    sb_printf(
        s,
        "<text class=\"subtitle\" x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"#444\">%s</text>\n",
        x0, y0 - 18, subtitle);
    const int step = cell >= 14 ? 1 : (int)ceil(14.0 / cell);
    for (int i = 0; i < n; i++) {
        char label[32];
        if (i == n - 1 && last_label) snprintf(label, sizeof label, "%s", last_label);
        else snprintf(label, sizeof label, "%d", i);
        if (i % step == 0 || (i == n - 1 && last_label)) {
            sb_printf(s,
                      "<text class=\"ylabel\" x=\"%.1f\" y=\"%.1f\" font-size=\"10\" "
                      "text-anchor=\"end\">%s</text>\n",
                      x0 - 4, y0 + (i + 0.5) * cell + 3.5, label);
            sb_printf(s,
                      "<text class=\"xlabel\" x=\"%.1f\" y=\"%.1f\" font-size=\"10\" "
                      "text-anchor=\"middle\">%s</text>\n",
                      x0 + (i + 0.5) * cell, y0 + n * cell + 13, label);
        }
        for (int j = 0; j < n; j++) {
            int r, g, b;
            const double v = m[i * n + j];
            color_of(v, lo, &r, &g, &b);
            sb_printf(s,
                      "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                      "fill=\"rgb(%d,%d,%d)\"><title>%d,%d: %.4f</title></rect>\n",
                      x0 + j * cell, y0 + i * cell, cell, cell, r, g, b, i, j, v);
            if (n <= 16 && cell >= 24)
                sb_printf(s,
                          "<text class=\"value\" x=\"%.1f\" y=\"%.1f\" font-size=\"%.0f\" "
                          "text-anchor=\"middle\" "
                          "fill=\"%s\">%.2f</text>\n",
                          x0 + (j + 0.5) * cell, y0 + (i + 0.6) * cell,
                          cell / 4 > 12 ? 12 : cell / 4, g < 140 ? "white" : "black", v);
        }
    }
    sb_printf(s,
              "<text class=\"axis\" x=\"%.1f\" y=\"%.1f\" font-size=\"11\" "
              "text-anchor=\"middle\">layer j</text>\n",
              x0 + n * cell / 2, y0 + n * cell + 28);
    sb_printf(s,
              "<text class=\"axis\" x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\" "
              "transform=\"rotate(-90 %.1f %.1f)\">layer i</text>\n",
              x0 - 26, y0 + n * cell / 2, x0 - 26, y0 + n * cell / 2);
    sb_printf(s, "</g>\n");
}

/* the shared colour scale: a vertical bar from lo (white) to 1 (blue) with ticks */
static void svg_colorbar(sbuf *s, double x0, double y0, double h, double lo) {
    const int steps = 50;
    sb_printf(
        s, "<g class=\"colorbar\">\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">cosine</text>\n",
        x0, y0 - 8);
    for (int k = 0; k < steps; k++) {
        const double v = 1 - (1 - lo) * (k + 0.5) / steps;
        int r, g, b;
        color_of(v, lo, &r, &g, &b);
        sb_printf(s,
                  "<rect class=\"bar\" x=\"%.1f\" y=\"%.2f\" width=\"16\" height=\"%.2f\" "
                  "fill=\"rgb(%d,%d,%d)\"/>\n",
                  x0, y0 + h * k / steps, h / steps + 0.05, r, g, b);
    }
    sb_printf(
        s,
        "<rect class=\"frame\" x=\"%.1f\" y=\"%.1f\" width=\"16\" height=\"%.1f\" fill=\"none\" "
        "stroke=\"#888\"/>\n",
        x0, y0, h);
    for (int k = 0; k <= 4; k++) {
        const double v = 1 - (1 - lo) * k / 4.0;
        sb_printf(s, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" font-size=\"10\">%.3f</text>\n",
                  x0 + 20, y0 + h * k / 4.0 + 3.5, v);
    }
    sb_printf(s, "</g>\n");
}

int calib_write_svg(const calib_result *r, const char *path, kv_error *err) {
    const int L = r->L;
    const double cell = L <= 8 ? 40 : L <= 16 ? 24 : L <= 40 ? 12 : 6;
    /* one colour scale for the three panels: the lowest cosine anywhere .. 1 */
    double lo = 1;
    for (int i = 0; i < (L + 1) * (L + 1); i++) lo = r->hidden_sim[i] < lo ? r->hidden_sim[i] : lo;
    for (int i = 0; i < L * L; i++) {
        lo = r->k_sim[i] < lo ? r->k_sim[i] : lo;
        lo = r->v_sim[i] < lo ? r->v_sim[i] : lo;
    }
    if (lo > 0.999) lo = 0.999;
    static const char *const titles[3] = {"Hidden states", "Keys (K)", "Values (V)"};
    static const char *const subtitles[3] = {"entering layer i vs j; out = final",
                                             "layer i vs layer j", "layer i vs layer j"};
    const int sizes[3] = {L + 1, L, L};
    /* each panel as wide as its grid or its title, whichever is wider, so titles never overlap */
    double x[3], w[3], xpos = 56;
    for (int p = 0; p < 3; p++) {
        const double tw =
            fmax(strlen(titles[p]) * 14 * SVG_CHAR_W, strlen(subtitles[p]) * 11 * SVG_CHAR_W);
        w[p] = fmax(sizes[p] * cell, tw);
        x[p] = xpos;
        xpos += w[p] + 64;
    }
    const double top = 84, grid = (L + 1) * cell;
    const double width = xpos + 40, height = top + grid + 48;
    sbuf s = {0};
    sb_printf(
        &s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
        "font-family=\"sans-serif\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
        width, height);
    sb_printf(&s,
              "<text class=\"heading\" x=\"%.1f\" y=\"22\" font-size=\"15\" font-weight=\"bold\">"
              "Teacher layer similarity (cosine), %ld calibration tokens</text>\n",
              x[0], r->tokens);
    svg_panel(&s, titles[0], subtitles[0], r->hidden_sim, L + 1, x[0], top, cell, "out", lo);
    svg_panel(&s, titles[1], subtitles[1], r->k_sim, L, x[1], top, cell, NULL, lo);
    svg_panel(&s, titles[2], subtitles[2], r->v_sim, L, x[2], top, cell, NULL, lo);
    svg_colorbar(&s, xpos - 40, top, grid, lo);
    sb_printf(&s, "</svg>\n");
    if (s.oom) {
        free(s.buf);
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", path);
    }
    int rc = kv_write_file_atomic(path, s.buf, s.len, err);
    free(s.buf);
    return rc;
}
