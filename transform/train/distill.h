/* Distillation of a kvconvert student against its teacher (METHODS.md s3): the training loop,
 * held-out evaluation, checkpoints and resume, the output model directory and report.json.
 *
 * OUT_DIR receives: config.json, model.safetensors (every tensor of the student, the trained ones
 * updated), the tokenizer files, report.json, train_log.jsonl (one JSON object per step) and
 * checkpoint/state.safetensors (trainable tensors, AdamW moments, step; written atomically).
 * A resumed run restores the checkpoint and reproduces the uninterrupted run bit for bit: the
 * data order is a pure function of (seed, sequence counter) and nothing else is random.
 *
 * The pieces: distill.c the run and its loop; distill_eval.c held-out evaluation;
 * distill_ckpt.h checkpoint save/resume and the fingerprint; distill_log.h the JSONL step log;
 * distill_report.h report.json; optim.h the optimiser step on the backend. */
#ifndef KV_DISTILL_H
#define KV_DISTILL_H

#include <stdint.h>

#include "base/error.h"
#include "kernels/backend.h"
#include "transform/train/adamw.h"
#include "transform/train/dist.h"
#include "transform/train/distill_data.h"
#include "transform/train/train_forward.h"

typedef enum {
    DISTILL_DATA_AUTO, /* chat for files named *.jsonl, else text (.bin: token ids) */
    DISTILL_DATA_TEXT,
    DISTILL_DATA_CHAT, /* JSONL conversations (distill_chat.h) */
} distill_data_format;

typedef enum {
    DISTILL_LOSS_AUTO, /* assistant when chat data was read, else all */
    DISTILL_LOSS_ALL, /* the KL on every position (METHODS.md) */
    DISTILL_LOSS_ASSISTANT, /* the KL on the positions that predict assistant tokens */
} distill_loss_tokens;

typedef struct {
    const char *teacher_dir, *student_dir, *out_dir;
    const char *const *data; /* training files */
    int n_data;
    const char *const *eval_data; /* held-out files; none: the last eval_frac of data */
    int n_eval_data;
    double eval_frac; /* 0.1 */
    long eval_max_seqs; /* 0: every held-out sequence */
    int seq_len; /* 128 */
    int batch; /* sequences per micro-batch, 8 */
    int accum; /* micro-batches per optimiser step, 1 */
    long steps; /* optimiser steps; 0: from tokens */
    long tokens; /* training tokens when steps is 0 */
    uint64_t seed; /* 0 */
    double lr; /* 2e-4 */
    double warmup_frac; /* 0.05 of the steps */
    lr_decay decay; /* linear */
    adamw_hparams adam; /* 0.9, 0.999, 1e-8, 0 */
    double clip; /* global gradient norm limit, 1.0; 0: none */
    double temperature; /* 2 */
    double mse_weight; /* 1 */
    double ce_weight; /* next-token cross-entropy on the data; 0 (METHODS.md's loss) */
    distill_data_format data_format; /* of --data and --eval-data files: auto */
    const char *chat_template; /* NULL or "auto", "fallback", a Jinja file (distill_chat.h) */
    distill_loss_tokens loss_tokens; /* auto */
    int passes; /* iterative plan for upward maps, train and eval: 9 */
    int grad_passes; /* trailing passes with gradient (LCKV's b): 1, as METHODS.md */
    long save_every; /* checkpoint every this many steps, 0: only at the end */
    int resume; /* continue from OUT_DIR/checkpoint when it exists */
    int force; /* write into a non-empty OUT_DIR without resuming */
    long stop_after; /* test hook: return after this many steps of this run, as a
                                      killed process would (no final checkpoint/output); 0 off */
    kv_backend *backend; /* where the runs and the optimiser live (not owned); NULL: a
                                      CPU backend at the kernels' current thread count */
    kv_dist *dist; /* the processes of a data-parallel run (not owned; see
                                      "Data parallel" below); NULL: this process alone */
    int test_fail_rank; /* test hook: the process of this rank fails with an error */
    long test_fail_step; /* ... at this step (1-based), -1 at set-up; 0 off */
} distill_opts;

void distill_opts_default(distill_opts *o);

/* whether a run with o over train masks the KL (train->kl_mask set when chat data was read) */
int distill_uses_mask(const distill_opts *o, const distill_seqs *train);

typedef enum { DISTILL_EVAL_BEFORE, DISTILL_TRAIN, DISTILL_EVAL_AFTER, DISTILL_SAVE } distill_phase;

typedef struct {
    distill_phase phase;
    long step, total_steps; /* step = steps done */
    long tokens; /* trained so far */
    double loss, kl, mse, ce, lr, grad_norm;
    double seconds; /* wall time of this process so far */
    double tokens_per_s; /* over this process's steps */
    long eval_done, eval_total; /* evaluation progress (sequences) */
} distill_progress;

typedef void (*distill_progress_fn)(void *ctx, const distill_progress *p);

