/* The distillation run: data, evaluation, AdamW loop, checkpoints, resume, output, report. */
#include "transform/train/distill.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/fileio.h"
#include "formats/safetensors.h"
#include "base/sha256.h"
#include "formats/tokenizer.h"
#include "transform/train/distill_state.h"


void distill_opts_default(distill_opts *o) {
    memset(o, 0, sizeof *o);
    o->eval_frac = 0.1;
    o->seq_len = 128;
    o->batch = 8;
    o->accum = 1;
    o->tokens = 0;
    o->steps = 0;
    o->lr = 2e-4;
    o->warmup_frac = 0.05;
    o->decay = LR_LINEAR;
    o->adam = (adamw_hparams){.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0};
    o->clip = 1.0;
    o->temperature = 2.0;
    o->mse_weight = 1.0;
    o->passes = 9;
    o->grad_passes = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- evaluation ---- */

int distill_evaluate(kvt_run *s, kvt_run *t, const distill_seqs *seqs, long max_seqs,
                     distill_eval_result *out, void (*tick)(void *, long, long), void *tick_ctx,
                     kv_error *err) {
    memset(out, 0, sizeof *out);
    const int B = s->B, T = s->T, V = s->m->dims.vocab;
    if (seqs->T != T || (t && (t->B != B || t->T != T || t->m->dims.vocab != V)))
        return kv_fail(err, KV_EINVAL, "evaluate: runs and sequences differ in shape");
    long n = seqs->n;
    if (max_seqs > 0 && n > max_seqs) n = max_seqs;
    if (n < 1) return kv_fail(err, KV_EINVAL, "evaluate: no held-out sequences");
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)B * T);
    if (!tokens) return kv_fail(err, KV_ENOMEM, "evaluate: out of memory");
    double nll_s = 0, nll_t = 0, kl = 0;
    long n_pred = 0;
    int rc = 0;
    for (long i = 0; i < n && !rc; i += B) {
        const int real = (int)(n - i < B ? n - i : B);
        for (int b = 0; b < B; b++)
            memcpy(tokens + (size_t)b * T, seqs->ids + (size_t)(i + (b < real ? b : 0)) * T,
                   sizeof(int32_t) * (size_t)T);
        if ((rc = kvt_forward(s, tokens, err)) || (t && (rc = kvt_forward(t, tokens, err)))) break;
        for (int b = 0; b < real; b++)
            for (int p = 0; p + 1 < T; p++) {
                const size_t row = (size_t)b * T + p;
                const int32_t next = tokens[row + 1];
                nll_s += kv_cross_entropy(s->logits + row * V, V, next);
                if (t) nll_t += kv_cross_entropy(t->logits + row * V, V, next);
                n_pred++;
            }
        if (t) kl += kv_distill_kl(NULL, s->logits, t->logits, real * T, V, 1.0f, 0.0f) * real * T;
        if (tick) tick(tick_ctx, i + real, n);
    }
    free(tokens);
    if (rc) return rc;
    out->tokens = n_pred;
    out->student_ppl = exp(nll_s / (double)n_pred);
    out->teacher_ppl = t ? exp(nll_t / (double)n_pred) : NAN;
    out->kl = t ? kl / ((double)n * T) : NAN;
    return 0;
}

/* a named configuration equal to the map ("pizza-bottom:3"), else the map's own name */
static void map_display_name(const kv_map *m, char *out, size_t cap) {
    snprintf(out, cap, "%s", m->name);
    if (m->kind != KVMAP_CROSS) return;
    static const char *const cfgs[] = {"pizza", "sandwich", "lasagna"};
    static const char *const tgts[] = {"bottom", "top", "middle"};
    const int l = kvmap_n_slots(m);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            char spec[64];
            kv_map c;
            snprintf(spec, sizeof spec, "%s-%s:%d", cfgs[i], tgts[j], l);
            if (!kvmap_parse(&c, spec, m->n_layers, NULL) &&
                !memcmp(c.kv_layer_of, m->kv_layer_of, sizeof(int) * (size_t)m->n_layers)) {
                snprintf(out, cap, "%s", spec);
                return;
            }
        }
}

/* ---- the state of a run ---- */

