/* The distillation run: set-up, the training loop and its step, resume, output. Evaluation,
 * checkpoints, the step log and the report are in distill_eval.c, distill_ckpt.c, distill_log.c
 * and distill_report.c; the optimiser step runs on the backend (optim.h). */
#include "transform/train/distill.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/fileio.h"
#include "formats/tokenizer.h"
#include "transform/train/distill_ckpt.h"
#include "transform/train/distill_log.h"
#include "transform/train/distill_report.h"
#include "transform/train/optim.h"

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

/* ---- the state of a run ---- */

typedef struct {
    const distill_opts *o;
    kv_backend own_backend;   /* when o->backend is NULL */
    kv_backend *b;
    kvt_model teacher, student;
    kv_tokenizer *tok;
    distill_seqs train, eval;
    distill_sampler sampler;
    kvt_run rs, rt;
    kvt_optim opt;
    long total_steps, warmup, step, tokens_trained;
    double prior_seconds;     /* from the checkpoint */
    char fingerprint[65];
    char ckpt_dir[4096], ckpt_path[4096], log_path[4096];
    distill_log log;
    distill_progress_fn progress;
    void *progress_ctx;
    double t0;
    distill_progress pr;
} run_state;

static void run_free(run_state *r) {
    kvt_optim_free(&r->opt);
    kvt_run_free(&r->rs);
    kvt_run_free(&r->rt);
    distill_sampler_free(&r->sampler);
    distill_seqs_free(&r->train);
    distill_seqs_free(&r->eval);
    kv_tokenizer_free(r->tok);
    kvt_model_free(&r->student);
    kvt_model_free(&r->teacher);
    if (r->b == &r->own_backend) kv_backend_free(&r->own_backend);
}