typedef struct {
    double teacher_ppl, student_before_ppl, student_after_ppl;
    double kl_before, kl_after; /* mean per-token KL(teacher || student), T = 1, nats */
    long tokens_trained, steps, resumed_from_step, eval_tokens, trainable_params;
    long train_tokens_available;
    double seconds, train_seconds, tokens_per_s;
    int processes; /* data-parallel processes (1: a single process) */
    char map_name[96]; /* "pizza-bottom:3" when the map is a named configuration */
    char layer_types[HF_MAX_LAYERS * 6];
    int chat; /* chat data was read: the fields below are set (and go into report.json) */
    int loss_assistant; /* the KL was masked to assistant tokens */
    long loss_tokens_trained; /* positions the KL trained on (all: tokens_trained) */
    char chat_template[4200]; /* where the template came from, "fallback" */
    /* chat data: held-out figures over the assistant positions (distill_eval_result's asst_*) */
    double asst_teacher_ppl, asst_student_before_ppl, asst_student_after_ppl;
    double asst_kl_before, asst_kl_after;
    long asst_eval_tokens;
} distill_report;

/* the whole run; progress may be NULL. rep is also written as OUT_DIR/report.json.
 *
 * Data parallel (o->dist with P > 1 processes, e.g. under mpirun): every process runs this
 * with the same options. The global batch is the single-process one (batch sequences per
 * micro-batch, accum micro-batches per step, the same sequence counter k); P must divide batch,
 * and rank r runs the contiguous share batch/P: sequences k = (step*accum + a)*batch + r*batch/P
 * + i, i < batch/P, of every micro-batch a. The losses are means over the process's own tokens,
 * so each backward is scaled by 1/(accum*P) and the gradients summed over the processes
 * (kvt_optim_allreduce_grads) are the single-process mean; every process then takes the same
 * norm, clip and AdamW step on identical replicas (checked by a digest at the end). The logged
 * losses are averaged over the processes. Held-out evaluation is split (batch j of batch/P
 * sequences to rank j mod P) and its sums reduced. Rank 0 alone reports progress, reads and
 * writes OUT_DIR (checkpoint, train_log.jsonl, report.json, the model) and broadcasts a resumed
 * state; the others only need the inputs. A process that fails makes every process stop with an
 * error at the next status check (one per step and phase; dist.h). The trajectory does not depend
 * on P beyond float summation order, so a checkpoint resumes with any P that divides batch. */
int distill_train(const distill_opts *o, distill_progress_fn progress, void *progress_ctx,
                  distill_report *rep, kv_error *err);

/* Held-out evaluation of a student (and teacher, when t is not NULL) on seqs: perplexity of
 * next-token prediction within each sequence (positions 1 .. T-1 scored), and the mean
 * per-token KL(teacher || student) at temperature 1 over all positions, and both again over
 * the assistant positions when seqs has a kl_mask (chat data). Runs must have
 * the same B, backend and T = seqs->T; a short last batch is padded and not counted. Outputs
 * may be NULL. progress is called with phase set by the caller's context. (distill_eval.c) */
typedef struct {
    double student_ppl, teacher_ppl, kl;
    long tokens; /* positions scored for perplexity */
    /* the same over the assistant positions of chat data (seqs->kl_mask: the positions whose
     * next token is an assistant token; perplexity over those of them that predict within the
     * sequence); asst_tokens = asst_kl_rows = 0 and NANs when the data has no mask */
    double asst_student_ppl, asst_teacher_ppl, asst_kl;
    long asst_tokens, asst_kl_rows;
} distill_eval_result;
int distill_evaluate(kvt_run *s, kvt_run *t, const distill_seqs *seqs, long max_seqs,
                     distill_eval_result *out, void (*tick)(void *, long, long), void *tick_ctx,
                     kv_error *err);

/* The same split in parts (data parallel): part `part` of `parts` evaluates batches j with
 * j mod parts = part (batch j: held-out sequences j*B ..) and returns its sums; the parts' sums
 * added (in any order) and finished give distill_evaluate's result up to summation order. tick
 * gets the sequences all parts have done, assuming they go at one pace. */
typedef struct {
    double nll_s, nll_t; /* summed next-token negative log-likelihoods */
    double kl; /* summed per-token KL (mean of a batch times its tokens) */
    long tokens; /* positions scored */
    double asst_nll_s, asst_nll_t, asst_kl; /* the same over assistant positions (kl_mask) */
    long asst_tokens, asst_kl_rows;
} distill_eval_sums;
/* the held-out sequences evaluated: all, or max_seqs when that is fewer */
long distill_eval_count(const distill_seqs *seqs, long max_seqs);
int distill_evaluate_part(kvt_run *s, kvt_run *t, const distill_seqs *seqs, long max_seqs, int part,
                          int parts, distill_eval_sums *sums, void (*tick)(void *, long, long),
                          void *tick_ctx, kv_error *err);
void distill_evaluate_finish(const distill_eval_sums *sums, long n_seqs, int T, int teacher,
                             distill_eval_result *out);

#endif