typedef struct {
    const distill_opts *o;
    kvt_model teacher, student;
    kv_tokenizer *tok;
    distill_seqs train, eval;
    distill_sampler sampler;
    kvt_run rs, rt;
    int n_train;              /* trainable tensors */
    kvt_param **tp;           /* [n_train] */
    float **m, **v;           /* [n_train] AdamW moments */
    float **g;                /* [n_train] gradients (views) */
    size_t *n;                /* [n_train] elements */
    long total_steps, warmup, step, tokens_trained;
    double prior_seconds;     /* from the checkpoint */
    char fingerprint[65];
    char ckpt_dir[4096], ckpt_path[4096], log_path[4096];
    distill_progress_fn progress;
    void *progress_ctx;
    double t0;
    distill_progress pr;
} run_state;

static void run_free(run_state *r) {
    for (int i = 0; i < r->n_train; i++) {
        if (r->m) free(r->m[i]);
        if (r->v) free(r->v[i]);
    }
    free(r->tp), free(r->m), free(r->v), free(r->g), free(r->n);
    kvt_run_free(&r->rs);
    kvt_run_free(&r->rt);
    distill_sampler_free(&r->sampler);
    distill_seqs_free(&r->train);
    distill_seqs_free(&r->eval);
    kv_tokenizer_free(r->tok);
    kvt_model_free(&r->student);
    kvt_model_free(&r->teacher);
}

static int check_pair(const kvt_model *t, const kvt_model *s, kv_error *err) {
    if (!kvmap_is_identity(&t->map))
        return kv_fail(err, KV_EINVAL, "%s: the teacher must be an original model (its KV map "
                       "is %s)", t->dir, t->map.name);
    if (t->dims.n_layers != s->dims.n_layers || t->dims.hidden != s->dims.hidden || t->dims.n_heads != s->dims.n_heads || t->dims.n_kv_heads != s->dims.n_kv_heads || t->dims.head_dim != s->dims.head_dim ||
        t->dims.ffn != s->dims.ffn || t->dims.vocab != s->dims.vocab)
        return kv_fail(err, KV_EINVAL, "%s and %s: teacher and student shapes differ (layers "
                       "%d/%d, hidden %d/%d, vocab %d/%d)", t->dir, s->dir, t->dims.n_layers, s->dims.n_layers, t->dims.hidden,
                       s->dims.hidden, t->dims.vocab, s->dims.vocab);
    return 0;
}

static int load_tokenizer(run_state *r, kv_error *err) {
    const char *dirs[] = {r->o->teacher_dir, r->o->student_dir};
    return distill_tokenizer_load(&r->tok, dirs, 2, &r->teacher.cfg, err);
}

static int load_files(distill_tokens *d, const char *const *files, int n, const run_state *r,
                      kv_error *err) {
    for (int i = 0; i < n; i++) {
        int rc = distill_tokens_load(d, files[i], r->tok, r->teacher.dims.vocab, err);
        if (rc) return rc;
    }
    return 0;
}

static int load_data(run_state *r, kv_error *err) {
    const distill_opts *o = r->o;
    distill_tokens d = {0};
    int rc = load_files(&d, o->data, o->n_data, r, err);
    if (rc) goto out;
    if (o->n_eval_data) {
        distill_tokens e = {0};
        if (!(rc = load_files(&e, o->eval_data, o->n_eval_data, r, err)) &&
            !(rc = distill_pack(&r->train, &d, 0, d.n, o->seq_len, err)))
            rc = distill_pack(&r->eval, &e, 0, e.n, o->seq_len, err);
        distill_tokens_free(&e);
    } else {
        distill_seqs all;
        if (!(rc = distill_pack(&all, &d, 0, d.n, o->seq_len, err))) {
            rc = distill_split(&r->train, &r->eval, &all, o->eval_frac, err);
            distill_seqs_free(&all);
        }
    }
    if (!rc && (r->train.n < 1 || r->eval.n < 1))
        rc = kv_fail(err, KV_EINVAL, "data: %ld training and %ld held-out sequences of %d tokens; "
                     "need at least one of each", r->train.n, r->eval.n, o->seq_len);
out:
    distill_tokens_free(&d);
    return rc;
}