static int check_pair(const kvt_model *t, const kvt_model *s, kv_error *err) {
    if (!kvmap_is_identity(&t->cfg.map))
        return kv_fail(err, KV_EINVAL, "%s: the teacher must be an original model (its KV map "
                       "is %s)", t->dir, t->cfg.map.name);
    const llama_dims *a = &t->dims, *b = &s->dims;
    if (a->n_layers != b->n_layers || a->hidden != b->hidden || a->n_heads != b->n_heads ||
        a->n_kv_heads != b->n_kv_heads || a->head_dim != b->head_dim || a->ffn != b->ffn ||
        a->vocab != b->vocab)
        return kv_fail(err, KV_EINVAL, "%s and %s: teacher and student shapes differ (layers "
                       "%d/%d, hidden %d/%d, vocab %d/%d)", t->dir, s->dir, a->n_layers,
                       b->n_layers, a->hidden, b->hidden, a->vocab, b->vocab);
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

static int save_checkpoint(run_state *r, kv_error *err) {
    const distill_ckpt_meta meta = {.step = r->step, .tokens_trained = r->tokens_trained,
                                    .seconds = r->prior_seconds + now_s() - r->t0};
    return distill_ckpt_save(r->ckpt_dir, r->ckpt_path, r->fingerprint, &r->opt, &meta, err);
}

static int load_checkpoint(run_state *r, kv_error *err) {
    distill_ckpt_meta meta = {0};
    int rc = distill_ckpt_load(r->ckpt_path, r->fingerprint, r->total_steps, &r->opt, &meta, err);
    if (rc) return rc;
    r->step = meta.step;
    r->tokens_trained = meta.tokens_trained;
    r->prior_seconds = meta.seconds;
    return 0;
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

/* ---- the loop ---- */

/* accum micro-batches into the gradients, the norm, clipping, AdamW; only the losses and the
 * norm come back to the host */
static int train_step(run_state *r, int32_t *tokens, kv_error *err) {
    const distill_opts *o = r->o;
    const int B = o->batch, T = o->seq_len;
    int rc = kvt_optim_zero_grads(&r->opt, err);
    if (rc) return rc;
    kvt_loss sum = {0};
    for (int a = 0; a < o->accum; a++) {
        for (int b = 0; b < B; b++) {
            const long k = (r->step * o->accum + a) * B + b;
            const long seq = distill_sampler_get(&r->sampler, k);
            memcpy(tokens + (size_t)b * T, r->train.ids + (size_t)seq * T,
                   sizeof(int32_t) * (size_t)T);
        }
        kvt_loss l;
        const kvt_loss_weights w = {(float)o->temperature, (float)o->mse_weight,
                                    (float)o->ce_weight};
        if ((rc = kvt_distill_microbatch(&r->rs, &r->rt, tokens, &w, 1.0f / (float)o->accum, &l,
                                         err)))
            return rc;
        sum.loss += l.loss / o->accum;
        sum.kl += l.kl / o->accum;
        sum.mse += l.mse / o->accum;
        sum.ce += l.ce / o->accum;
    }
    double norm;
    if ((rc = kvt_optim_grad_norm(&r->opt, &norm, err))) return rc;
    if (!isfinite(norm))
        return kv_fail(err, KV_EINVAL, "step %ld: the gradient is not finite (loss %g); lower "
                       "--lr", r->step + 1, sum.loss);
    if (o->clip > 0 && norm > o->clip &&
        (rc = kvt_optim_scale_grads(&r->opt, (float)(o->clip / norm), err)))
        return rc;
    const double lr = lr_at(r->step, r->total_steps, r->warmup, o->lr, o->decay);
    if ((rc = kvt_optim_adamw(&r->opt, &o->adam, r->step + 1, lr, err))) return rc;
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
    const distill_log_entry e = {.step = r->step, .loss = sum.loss, .kl = sum.kl, .mse = sum.mse,
                                 .ce = sum.ce, .lr = lr, .grad_norm = norm,
                                 .tokens = r->tokens_trained,
                                 .seconds = r->prior_seconds + now_s() - r->t0};
    return distill_log_append(&r->log, &e, err);
}

static int check_opts(const distill_opts *o, kv_error *err) {
    if (!o->teacher_dir || !o->student_dir || !o->out_dir || o->n_data < 1)
        return kv_fail(err, KV_EINVAL, "distill: teacher, student, output and data are required");
    if (o->seq_len < 2 || o->batch < 1 || o->accum < 1 || o->passes < 1)
        return kv_fail(err, KV_EINVAL, "distill: seq-len >= 2, batch, accum, passes >= 1");
    if (o->grad_passes < 1 || o->grad_passes > o->passes)
        return kv_fail(err, KV_EINVAL, "distill: grad-passes %d must be 1 .. passes (%d)",
                       o->grad_passes, o->passes);
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
    r.b = o->backend;
    if (!r.b) {
        if ((rc = kv_backend_cpu_init(&r.own_backend, 0, err))) return rc;
        r.b = &r.own_backend;
    }

    if ((rc = kvt_model_load(&r.teacher, o->teacher_dir, err)) ||
        (rc = kvt_model_load(&r.student, o->student_dir, err)) ||
        (rc = check_pair(&r.teacher, &r.student, err)) || (rc = load_tokenizer(&r, err)) ||
        (rc = load_data(&r, err)))
        goto out;
    long count = kvt_model_set_trainable_distill(&r.student, err);
    if (count < 0) {
        rc = (int)count;
        goto out;
    }
    const long per_step = (long)o->accum * o->batch * o->seq_len;
    r.total_steps = o->steps ? o->steps : (o->tokens + per_step - 1) / per_step;
    r.warmup = (long)llround(o->warmup_frac * (double)r.total_steps);
    if ((rc = distill_sampler_init(&r.sampler, r.train.n, o->seed, err)) ||
        (rc = kvt_run_init_grad(&r.rs, r.b, &r.student, o->batch, o->seq_len, o->passes,
                                o->grad_passes, 1, err)) ||
        (rc = kvt_run_init(&r.rt, r.b, &r.teacher, o->batch, o->seq_len, 1, 0, err)) ||
        (rc = kvt_optim_init(&r.opt, &r.rs, err)))
        goto out;
    distill_fingerprint(r.fingerprint, o, r.total_steps, r.warmup, r.student.cfg.map.name, &r.train,
                        &r.opt);
    distill_map_name(&r.student.cfg.map, rep->map_name, sizeof rep->map_name);
    kvmap_layer_types(&r.student.cfg.map, rep->layer_types, sizeof rep->layer_types);
    rep->trainable_params = (long)r.opt.count;
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
        if ((rc = load_checkpoint(&r, err)) || (rc = distill_log_trim(r.log_path, r.step, err)))
            goto out;
    }
    rep->resumed_from_step = r.step;
    if ((rc = distill_log_open(&r.log, r.log_path, resuming, err))) goto out;
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
        if ((rc = train_step(&r, tokens, err))) goto out;
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
    if ((rc = kvt_run_params_to_host(&r.rs, err)) ||
        (rc = kvt_model_save(&r.student, o->out_dir, aux, err)))
        goto out;
    rep->tokens_trained = r.tokens_trained;
    rep->steps = r.step;
    rep->seconds = r.prior_seconds + now_s() - r.t0;
    rc = distill_report_write(o, r.warmup, &r.student.cfg.map, r.student.dims.n_layers, rep, err);
out:;
    kv_error close_err = {0};
    const int crc = distill_log_close(&r.log, rc ? &close_err : err);
    if (!rc) rc = crc;
    free(tokens);
    run_free(&r);
    return rc;
}
