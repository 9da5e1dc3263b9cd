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
#include "transform/train/distill_chat.h"
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

int distill_uses_mask(const distill_opts *o, const distill_seqs *train) {
    return train->kl_mask && o->loss_tokens != DISTILL_LOSS_ALL;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the state of a run ---- */

typedef struct {
    const distill_opts *o;
    kv_backend own_backend; /* when o->backend is NULL */
    kv_backend *b;
    kvt_model teacher, student;
    kv_tokenizer *tok;
    distill_chat_format chat; /* when chat data is read */
    int chat_loaded;
    distill_seqs train, eval;
    distill_sampler sampler;
    kvt_run rs, rt;
    kvt_optim opt;
    long total_steps, warmup, step, tokens_trained;
    double prior_seconds; /* from the checkpoint */
    char fingerprint[65];
    char ckpt_dir[4096], ckpt_path[4096], log_path[4096];
    distill_log log;
    distill_progress_fn progress;
    void *progress_ctx;
    double t0;
    distill_progress pr;
    kv_dist *d; /* the processes (o->dist, or a group of one) */
    int root; /* rank 0: reads and writes OUT_DIR, reports progress */
    int stopped; /* a status check saw a failure: no more collectives */
    int local_batch; /* sequences of each micro-batch this process runs: batch / P */
    int resuming;
    int32_t *tokens; /* [local_batch * seq_len] host ids of a micro-batch */
    int use_mask; /* distill_uses_mask */
    float *row_weight; /* [local_batch * seq_len] the KL's weights of a micro-batch */
    long *batch_seqs; /* [local_batch] the training sequences of a micro-batch */
    long loss_tokens_trained; /* positions the KL trained on, all processes */
} run_state;

static void run_free(run_state *r) {
    free(r->tokens);
    free(r->row_weight);
    free(r->batch_seqs);
    distill_chat_format_free(&r->chat);
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
        return kv_fail(err, KV_EINVAL,
                       "%s: the teacher must be an original model (its KV map "
                       "is %s)",
                       t->dir, t->cfg.map.name);
    const llama_dims *a = &t->dims, *b = &s->dims;
    if (a->n_layers != b->n_layers || a->hidden != b->hidden || a->n_heads != b->n_heads ||
        a->n_kv_heads != b->n_kv_heads || a->head_dim != b->head_dim || a->ffn != b->ffn ||
        a->vocab != b->vocab)
        return kv_fail(err, KV_EINVAL,
                       "%s and %s: teacher and student shapes differ (layers "
                       "%d/%d, hidden %d/%d, vocab %d/%d)",
                       t->dir, s->dir, a->n_layers, b->n_layers, a->hidden, b->hidden, a->vocab,
                       b->vocab);
    return 0;
}

static int load_tokenizer(run_state *r, kv_error *err) {
    const char *dirs[] = {r->o->teacher_dir, r->o->student_dir};
    return distill_tokenizer_load(&r->tok, dirs, 2, &r->teacher.cfg, err);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static int is_chat_file(const distill_opts *o, const char *path) {
    return o->data_format == DISTILL_DATA_CHAT ||
           (o->data_format == DISTILL_DATA_AUTO && ends_with(path, ".jsonl"));
}

static int load_chat_file(distill_tokens *d, const char *path, run_state *r, kv_error *err) {
    int rc;
    if (!r->chat_loaded) {
        const char *dirs[] = {r->o->teacher_dir, r->o->student_dir};
        if ((rc = distill_chat_format_load(&r->chat, r->o->chat_template, dirs, 2, r->tok, err)))
            return rc;
        r->chat_loaded = 1;
    }
    char *buf = NULL;
    size_t len = 0;
    if ((rc = kv_read_file(path, &buf, &len, (size_t)8 << 30, err))) return rc;
    rc = distill_tokens_from_chat(d, buf, len, r->tok, &r->chat, path, err);
    free(buf);
    return rc;
}

static int load_files(distill_tokens *d, const char *const *files, int n, run_state *r,
                      kv_error *err) {
    for (int i = 0; i < n; i++) {
        int rc = is_chat_file(r->o, files[i])
                     ? load_chat_file(d, files[i], r, err)
                     : distill_tokens_load(d, files[i], r->tok, r->teacher.dims.vocab, err);
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
        rc = kv_fail(err, KV_EINVAL,
                     "data: %ld training and %ld held-out sequences of %d tokens; "
                     "need at least one of each",
                     r->train.n, r->eval.n, o->seq_len);
    if (!rc && o->loss_tokens == DISTILL_LOSS_ASSISTANT && !r->train.kl_mask)
        rc = kv_fail(err, KV_EINVAL,
                     "--loss-tokens assistant needs chat data (a .jsonl --data file or "
                     "--data-format chat)");
    r->use_mask = !rc && distill_uses_mask(o, &r->train);
out:
    distill_tokens_free(&d);
    return rc;
}

/* the k-th training sequence's KL positions */
static long seq_loss_tokens(const run_state *r, long seq) {
    const int T = r->o->seq_len;
    if (!r->use_mask) return T;
    long c = 0;
    for (int t = 0; t < T; t++) c += r->train.kl_mask[(size_t)seq * T + t];
    return c;
}

/* KL positions of optimiser step s (0-based) over every process */
static long step_loss_tokens(run_state *r, long s) {
    const distill_opts *o = r->o;
    long c = 0;
    for (long k = s * o->accum * o->batch; k < (s + 1) * o->accum * o->batch; k++)
        c += seq_loss_tokens(r, distill_sampler_get(&r->sampler, k));
    return c;
}

/* the KL weights of the micro-batch of local sequences seqs[b]: T*b/count on the positions the
 * mask keeps, 0 elsewhere (a mean over them; all 0 when there are none) */
static void fill_row_weight(run_state *r, const long *seqs, int b) {
    const int T = r->o->seq_len;
    long count = 0;
    for (int i = 0; i < b; i++) count += seq_loss_tokens(r, seqs[i]);
    const float w = count ? (float)((double)b * T / (double)count) : 0.0f;
    for (int i = 0; i < b; i++)
        for (int t = 0; t < T; t++)
            r->row_weight[(size_t)i * T + t] = r->train.kl_mask[(size_t)seqs[i] * T + t] ? w : 0.0f;
}

static int save_checkpoint(run_state *r, kv_error *err) {
    const distill_ckpt_meta meta = {.step = r->step,
                                    .tokens_trained = r->tokens_trained,
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

/* ---- data parallel (dist.h) ---- */

/* The status check every process makes at the same points: rc is this process's outcome since
 * the last one. Returns rc, or an error when another process failed; after a failure seen here
 * no process makes another collective call. A group of one returns rc. */
static int status_check(run_state *r, int rc, kv_error *err) {
    if (r->d->size == 1) return rc;
    int first = -1;
    kv_error derr = {0};
    const int drc = kv_dist_fail_any(r->d, rc != 0, &first, &derr);
    if (rc || drc || first >= 0) r->stopped = 1;
    if (rc) return rc;
    if (drc) {
        *err = derr;
        return drc;
    }
    if (first >= 0)
        return kv_fail(err, KV_EIO, "stopped: process %d of %d failed (its own error says why)",
                       first, r->d->size);
    return 0;
}

/* held-out evaluation, split over the processes (distill_evaluate_part), the sums reduced */
static int evaluate(run_state *r, distill_eval_result *ev, kv_error *err) {
    const distill_opts *o = r->o;
    distill_eval_sums sums;
    int rc = distill_evaluate_part(&r->rs, &r->rt, &r->eval, o->eval_max_seqs, r->d->rank,
                                   r->d->size, &sums, eval_tick, r, err);
    if ((rc = status_check(r, rc, err))) return rc;
    if (r->d->size > 1) {
        double v[9] = {sums.nll_s,
                       sums.nll_t,
                       sums.kl,
                       (double)sums.tokens,
                       sums.asst_nll_s,
                       sums.asst_nll_t,
                       sums.asst_kl,
                       (double)sums.asst_tokens,
                       (double)sums.asst_kl_rows};
        if ((rc = kv_dist_allreduce_f64(r->d, v, 9, err))) return rc;
        sums = (distill_eval_sums){.nll_s = v[0],
                                   .nll_t = v[1],
                                   .kl = v[2],
                                   .tokens = (long)llround(v[3]),
                                   .asst_nll_s = v[4],
                                   .asst_nll_t = v[5],
                                   .asst_kl = v[6],
                                   .asst_tokens = (long)llround(v[7]),
                                   .asst_kl_rows = (long)llround(v[8])};
    }
    distill_evaluate_finish(&sums, distill_eval_count(&r->eval, o->eval_max_seqs), r->rs.T, 1, ev);
    return 0;
}

/* rank 0's resume decision, step counters and (when resuming) trained state to every process */
static int share_start(run_state *r, kv_error *err) {
    if (r->d->size == 1) return 0;
    struct {
        long resuming, step, tokens;
        double seconds;
    } m = {r->resuming, r->step, r->tokens_trained, r->prior_seconds};
    int rc = kv_dist_bcast(r->d, &m, sizeof m, 0, err);
    if (rc) return rc;
    r->resuming = (int)m.resuming;
    r->step = m.step;
    r->tokens_trained = m.tokens;
    r->prior_seconds = m.seconds;
    return r->resuming ? kvt_optim_bcast_state(&r->opt, r->d, 0, err) : 0;
}

/* every process holds the same trained values (the replicas take identical steps when every
 * process gets the same sums; this checks it) */
static int check_replicas(run_state *r, kv_error *err) {
    unsigned char mine[32], root[32];
    int rc = kvt_optim_digest(&r->opt, mine, err);
    if ((rc = status_check(r, rc, err))) return rc;
    memcpy(root, mine, sizeof root);
    if ((rc = kv_dist_bcast(r->d, root, sizeof root, 0, err))) return rc;
    if (memcmp(root, mine, sizeof root))
        return kv_fail(err, KV_EMISMATCH,
                       "process %d of %d: its trained weights differ from "
                       "process 0's after step %ld (the replicas diverged: the gradient sums "
                       "were not the same bits on every process)",
                       r->d->rank, r->d->size, r->step);
    return 0;
}

/* ---- the loop ---- */

/* accum micro-batches into the gradients (this process's share of each; data parallel: the sum
 * over the processes), the norm, clipping, AdamW; only the losses and the norm come back to the
 * host */
static int train_step(run_state *r, kv_error *err) {
    const distill_opts *o = r->o;
    const int B = o->batch, b = r->local_batch, T = o->seq_len, P = r->d->size, rank = r->d->rank;
    int rc = kvt_optim_zero_grads(&r->opt, err);
    kvt_loss sum = {0};
    long *seqs = r->batch_seqs;
    for (int a = 0; a < o->accum && !rc; a++) {
        for (int i = 0; i < b; i++) {
            const long k = (r->step * o->accum + a) * B + (long)rank * b + i;
            const long seq = distill_sampler_get(&r->sampler, k);
            memcpy(r->tokens + (size_t)i * T, r->train.ids + (size_t)seq * T,
                   sizeof(int32_t) * (size_t)T);
            seqs[i] = seq;
        }
        if (r->use_mask) fill_row_weight(r, seqs, b);
        kvt_loss l;
        const kvt_loss_weights w = {(float)o->temperature, (float)o->mse_weight,
                                    (float)o->ce_weight};
        /* a mean over this process's b*T tokens: 1/P of it is its part of the global mean */
        if ((rc = kvt_distill_microbatch(&r->rs, &r->rt, r->tokens,
                                         r->use_mask ? r->row_weight : NULL, &w,
                                         1.0f / (float)(o->accum * P), &l, err)))
            break;
        sum.loss += l.loss / o->accum;
        sum.kl += l.kl / o->accum;
        sum.mse += l.mse / o->accum;
        sum.ce += l.ce / o->accum;
    }
    if (!rc && o->test_fail_step == r->step + 1 && rank == o->test_fail_rank)
        rc = kv_fail(err, KV_EIO, "test hook: process %d fails at step %ld", rank, r->step + 1);
    if ((rc = status_check(r, rc, err))) return rc;
    if (P > 1) {
        double v[4] = {sum.loss, sum.kl, sum.mse, sum.ce};
        if ((rc = kv_dist_allreduce_f64(r->d, v, 4, err)) ||
            (rc = kvt_optim_allreduce_grads(&r->opt, r->d, err)))
            return rc;
        sum = (kvt_loss){.loss = v[0] / P, .kl = v[1] / P, .mse = v[2] / P, .ce = v[3] / P};
    }
    double norm;
    if ((rc = kvt_optim_grad_norm(&r->opt, &norm, err))) return rc;
    if (!isfinite(norm))
        return kv_fail(err, KV_EINVAL,
                       "step %ld: the gradient is not finite (loss %g); lower "
                       "--lr",
                       r->step + 1, sum.loss);
    if (o->clip > 0 && norm > o->clip &&
        (rc = kvt_optim_scale_grads(&r->opt, (float)(o->clip / norm), err)))
        return rc;
    const double lr = lr_at(r->step, r->total_steps, r->warmup, o->lr, o->decay);
    if ((rc = kvt_optim_adamw(&r->opt, &o->adam, r->step + 1, lr, err))) return rc;
    r->loss_tokens_trained += step_loss_tokens(r, r->step);
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
    if (!r->root) return 0;
    const distill_log_entry e = {.step = r->step,
                                 .loss = sum.loss,
                                 .kl = sum.kl,
                                 .mse = sum.mse,
                                 .ce = sum.ce,
                                 .lr = lr,
                                 .grad_norm = norm,
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
        return kv_fail(err, KV_EINVAL,
                       "distill: lr, temperature > 0; warm-up in [0, 1]; clip, "
                       "mse-weight, ce-weight >= 0; held-out fraction in [0, 1)");
    return 0;
}

/* the run on every process; any return goes to distill_train's final status check */
static int run(run_state *r, distill_report *rep, kv_error *err) {
    const distill_opts *o = r->o;
    const int P = r->d->size;
    int rc = check_opts(o, err);
    if (rc) return rc;
    if (o->batch % P)
        return kv_fail(err, KV_EINVAL,
                       "distill: --batch %d does not split over %d processes: "
                       "each runs batch/%d sequences of every micro-batch, so the batch must be "
                       "a multiple of %d (e.g. --batch %d)",
                       o->batch, P, P, P, (o->batch / P + 1) * P);
    r->local_batch = o->batch / P;
    if ((rc = kv_join(r->ckpt_dir, sizeof r->ckpt_dir, o->out_dir, "checkpoint", err)) ||
        (rc = kv_join(r->ckpt_path, sizeof r->ckpt_path, r->ckpt_dir, "state.safetensors", err)) ||
        (rc = kv_join(r->log_path, sizeof r->log_path, o->out_dir, "train_log.jsonl", err)))
        return rc;
    if (r->root) { /* OUT_DIR is rank 0's */
        r->resuming = o->resume && kv_path_exists(r->ckpt_path);
        if (!o->resume && !o->force && !kv_dir_is_empty(o->out_dir))
            return kv_fail(err, KV_EINVAL,
                           "%s: not empty; use --resume to continue a run there "
                           "or --force to overwrite",
                           o->out_dir);
    }
    r->b = o->backend;
    if (!r->b) {
        if ((rc = kv_backend_cpu_init(&r->own_backend, 0, err))) return rc;
        r->b = &r->own_backend;
    }

    if ((rc = kvt_model_load(&r->teacher, o->teacher_dir, err)) ||
        (rc = kvt_model_load(&r->student, o->student_dir, err)) ||
        (rc = check_pair(&r->teacher, &r->student, err)) || (rc = load_tokenizer(r, err)) ||
        (rc = load_data(r, err)))
        return rc;
    long count = kvt_model_set_trainable_distill(&r->student, err);
    if (count < 0) return (int)count;
    const long per_step = (long)o->accum * o->batch * o->seq_len;
    r->total_steps = o->steps ? o->steps : (o->tokens + per_step - 1) / per_step;
    r->warmup = (long)llround(o->warmup_frac * (double)r->total_steps);
    if ((rc = distill_sampler_init(&r->sampler, r->train.n, o->seed, err)) ||
        (rc = kvt_run_init_grad(&r->rs, r->b, &r->student, r->local_batch, o->seq_len, o->passes,
                                o->grad_passes, 1, err)) ||
        (rc = kvt_run_init(&r->rt, r->b, &r->teacher, r->local_batch, o->seq_len, 1, 0, err)) ||
        (rc = kvt_optim_init(&r->opt, &r->rs, err)) ||
        (rc = kvt_optim_dist_prepare(&r->opt, r->d, err)))
        return rc;
    distill_fingerprint(r->fingerprint, o, r->total_steps, r->warmup, r->student.cfg.map.name,
                        &r->train, &r->opt);
    distill_map_name(&r->student.cfg.map, rep->map_name, sizeof rep->map_name);
    kvmap_layer_types(&r->student.cfg.map, rep->layer_types, sizeof rep->layer_types);
    rep->trainable_params = (long)r->opt.count;
    rep->train_tokens_available = r->train.n * r->train.T;
    rep->processes = P;
    if (o->test_fail_step == -1 && r->d->rank == o->test_fail_rank)
        return kv_fail(err, KV_EIO, "test hook: process %d fails at set-up", r->d->rank);

    /* before */
    distill_eval_result ev;
    r->pr.phase = DISTILL_EVAL_BEFORE;
    r->pr.total_steps = r->total_steps;
    if ((rc = evaluate(r, &ev, err))) return rc;
    rep->teacher_ppl = ev.teacher_ppl;
    rep->student_before_ppl = ev.student_ppl;
    rep->kl_before = ev.kl;
    rep->eval_tokens = ev.tokens;
    rep->asst_teacher_ppl = ev.asst_teacher_ppl;
    rep->asst_student_before_ppl = ev.asst_student_ppl;
    rep->asst_kl_before = ev.asst_kl;
    rep->asst_eval_tokens = ev.asst_tokens;

    /* resume or start */
    if (r->root) {
        if ((rc = kv_mkdir_p(o->out_dir, err))) return rc;
        if (r->resuming) {
            if ((rc = load_checkpoint(r, err)) ||
                (rc = distill_log_trim(r->log_path, r->step, err)))
                return rc;
        }
        if ((rc = distill_log_open(&r->log, r->log_path, r->resuming, err))) return rc;
    }
    if ((rc = status_check(r, 0, err)) || (rc = share_start(r, err))) return rc;
    rep->resumed_from_step = r->step;
    if (!(r->tokens = malloc(sizeof(int32_t) * (size_t)r->local_batch * o->seq_len)) ||
        !(r->row_weight = malloc(sizeof(float) * (size_t)r->local_batch * o->seq_len)) ||
        !(r->batch_seqs = malloc(sizeof(long) * (size_t)r->local_batch)))
        return kv_fail(err, KV_ENOMEM, "out of memory");
    for (long s = 0; s < r->step; s++) r->loss_tokens_trained += step_loss_tokens(r, s);
    r->pr.phase = DISTILL_TRAIN;
    r->pr.step = r->step;
    r->pr.tokens = r->tokens_trained;
    report_progress(r);
    const double train_t0 = now_s();
    const long first_step = r->step;
    while (r->step < r->total_steps) {
        if ((rc = train_step(r, err))) return rc;
        const double dt = now_s() - train_t0;
        r->pr.tokens_per_s = dt > 0 ? (double)(r->step - first_step) * per_step / dt : 0;
        report_progress(r);
        if (r->root && o->save_every > 0 && r->step % o->save_every == 0 &&
            r->step < r->total_steps && (rc = save_checkpoint(r, err)))
            return rc;
        if (o->stop_after > 0 && r->step - first_step >= o->stop_after) return 0; /* "killed" */
    }
    rep->train_seconds = now_s() - train_t0;
    rep->tokens_per_s =
        rep->train_seconds > 0 ? (double)(r->step - first_step) * per_step / rep->train_seconds : 0;
    if (P > 1 && (rc = check_replicas(r, err))) return rc;
    if (r->root && (rc = save_checkpoint(r, err))) return rc;

    /* after */
    r->pr.phase = DISTILL_EVAL_AFTER;
    r->pr.eval_done = 0;
    if ((rc = evaluate(r, &ev, err))) return rc;
    rep->student_after_ppl = ev.student_ppl;
    rep->kl_after = ev.kl;
    rep->asst_student_after_ppl = ev.asst_student_ppl;
    rep->asst_kl_after = ev.asst_kl;
    rep->tokens_trained = r->tokens_trained;
    rep->steps = r->step;
    rep->chat = r->chat_loaded;
    rep->loss_assistant = r->use_mask;
    rep->loss_tokens_trained = r->loss_tokens_trained;
    snprintf(rep->chat_template, sizeof rep->chat_template, "%s", r->chat.source);
    if (!r->root) return 0;
    r->pr.phase = DISTILL_SAVE;
    report_progress(r);
    char tok_src[4096];
    const char *aux = NULL;
    if ((rc = kv_join(tok_src, sizeof tok_src, o->student_dir, "tokenizer.json", err))) return rc;
    if (!kv_path_exists(tok_src)) aux = o->teacher_dir;
    if ((rc = kvt_run_params_to_host(&r->rs, err)) ||
        /* LCKV's forward/backward_passes = the plan this run trained with (docs/INTEROP.md) */
        (rc = hf_config_set_lckv_plan(&r->student.config_json, o->passes, o->grad_passes,
                                      "student config.json", err)) ||
        (rc = kvt_model_save(&r->student, o->out_dir, aux, err)))
        return rc;
    rep->seconds = r->prior_seconds + now_s() - r->t0;
    return distill_report_write(o, r->warmup, &r->student.cfg.map, r->student.dims.n_layers, rep,
                                err);
}

int distill_train(const distill_opts *o, distill_progress_fn progress, void *progress_ctx,
                  distill_report *rep, kv_error *err) {
    memset(rep, 0, sizeof *rep);
    kv_dist single;
    kv_dist *d = o->dist;
    if (!d) {
        kv_dist_init_single(&single);
        d = &single;
    }
    run_state r = {.o = o,
                   .d = d,
                   .root = d->rank == 0,
                   .progress = d->rank == 0 ? progress : NULL,
                   .progress_ctx = progress_ctx,
                   .t0 = now_s()};
    int rc = run(&r, rep, err);
    kv_error close_err = {0};
    const int crc = distill_log_close(&r.log, rc ? &close_err : err);
    if (!rc) rc = crc;
    /* the final check: every process leaves with the same verdict (unless one was already
     * given or the group is broken) */
    if (!r.stopped && !d->broken) rc = status_check(&r, rc, err);
    run_free(&r);
    return rc;
}