static int setup_optimizer(run_state *r, kv_error *err) {
    long count = kvt_model_set_trainable_distill(&r->student, err);
    if (count < 0) return (int)count;
    for (int i = 0; i < r->student.n_params; i++) r->n_train += r->student.params[i].trainable;
    const size_t k = (size_t)r->n_train;
    r->tp = calloc(k, sizeof *r->tp);
    r->m = calloc(k, sizeof *r->m);
    r->v = calloc(k, sizeof *r->v);
    r->g = calloc(k, sizeof *r->g);
    r->n = calloc(k, sizeof *r->n);
    if (!r->tp || !r->m || !r->v || !r->g || !r->n)
        return kv_fail(err, KV_ENOMEM, "optimiser: out of memory");
    for (int i = 0, j = 0; i < r->student.n_params; i++) {
        kvt_param *p = &r->student.params[i];
        if (!p->trainable) continue;
        r->tp[j] = p;
        r->g[j] = p->g;
        r->n[j] = p->n;
        r->m[j] = calloc(p->n ? p->n : 1, sizeof(float));
        r->v[j] = calloc(p->n ? p->n : 1, sizeof(float));
        if (!r->m[j] || !r->v[j]) return kv_fail(err, KV_ENOMEM, "optimiser: out of memory");
        j++;
    }
    return 0;
}

/* everything the trajectory depends on: a resumed run must match it */
static void compute_fingerprint(run_state *r) {
    const distill_opts *o = r->o;
    char buf[1024];
    int len = snprintf(buf, sizeof buf,
                       "T=%d B=%d accum=%d steps=%ld warmup=%ld seed=%llu lr=%.17g decay=%d "
                       "b1=%.17g b2=%.17g eps=%.17g wd=%.17g clip=%.17g temp=%.17g mse=%.17g "
                       "passes=%d map=%s n_train=%ld",
                       o->seq_len, o->batch, o->accum, r->total_steps, r->warmup,
                       (unsigned long long)o->seed, o->lr, (int)o->decay, o->adam.beta1,
                       o->adam.beta2, o->adam.eps, o->adam.weight_decay, o->clip, o->temperature,
                       o->mse_weight, o->passes, r->student.map.name, r->train.n);
    if (o->grad_passes > 1 && len > 0 && (size_t)len < sizeof buf) /* default runs keep their old fingerprint */
        len += snprintf(buf + len, sizeof buf - (size_t)len, " grad_passes=%d", o->grad_passes);
    if (o->ce_weight != 0 && len > 0 && (size_t)len < sizeof buf)
        len += snprintf(buf + len, sizeof buf - (size_t)len, " ce=%.17g", o->ce_weight);
    kv_sha256_ctx c;
    kv_sha256_init(&c);
    kv_sha256_update(&c, buf, (size_t)len);
    kv_sha256_update(&c, r->train.ids, sizeof(int32_t) * (size_t)(r->train.n * r->train.T));
    for (int i = 0; i < r->n_train; i++) {
        kv_sha256_update(&c, r->tp[i]->name, strlen(r->tp[i]->name));
        kv_sha256_update(&c, r->tp[i]->w, sizeof(float) * r->tp[i]->n);
    }
    uint8_t d[32];
    kv_sha256_final(&c, d);
    kv_sha256_hex(d, r->fingerprint);
}

/* ---- checkpoint ---- */

static int save_checkpoint(run_state *r, kv_error *err) {
    const int n = 3 * r->n_train;
    st_spec *specs = calloc((size_t)n, sizeof *specs);
    const void **data = calloc((size_t)n, sizeof *data);
    char (*names)[KVT_NAME_MAX + 16] = calloc((size_t)n, sizeof *names);
    int rc = 0;
    if (!specs || !data || !names) {
        rc = kv_fail(err, KV_ENOMEM, "checkpoint: out of memory");
        goto out;
    }
    static const char *const kinds[] = {"param.", "adam_m.", "adam_v."};
    for (int i = 0; i < r->n_train; i++)
        for (int k = 0; k < 3; k++) {
            const int j = 3 * i + k;
            snprintf(names[j], sizeof names[j], "%s%s", kinds[k], r->tp[i]->name);
            specs[j].name = names[j];
            specs[j].dtype = KV_F32;
            specs[j].n_dims = 1;
            specs[j].shape[0] = (int64_t)r->tp[i]->n;
            data[j] = k == 0 ? (const void *)r->tp[i]->w : k == 1 ? r->m[i] : r->v[i];
        }
    char step[32], tokens[32], secs[64];
    snprintf(step, sizeof step, "%ld", r->step);
    snprintf(tokens, sizeof tokens, "%ld", r->tokens_trained);
    snprintf(secs, sizeof secs, "%.17g", r->prior_seconds + now_s() - r->t0);
    const char *meta[] = {"format", DISTILL_STATE_FORMAT, "step", step, "tokens_trained", tokens,
                          "seconds", secs, "fingerprint", r->fingerprint};
    if (!(rc = kv_mkdir_p(r->ckpt_dir, err)))
        rc = st_write_file(r->ckpt_path, specs, data, n, meta, 5, err);
out:
    free(specs);
    free(data);
    free(names);
    return rc;
}

static int load_checkpoint(run_state *r, kv_error *err) {
    st_file f;
    distill_state st;
    int rc = st_open(&f, r->ckpt_path, err);
    if (rc) return rc;
    if ((rc = distill_state_read(&f, r->fingerprint, r->total_steps, &st, err))) goto out;
    r->step = st.step;
    r->tokens_trained = st.tokens_trained;
    r->prior_seconds = st.seconds;
    static const char *const kinds[] = {"param.", "adam_m.", "adam_v."};
    for (int i = 0; i < r->n_train && !rc; i++)
        for (int k = 0; k < 3; k++) {
            const st_tensor *t = distill_state_tensor(&f, kinds[k], r->tp[i]->name, r->tp[i]->n);
            if (!t) {
                rc = kv_fail(err, KV_EFORMAT, "%s: tensor '%s%s' missing or of the wrong shape",
                             r->ckpt_path, kinds[k], r->tp[i]->name);
                break;
            }
            float *dst = k == 0 ? r->tp[i]->w : k == 1 ? r->m[i] : r->v[i];
            memcpy(dst, t->data, t->n_bytes);
        }
out:
    st_close(&f);
    return rc;
}

/* the log keeps the lines of steps <= step (those of a killed run past its checkpoint go) */
static int trim_log(const char *path, long step, kv_error *err) {
    if (!kv_path_exists(path)) return 0;
    char *text = NULL;
    size_t len = 0;
    int rc = kv_read_file(path, &text, &len, (size_t)1 << 32, err);
    if (rc) return rc;
    rc = kv_write_file_atomic(path, text, distill_log_keep(text, step), err);
    free(text);
    return rc;
}

/* ---- progress ---- */

static void report_progress(run_state *r) {
    if (!r->progress) return;
    r->pr.seconds = now_s() - r->t0;
    r->progress(r->progress_ctx, &r->pr);
}

static void eval_tick(void *ctx, long done, long total) {
    run_state *r = ctx;
    r->pr.eval_done = done;
    r->pr.eval_total = total;
    report_progress(r);
}

/* ---- report ---- */

static int write_report(const run_state *r, const distill_report *rep, kv_error *err) {
    cJSON *j = cJSON_CreateObject();
    if (!j) return kv_fail(err, KV_ENOMEM, "report: out of memory");
    cJSON_AddStringToObject(j, "teacher", r->o->teacher_dir);
    cJSON_AddStringToObject(j, "student", r->o->student_dir);
    cJSON_AddStringToObject(j, "map", rep->map_name);
    if (r->student.map.kind == KVMAP_CROSS)
        cJSON_AddStringToObject(j, "layer_types", rep->layer_types);
    cJSON_AddNumberToObject(j, "kv_slots", kvmap_n_slots(&r->student.map));
    cJSON_AddNumberToObject(j, "layers", r->student.dims.n_layers);
    cJSON_AddNumberToObject(j, "teacher_ppl", rep->teacher_ppl);
    cJSON_AddNumberToObject(j, "student_before_ppl", rep->student_before_ppl);
    cJSON_AddNumberToObject(j, "student_after_ppl", rep->student_after_ppl);
    cJSON_AddNumberToObject(j, "kl_before", rep->kl_before);
    cJSON_AddNumberToObject(j, "kl_after", rep->kl_after);
    const double gap = rep->student_before_ppl - rep->teacher_ppl;
    cJSON_AddNumberToObject(j, "gap_closed",
                            gap != 0 ? (rep->student_before_ppl - rep->student_after_ppl) / gap : 0);
    cJSON_AddNumberToObject(j, "ppl_ratio_after", rep->student_after_ppl / rep->teacher_ppl);
    cJSON_AddNumberToObject(j, "tokens_trained", (double)rep->tokens_trained);
    cJSON_AddNumberToObject(j, "steps", (double)rep->steps);
    cJSON_AddNumberToObject(j, "seconds", rep->seconds);
    cJSON_AddNumberToObject(j, "train_seconds", rep->train_seconds);
    cJSON_AddNumberToObject(j, "tokens_per_second", rep->tokens_per_s);
    cJSON_AddNumberToObject(j, "resumed_from_step", (double)rep->resumed_from_step);
    cJSON_AddNumberToObject(j, "eval_tokens", (double)rep->eval_tokens);
    cJSON_AddNumberToObject(j, "train_tokens_available", (double)rep->train_tokens_available);
    cJSON_AddNumberToObject(j, "trainable_params", (double)rep->trainable_params);
    cJSON *opt = cJSON_AddObjectToObject(j, "options");
    const distill_opts *o = r->o;
    cJSON_AddNumberToObject(opt, "seq_len", o->seq_len);
    cJSON_AddNumberToObject(opt, "batch", o->batch);
    cJSON_AddNumberToObject(opt, "accum", o->accum);
    cJSON_AddNumberToObject(opt, "lr", o->lr);
    cJSON_AddNumberToObject(opt, "warmup_steps", (double)r->warmup);
    cJSON_AddStringToObject(opt, "decay", o->decay == LR_COSINE ? "cosine"
                                          : o->decay == LR_CONSTANT ? "constant" : "linear");
    cJSON_AddNumberToObject(opt, "clip", o->clip);
    cJSON_AddNumberToObject(opt, "temperature", o->temperature);
    cJSON_AddNumberToObject(opt, "mse_weight", o->mse_weight);
    cJSON_AddNumberToObject(opt, "ce_weight", o->ce_weight);
    cJSON_AddNumberToObject(opt, "passes", o->passes);
    cJSON_AddNumberToObject(opt, "grad_passes", o->grad_passes);
    cJSON_AddNumberToObject(opt, "seed", (double)o->seed);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) return kv_fail(err, KV_ENOMEM, "report: out of memory");
    char path[4096];
    int rc = kv_join(path, sizeof path, o->out_dir, "report.json", err);
    if (!rc) {
        size_t len = strlen(text);
        text[len] = '\n';
        rc = kv_write_file_atomic(path, text, len + 1, err);
    }
    free(text);
    return rc;
}

/* ---- the loop ---- */

static int train_step(run_state *r, int32_t *tokens, FILE *log, kv_error *err) {
    const distill_opts *o = r->o;
    const int B = o->batch, T = o->seq_len;
    kvt_model_zero_grads(&r->student);
    kvt_loss sum = {0};
    for (int a = 0; a < o->accum; a++) {
        for (int b = 0; b < B; b++) {
            const long k = (r->step * o->accum + a) * B + b;
            const long seq = distill_sampler_get(&r->sampler, k);
            memcpy(tokens + (size_t)b * T, r->train.ids + (size_t)seq * T,
                   sizeof(int32_t) * (size_t)T);
        }
        kvt_loss l;
        const kvt_loss_weights w = {(float)o->temperature, (float)o->mse_weight, (float)o->ce_weight};
        int rc = kvt_distill_microbatch(&r->rs, &r->rt, tokens, &w, 1.0f / (float)o->accum, &l, err);
        if (rc) return rc;
        sum.loss += l.loss / o->accum;
        sum.kl += l.kl / o->accum;
        sum.mse += l.mse / o->accum;
        sum.ce += l.ce / o->accum;
    }
    const double norm = grad_global_norm(r->g, r->n, r->n_train);
    if (!isfinite(norm))
        return kv_fail(err, KV_EINVAL, "step %ld: the gradient is not finite (loss %g); lower "
                       "--lr", r->step + 1, sum.loss);
    if (o->clip > 0 && norm > o->clip) grad_scale_all(r->g, r->n, r->n_train, (float)(o->clip / norm));
    const double lr = lr_at(r->step, r->total_steps, r->warmup, o->lr, o->decay);
    for (int i = 0; i < r->n_train; i++)
        adamw_update(r->tp[i]->w, r->g[i], r->m[i], r->v[i], r->n[i], &o->adam, r->step + 1, lr);
    r->step++;
    r->tokens_trained += (long)o->accum * B * T;
    r->pr.step = r->step;
    r->pr.tokens = r->tokens_trained;
    r->pr.loss = sum.loss;
    r->pr.kl = sum.kl;
    r->pr.mse = sum.mse;
    r->pr.ce = sum.ce;
    r->pr.lr = lr;
    r->pr.grad_norm = norm;
    if (log) {
        fprintf(log, "{\"step\": %ld, \"loss\": %.9g, \"kl\": %.9g, \"mse\": %.9g, \"ce\": %.9g, "
                "\"lr\": %.9g, \"grad_norm\": %.9g, \"tokens\": %ld, \"seconds\": %.3f}\n", r->step,
                sum.loss, sum.kl, sum.mse, sum.ce, lr, norm, r->tokens_trained,
                r->prior_seconds + now_s() - r->t0);
        if (fflush(log))
            return kv_fail(err, KV_EIO, "%s: write failed", r->log_path);
    }
    return 0;
}

static int check_opts(const distill_opts *o, kv_error *err) {
    if (!o->teacher_dir || !o->student_dir || !o->out_dir || o->n_data < 1)
        return kv_fail(err, KV_EINVAL, "distill: teacher, student, output and data are required");
    if (o->seq_len < 2 || o->batch < 1 || o->accum < 1 || o->passes < 1)
        return kv_fail(err, KV_EINVAL, "distill: seq-len >= 2, batch, accum, passes >= 1");
    if (o->grad_passes < 1 || o->grad_passes > o->passes)
        return kv_fail(err, KV_EINVAL, "distill: grad-passes %d must be 1 .. passes (%d)", o->grad_passes, o->passes);
    if (o->steps < 0 || o->tokens < 0 || (o->steps == 0 && o->tokens == 0))
        return kv_fail(err, KV_EINVAL, "distill: give a number of steps or of tokens");
    if (!(o->lr > 0) || !(o->warmup_frac >= 0 && o->warmup_frac <= 1) || !(o->clip >= 0) ||
        !(o->temperature > 0) || !(o->mse_weight >= 0) || !(o->ce_weight >= 0) ||
        !(o->eval_frac >= 0 && o->eval_frac < 1))
        return kv_fail(err, KV_EINVAL, "distill: lr, temperature > 0; warm-up in [0, 1]; clip, "
                       "mse-weight, ce-weight >= 0; held-out fraction in [0, 1)");
    return 0;
}

int distill_train(const distill_opts *o, distill_progress_fn progress, void *progress_ctx,
                  distill_report *rep, kv_error *err) {
    memset(rep, 0, sizeof *rep);
    run_state r = {.o = o, .progress = progress, .progress_ctx = progress_ctx, .t0 = now_s()};
    int32_t *tokens = NULL;
    FILE *log = NULL;
    int rc = check_opts(o, err);
    if (rc) return rc;
    if ((rc = kv_join(r.ckpt_dir, sizeof r.ckpt_dir, o->out_dir, "checkpoint", err)) ||
        (rc = kv_join(r.ckpt_path, sizeof r.ckpt_path, r.ckpt_dir, "state.safetensors", err)) ||
        (rc = kv_join(r.log_path, sizeof r.log_path, o->out_dir, "train_log.jsonl", err)))
        return rc;
    const int resuming = o->resume && kv_path_exists(r.ckpt_path);
    if (!o->resume && !o->force && !kv_dir_is_empty(o->out_dir))
        return kv_fail(err, KV_EINVAL, "%s: not empty; use --resume to continue a run there or "
                       "--force to overwrite", o->out_dir);

    if ((rc = kvt_model_load(&r.teacher, o->teacher_dir, err)) ||
        (rc = kvt_model_load(&r.student, o->student_dir, err)) ||
        (rc = check_pair(&r.teacher, &r.student, err)) || (rc = load_tokenizer(&r, err)) ||
        (rc = load_data(&r, err)) || (rc = setup_optimizer(&r, err)))
        goto out;
    const long per_step = (long)o->accum * o->batch * o->seq_len;
    r.total_steps = o->steps ? o->steps : (o->tokens + per_step - 1) / per_step;
    r.warmup = (long)llround(o->warmup_frac * (double)r.total_steps);
    if ((rc = distill_sampler_init(&r.sampler, r.train.n, o->seed, err)) ||
        (rc = kvt_run_init_grad(&r.rs, &r.student, o->batch, o->seq_len, o->passes, o->grad_passes, 1, err)) ||
        (rc = kvt_run_init(&r.rt, &r.teacher, o->batch, o->seq_len, 1, 0, err)))
        goto out;
    compute_fingerprint(&r);
    map_display_name(&r.student.map, rep->map_name, sizeof rep->map_name);
    kvmap_layer_types(&r.student.map, rep->layer_types, sizeof rep->layer_types);
    for (int i = 0; i < r.n_train; i++) rep->trainable_params += (long)r.n[i];
    rep->train_tokens_available = r.train.n * r.train.T;

    /* before */
    distill_eval_result ev;
    r.pr.phase = DISTILL_EVAL_BEFORE;
    r.pr.total_steps = r.total_steps;
    if ((rc = distill_evaluate(&r.rs, &r.rt, &r.eval, o->eval_max_seqs, &ev, eval_tick, &r, err)))
        goto out;
    rep->teacher_ppl = ev.teacher_ppl;
    rep->student_before_ppl = ev.student_ppl;
    rep->kl_before = ev.kl;
    rep->eval_tokens = ev.tokens;

    /* resume or start */
    if ((rc = kv_mkdir_p(o->out_dir, err))) goto out;
    if (resuming) {
        if ((rc = load_checkpoint(&r, err)) || (rc = trim_log(r.log_path, r.step, err))) goto out;
    }
    rep->resumed_from_step = r.step;
    if (!(log = fopen(r.log_path, resuming ? "a" : "w"))) {
        rc = kv_fail(err, KV_EIO, "%s: cannot open for writing", r.log_path);
        goto out;
    }
    tokens = malloc(sizeof(int32_t) * (size_t)o->batch * o->seq_len);
    if (!tokens) {
        rc = kv_fail(err, KV_ENOMEM, "out of memory");
        goto out;
    }
    r.pr.phase = DISTILL_TRAIN;
    r.pr.step = r.step;
    r.pr.tokens = r.tokens_trained;
    report_progress(&r);
    const double train_t0 = now_s();
    const long first_step = r.step;
    while (r.step < r.total_steps) {
        if ((rc = train_step(&r, tokens, log, err))) goto out;
        const double dt = now_s() - train_t0;
        r.pr.tokens_per_s = dt > 0 ? (double)(r.step - first_step) * per_step / dt : 0;
        report_progress(&r);
        if (o->save_every > 0 && r.step % o->save_every == 0 && r.step < r.total_steps &&
            (rc = save_checkpoint(&r, err)))
            goto out;
        if (o->stop_after > 0 && r.step - first_step >= o->stop_after) goto out; /* "killed" */
    }
    rep->train_seconds = now_s() - train_t0;
    rep->tokens_per_s = rep->train_seconds > 0
                            ? (double)(r.step - first_step) * per_step / rep->train_seconds : 0;
    if ((rc = save_checkpoint(&r, err))) goto out;

    /* after */
    r.pr.phase = DISTILL_EVAL_AFTER;
    r.pr.eval_done = 0;
    if ((rc = distill_evaluate(&r.rs, &r.rt, &r.eval, o->eval_max_seqs, &ev, eval_tick, &r, err)))
        goto out;
    rep->student_after_ppl = ev.student_ppl;
    rep->kl_after = ev.kl;
    r.pr.phase = DISTILL_SAVE;
    report_progress(&r);
    char tok_src[4096];
    const char *aux = NULL;
    if ((rc = kv_join(tok_src, sizeof tok_src, o->student_dir, "tokenizer.json", err))) goto out;
    if (!kv_path_exists(tok_src)) aux = o->teacher_dir;
    if ((rc = kvt_model_save(&r.student, o->out_dir, aux, err))) goto out;
    rep->tokens_trained = r.tokens_trained;
    rep->steps = r.step;
    rep->seconds = r.prior_seconds + now_s() - r.t0;
    rc = write_report(&r, rep, err);
out:
    if (log && fclose(log) && !rc) rc = kv_fail(err, KV_EIO, "%s: write failed", r.log_path);
    free(tokens);
    run_free(&r);
    return rc;
}
