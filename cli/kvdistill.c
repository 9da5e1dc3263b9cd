/* kvdistill: distil a kvconvert student against its teacher; calibrate candidate transforms. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "base/fileio.h"
#include "kernels/backend.h"
#include "kernels/kernels.h"
#include "transform/train/calibrate.h"
#include "transform/train/dist.h"
#include "transform/train/distill.h"
#include "transform/train/distill_init.h"
#include "transform/train/train_model.h"

static const char *TOOL = "kvdistill";

static void usage(void) {
    printf(
        "Usage: kvdistill train TEACHER_DIR STUDENT_DIR OUT_DIR --data FILE... [OPTIONS]\n"
        "       kvdistill calibrate TEACHER_DIR --data FILE... [OPTIONS]\n"
        "       kvdistill student TEACHER_DIR OUT_DIR --map SPEC [--init mean|target]\n"
        "                 [--layout hf-swiftkv|deploy]\n"
        "\n"
        "train: distil STUDENT_DIR (a kvconvert output, cross-layer or SwiftKV) against\n"
        "TEACHER_DIR (the original). Trains only the tensors docs/METHODS.md s3 lists; loss\n"
        "T^2 KL(teacher || student) + w * MSE of the hidden state entering the last layer;\n"
        "AdamW with warm-up and decay. OUT_DIR gets a complete model directory, report.json,\n"
        "train_log.jsonl and checkpoint/.\n"
        "  --data FILE...        training text (blank-line separated), .bin token ids, or\n"
        "                        .jsonl conversations ({\"messages\": [{role, content}...]})\n"
        "  --data-format F       auto | text | chat: how --data/--eval-data files are read\n"
        "                        (auto: chat for names ending in .jsonl, else text)\n"
        "  --chat-template T     auto | fallback | FILE: how conversations become text (auto:\n"
        "                        chat_template of tokenizer_config.json, else the fallback\n"
        "                        \"<|role|>\\ncontent\\n\" format; see docs/DISTILL.md)\n"
        "  --loss-tokens W       assistant | all: the KL on the positions predicting assistant\n"
        "                        tokens, or on every position (default: assistant for chat\n"
        "                        data, all for text; the MSE is always on every position)\n"
        "  --eval-data FILE      held-out data (repeatable); default: the last --holdout %%\n"
        "  --holdout PCT         held-out share of --data when no --eval-data (10)\n"
        "  --eval-seqs N         evaluate on at most N held-out sequences (all)\n"
        "  --seq-len N           tokens per sequence (128)\n"
        "  --batch N             sequences per micro-batch (8)\n"
        "  --accum N             micro-batches per optimiser step (1)\n"
        "  --steps N | --tokens N   length of the run (e.g. --tokens 2M)\n"
        "  --lr X                peak learning rate (2e-4)\n"
        "  --warmup FRAC         warm-up share of the steps (0.05)\n"
        "  --schedule S          linear | cosine | constant decay after warm-up (linear)\n"
        "  --beta1 X --beta2 X --adam-eps X --weight-decay X   AdamW (0.9 0.999 1e-8 0)\n"
        "  --clip X              global gradient-norm clip, 0 off (1.0)\n"
        "  --temperature X       KL temperature T (2)\n"
        "  --mse-weight X        weight of the hidden-state MSE (1.0)\n"
        "  --ce-weight X         weight of the next-token cross-entropy on the data (0: the\n"
        "                        loss of METHODS.md; hard labels beside the teacher's)\n"
        "  --passes N            iterative plan for top/middle targets: N passes, the last\n"
        "                        with gradient (9, as kvrun's iterative prefill)\n"
        "  --grad-passes B       differentiate the last B passes (LCKV's b): the K/V upward\n"
        "                        layers read then train through them (1, as METHODS.md)\n"
        "  --seed N              data order (0)\n"
        "  --save-every N        checkpoint every N steps (0: at the end only)\n"
        "  --resume              continue from OUT_DIR/checkpoint (same options and data)\n"
        "  --force               write into a non-empty OUT_DIR without resuming\n"
        "Data parallel: mpirun -np N kvdistill train ... runs one process per rank, each\n"
        "  with batch/N sequences of every micro-batch (N must divide --batch); gradients are\n"
        "  summed with MPI_Allreduce, so the run equals the single-process one with the same\n"
        "  options (to float rounding). Rank 0 writes OUT_DIR and prints; --threads defaults\n"
        "  to the CPUs over the ranks on a host; --device cuda uses GPU local-rank. --resume\n"
        "  works with any N that divides --batch. (%s)\n"
        "  --allreduce mpi|nccl  how gradients are summed: nccl (GPU to GPU) for --device\n"
        "                        cuda in a build with NCCL, else mpi (through host memory)\n"
        "\n"
        "calibrate: on calibration text, per-layer cosine similarity of the teacher's hidden\n"
        "states and of K/V between layers, and for every candidate transform the zero-shot\n"
        "KL and perplexity against the teacher; a ranked table on stdout.\n"
        "  --swiftkv RANGE       SwiftKV candidates l in RANGE (\"3\", \"1-4\")\n"
        "  --groups LIST         AcrossKV group sizes for --swiftkv (1,2,4; invalid ones skipped)\n"
        "  --cross L             all 9 cross-layer configurations with L KV layers\n"
        "  --map SPEC            any KV map spec (repeatable): pizza-top:3, cla:2, swiftkv:2,2...\n"
        "                        (no candidate option: SwiftKV l=1..L-1 x {1,2,4} and the 9\n"
        "                        configurations at l = ceil(L/2))\n"
        "  --budget PCT          quality budget for the recommendation: perplexity at most\n"
        "                        PCT %% above the teacher's (5)\n"
        "  --seq-len N --batch N --eval-seqs N --passes N   as for train (eval-seqs 64)\n"
        "  --json                JSON on stdout instead of the table (train: the report)\n"
        "  --svg FILE            heat map of hidden-state and K/V similarity between layers\n"
        "\n"
        "student: write the zero-shot student of one KV map (the initialisation of\n"
        "docs/METHODS.md s1/s2, as calibration evaluates it). SwiftKV: --layout hf-swiftkv\n"
        "(default) keeps the teacher's q/k/v_proj of layers >= l, deploy drops them (as\n"
        "kvconvert --layout).\n"
        "\n"
        "Common: --device cpu|cuda  where train and calibrate run (cpu; cuda needs a CUDA\n"
        "        build), --threads N (all CPUs), --quiet (no progress), -h/--help, --version.\n"
        "        --max-memory SIZE  memory budget (e.g. 4G): a run that plans more (weights,\n"
        "        gradients, AdamW moments, activations, KV) is refused before it allocates;\n"
        "        default $KVFORGE_MAX_MEMORY, else physical RAM.\n"
        "Exit status: 0 ok, 1 failure, 2 usage error.\n",
        kv_dist_have_mpi() ? (kv_dist_have_nccl() ? "this build has MPI support and NCCL"
                                                  : "this build has MPI support")
                           : "this build has no MPI support: rebuild with mpicc on PATH");
}

enum {
    O_DATA = 256,
    O_EVAL_DATA,
    O_HOLDOUT,
    O_EVAL_SEQS,
    O_SEQ_LEN,
    O_BATCH,
    O_ACCUM,
    O_STEPS,
    O_TOKENS,
    O_LR,
    O_WARMUP,
    O_SCHEDULE,
    O_BETA1,
    O_BETA2,
    O_ADAM_EPS,
    O_WD,
    O_CLIP,
    O_TEMP,
    O_MSE,
    O_CE,
    O_DATA_FORMAT,
    O_CHAT_TEMPLATE,
    O_LOSS_TOKENS,
    O_PASSES,
    O_GRAD_PASSES,
    O_SEED,
    O_SAVE_EVERY,
    O_RESUME,
    O_FORCE,
    O_THREADS,
    O_QUIET,
    O_VERSION,
    O_SWIFTKV,
    O_GROUPS,
    O_CROSS,
    O_MAP,
    O_BUDGET,
    O_JSON,
    O_SVG,
    O_INIT,
    O_LAYOUT,
    O_DEVICE,
    O_ALLREDUCE,
    O_MAX_MEMORY
};

static const struct option long_opts[] = {{"data", 1, 0, O_DATA},
                                          {"eval-data", 1, 0, O_EVAL_DATA},
                                          {"holdout", 1, 0, O_HOLDOUT},
                                          {"eval-seqs", 1, 0, O_EVAL_SEQS},
                                          {"seq-len", 1, 0, O_SEQ_LEN},
                                          {"batch", 1, 0, O_BATCH},
                                          {"accum", 1, 0, O_ACCUM},
                                          {"steps", 1, 0, O_STEPS},
                                          {"tokens", 1, 0, O_TOKENS},
                                          {"lr", 1, 0, O_LR},
                                          {"warmup", 1, 0, O_WARMUP},
                                          {"schedule", 1, 0, O_SCHEDULE},
                                          {"beta1", 1, 0, O_BETA1},
                                          {"beta2", 1, 0, O_BETA2},
                                          {"adam-eps", 1, 0, O_ADAM_EPS},
                                          {"weight-decay", 1, 0, O_WD},
                                          {"clip", 1, 0, O_CLIP},
                                          {"temperature", 1, 0, O_TEMP},
                                          {"mse-weight", 1, 0, O_MSE},
                                          {"ce-weight", 1, 0, O_CE},
                                          {"data-format", 1, 0, O_DATA_FORMAT},
                                          {"chat-template", 1, 0, O_CHAT_TEMPLATE},
                                          {"loss-tokens", 1, 0, O_LOSS_TOKENS},
                                          {"passes", 1, 0, O_PASSES},
                                          {"seed", 1, 0, O_SEED},
                                          {"grad-passes", 1, 0, O_GRAD_PASSES},
                                          {"save-every", 1, 0, O_SAVE_EVERY},
                                          {"resume", 0, 0, O_RESUME},
                                          {"force", 0, 0, O_FORCE},
                                          {"threads", 1, 0, O_THREADS},
                                          {"quiet", 0, 0, O_QUIET},
                                          {"help", 0, 0, 'h'},
                                          {"version", 0, 0, O_VERSION},
                                          {"swiftkv", 1, 0, O_SWIFTKV},
                                          {"groups", 1, 0, O_GROUPS},
                                          {"cross", 1, 0, O_CROSS},
                                          {"map", 1, 0, O_MAP},
                                          {"budget", 1, 0, O_BUDGET},
                                          {"json", 0, 0, O_JSON},
                                          {"svg", 1, 0, O_SVG},
                                          {"init", 1, 0, O_INIT},
                                          {"layout", 1, 0, O_LAYOUT},
                                          {"device", 1, 0, O_DEVICE},
                                          {"allreduce", 1, 0, O_ALLREDUCE},
                                          {"max-memory", 1, 0, O_MAX_MEMORY},
                                          {0, 0, 0, 0}};

#define MAX_FILES 256
#define MAX_MAPS  256

typedef struct {
    distill_opts d;
    const char *data[MAX_FILES], *eval_data[MAX_FILES];
    int n_data, n_eval_data;
    int threads, quiet, json, eval_seqs_set;
    const char *swiftkv_range, *groups, *svg, *init, *layout;
    const char *device; /* "cpu" (default) or "cuda" */
    const char *allreduce; /* "mpi" | "nccl"; NULL: nccl on cuda when built with it */
    const char *max_memory; /* --max-memory SIZE (NULL: KVFORGE_MAX_MEMORY or physical RAM) */
    int cross_l;
    const char *maps[MAX_MAPS];
    int n_maps;
    double budget;
    const char *pos[8];
    int n_pos;
} cli_args;

static int parse_double_opt(const char *name, const char *s, double lo, double hi, double *out) {
    double v;
    if (cli_parse_double(s, &v) || v < lo || v > hi)
        return cli_usage_error(TOOL, "bad --%s '%s' (expected a number in [%g, %g])", name, s, lo,
                               hi);
    *out = v;
    return 0;
}

static int parse_long_opt(const char *name, const char *s, long lo, long hi, long *out) {
    if (cli_parse_int(s, lo, hi, out))
        return cli_usage_error(TOOL, "bad --%s '%s' (expected an integer in [%ld, %ld])", name, s,
                               lo, hi);
    return 0;
}

/* 0 ok, 1 help/version printed, EXIT_USAGE */
static int parse_args(int argc, char **argv, cli_args *a) {
    memset(a, 0, sizeof *a);
    distill_opts_default(&a->d);
    a->budget = 5;
    int c;
    long v;
    double x;
    int rc = 0;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", long_opts, NULL)) != -1 && !rc) {
        switch (c) {
        case 'h': usage(); return 1;
        case O_VERSION: cli_version(TOOL); return 1;
        case O_DATA:
            if (a->n_data >= MAX_FILES) return cli_usage_error(TOOL, "too many data files");
            a->data[a->n_data++] = optarg;
            break;
        case O_EVAL_DATA:
            if (a->n_eval_data >= MAX_FILES) return cli_usage_error(TOOL, "too many data files");
            a->eval_data[a->n_eval_data++] = optarg;
            break;
        case O_HOLDOUT:
            if (!(rc = parse_double_opt("holdout", optarg, 0, 99, &x))) a->d.eval_frac = x / 100;
            break;
        case O_EVAL_SEQS:
            rc = parse_long_opt("eval-seqs", optarg, 1, 1L << 40, &a->d.eval_max_seqs);
            a->eval_seqs_set = 1;
            break;
        case O_SEQ_LEN:
            if (!(rc = parse_long_opt("seq-len", optarg, 2, 1 << 20, &v))) a->d.seq_len = (int)v;
            break;
        case O_BATCH:
            if (!(rc = parse_long_opt("batch", optarg, 1, 1 << 16, &v))) a->d.batch = (int)v;
            break;
        case O_ACCUM:
            if (!(rc = parse_long_opt("accum", optarg, 1, 1 << 16, &v))) a->d.accum = (int)v;
            break;
        case O_STEPS: rc = parse_long_opt("steps", optarg, 1, 1L << 40, &a->d.steps); break;
        case O_TOKENS: {
            uint64_t t;
            if (cli_parse_size(optarg, &t) || t == 0 || t > (1ull << 50))
                return cli_usage_error(TOOL, "bad --tokens '%s' (e.g. 500K, 2M)", optarg);
            a->d.tokens = (long)t;
            break;
        }
        case O_LR: rc = parse_double_opt("lr", optarg, 1e-12, 10, &a->d.lr); break;
        case O_WARMUP: rc = parse_double_opt("warmup", optarg, 0, 1, &a->d.warmup_frac); break;
        case O_SCHEDULE:
            if (!strcmp(optarg, "linear")) a->d.decay = LR_LINEAR;
            else if (!strcmp(optarg, "cosine")) a->d.decay = LR_COSINE;
            else if (!strcmp(optarg, "constant")) a->d.decay = LR_CONSTANT;
            else return cli_usage_error(TOOL, "--schedule must be linear, cosine or constant");
            break;
        case O_BETA1: rc = parse_double_opt("beta1", optarg, 0, 0.999999, &a->d.adam.beta1); break;
        case O_BETA2:
            rc = parse_double_opt("beta2", optarg, 0, 0.999999999, &a->d.adam.beta2);
            break;
        case O_ADAM_EPS: rc = parse_double_opt("adam-eps", optarg, 0, 1, &a->d.adam.eps); break;
        case O_WD:
            rc = parse_double_opt("weight-decay", optarg, 0, 10, &a->d.adam.weight_decay);
            break;
        case O_CLIP: rc = parse_double_opt("clip", optarg, 0, 1e12, &a->d.clip); break;
        case O_TEMP:
            rc = parse_double_opt("temperature", optarg, 1e-3, 1e3, &a->d.temperature);
            break;
        case O_MSE: rc = parse_double_opt("mse-weight", optarg, 0, 1e6, &a->d.mse_weight); break;
        case O_CE: rc = parse_double_opt("ce-weight", optarg, 0, 1e6, &a->d.ce_weight); break;
        case O_DATA_FORMAT:
            if (!strcmp(optarg, "auto")) a->d.data_format = DISTILL_DATA_AUTO;
            else if (!strcmp(optarg, "text")) a->d.data_format = DISTILL_DATA_TEXT;
            else if (!strcmp(optarg, "chat")) a->d.data_format = DISTILL_DATA_CHAT;
            else return cli_usage_error(TOOL, "--data-format must be auto, text or chat");
            break;
        case O_CHAT_TEMPLATE: a->d.chat_template = optarg; break;
        case O_LOSS_TOKENS:
            if (!strcmp(optarg, "assistant")) a->d.loss_tokens = DISTILL_LOSS_ASSISTANT;
            else if (!strcmp(optarg, "all")) a->d.loss_tokens = DISTILL_LOSS_ALL;
            else return cli_usage_error(TOOL, "--loss-tokens must be assistant or all");
            break;
        case O_PASSES:
            if (!(rc = parse_long_opt("passes", optarg, 1, 1000, &v))) a->d.passes = (int)v;
            break;
        case O_GRAD_PASSES:
            if (!(rc = parse_long_opt("grad-passes", optarg, 1, 1000, &v)))
                a->d.grad_passes = (int)v;
            break;
        case O_SEED:
            if (!(rc = parse_long_opt("seed", optarg, 0, 0x7fffffffffffffffL, &v)))
                a->d.seed = (uint64_t)v;
            break;
        case O_SAVE_EVERY:
            rc = parse_long_opt("save-every", optarg, 0, 1L << 40, &a->d.save_every);
            break;
        case O_RESUME: a->d.resume = 1; break;
        case O_FORCE: a->d.force = 1; break;
        case O_THREADS:
            if (!(rc = parse_long_opt("threads", optarg, 1, 4096, &v))) a->threads = (int)v;
            break;
        case O_QUIET: a->quiet = 1; break;
        case O_DEVICE: {
            kv_device d;
            kv_error derr = {0};
            if (kv_device_parse(&d, optarg, &derr)) return cli_usage_error(TOOL, "%s", derr.msg);
            a->device = optarg;
            break;
        }
        case O_ALLREDUCE:
            if (strcmp(optarg, "mpi") && strcmp(optarg, "nccl"))
                return cli_usage_error(TOOL, "--allreduce must be mpi or nccl");
            a->allreduce = optarg;
            break;
        case O_MAX_MEMORY: a->max_memory = optarg; break;
        case O_SWIFTKV: a->swiftkv_range = optarg; break;
        case O_GROUPS: a->groups = optarg; break;
        case O_CROSS:
            if (!(rc = parse_long_opt("cross", optarg, 1, HF_MAX_LAYERS, &v))) a->cross_l = (int)v;
            break;
        case O_MAP:
            if (a->n_maps >= MAX_MAPS) return cli_usage_error(TOOL, "too many --map");
            a->maps[a->n_maps++] = optarg;
            break;
        case O_BUDGET: rc = parse_double_opt("budget", optarg, 0, 1e6, &a->budget); break;
        case O_JSON: a->json = 1; break;
        case O_SVG: a->svg = optarg; break;
        case O_INIT:
            if (strcmp(optarg, "mean") && strcmp(optarg, "target"))
                return cli_usage_error(TOOL, "--init must be mean or target");
            a->init = optarg;
            break;
        case O_LAYOUT:
            if (strcmp(optarg, "hf-swiftkv") && strcmp(optarg, "deploy"))
                return cli_usage_error(TOOL, "--layout must be hf-swiftkv or deploy, not '%s'",
                                       optarg);
            a->layout = optarg;
            break;
        default: return cli_bad_option(TOOL, c, argv);
        }
    }
    if (rc) return rc;
    if (cli_memory_budget(TOOL, a->max_memory)) return EXIT_USAGE;
    for (int i = optind; i < argc; i++) {
        if (a->n_pos < 8) a->pos[a->n_pos++] = argv[i];
        else if (a->n_data < MAX_FILES) a->data[a->n_data++] = argv[i];
    }
    return 0;
}

/* arguments past the expected positionals are further --data files */
static void extra_positionals_are_data(cli_args *a, int expected) {
    for (int i = expected; i < a->n_pos && a->n_data < MAX_FILES; i++)
        a->data[a->n_data++] = a->pos[i];
    if (a->n_pos > expected) a->n_pos = expected;
}

/* the backend of --device (cpu by default) at --threads; EXIT_FAIL with its message */
static int open_backend(const cli_args *a, kv_backend *b) {
    kv_error err = {0};
    if (kv_backend_init(b, a->device ? a->device : "cpu", a->threads, &err))
        return cli_fail(TOOL, &err);
    return 0;
}

/* ---- train ---- */

/* Training progress on stderr: a redrawn bar on a terminal; otherwise a plain line at every
 * tenth of the run and at the last step. Both show step, tokens/s, loss, lr and ETA. */
typedef struct {
    cli_progress eval;
    int quiet, tty, eval_on, bar_on, last_decile;
    double last_draw;
    distill_phase phase;
} train_ui;

static void fmt_eta(char *out, size_t cap, double s) {
    if (!(s >= 0) || s > 1e8) snprintf(out, cap, "?");
    else if (s < 90) snprintf(out, cap, "%.0fs", s);
    else if (s < 5400) snprintf(out, cap, "%.0fm%02.0fs", floor(s / 60), fmod(s, 60));
    else snprintf(out, cap, "%.0fh%02.0fm", floor(s / 3600), fmod(floor(s / 60), 60));
}

static void train_line(train_ui *ui, const distill_progress *p) {
    const double frac = p->total_steps ? (double)p->step / (double)p->total_steps : 1;
    const int done = p->step >= p->total_steps;
    char eta[32];
    const long left_tokens =
        p->step < p->total_steps && p->step > 0
            ? (long)((double)p->tokens / (double)p->step * (double)(p->total_steps - p->step))
            : 0;
    fmt_eta(eta, sizeof eta, p->tokens_per_s > 0 ? (double)left_tokens / p->tokens_per_s : -1);
    if (done) snprintf(eta, sizeof eta, "0s");
    /* no rate yet (the first steps of a run or of a resumed one): say so, not "0 tok/s ETA ?" */
    char rate[48];
    if (p->tokens_per_s > 0) snprintf(rate, sizeof rate, "%.0f tok/s", p->tokens_per_s);
    else snprintf(rate, sizeof rate, "measuring speed");
    char eta_part[48];
    if (p->tokens_per_s > 0 || done) snprintf(eta_part, sizeof eta_part, " ETA %s", eta);
    else eta_part[0] = 0;
    if (ui->tty) {
        const double now = cli_now();
        if (!done && now - ui->last_draw < 0.1) return;
        ui->last_draw = now;
        char bar[26];
        const int fill = (int)(frac * 25);
        for (int i = 0; i < 25; i++) bar[i] = i < fill ? '#' : '.';
        bar[25] = 0;
        if (p->tokens_per_s > 0 || done)
            fprintf(stderr, "\rtrain [%s] step %ld/%ld %s loss %.4f lr %.3g%s\033[K", bar, p->step,
                    p->total_steps, rate, p->loss, p->lr, eta_part);
        else /* nothing measured yet: no loss, rate or ETA to show */
            fprintf(stderr, "\rtrain [%s] step %ld/%ld %s\033[K", bar, p->step, p->total_steps,
                    rate);
        ui->bar_on = 1;
        fflush(stderr);
        return;
    }
    const int decile = (int)(frac * 10);
    if (p->step == 0 || (decile == ui->last_decile && !done)) return;
    ui->last_decile = decile;
    if (p->tokens_per_s > 0 || done)
        fprintf(stderr, "%s: step %ld/%ld (%3.0f%%) %s loss %.4f lr %.3g%s\n", TOOL, p->step,
                p->total_steps, 100 * frac, rate, p->loss, p->lr, eta_part);
    else
        fprintf(stderr, "%s: step %ld/%ld (%3.0f%%) resumed; %s\n", TOOL, p->step, p->total_steps,
                100 * frac, rate);
}

static void on_progress(void *ctx, const distill_progress *p) {
    train_ui *ui = ctx;
    if (ui->quiet) return;
    if (p->phase != DISTILL_TRAIN && ui->bar_on) {
        fputc('\n', stderr);
        ui->bar_on = 0;
    }
    if (p->phase == DISTILL_EVAL_BEFORE || p->phase == DISTILL_EVAL_AFTER) {
        const char *label = p->phase == DISTILL_EVAL_BEFORE ? "eval (before)" : "eval (after)";
        if (!ui->eval_on || ui->phase != p->phase) {
            cli_progress_start(&ui->eval, label, (uint64_t)p->eval_total, 0);
            ui->eval_on = 1;
        }
        cli_progress_update(&ui->eval, (uint64_t)p->eval_done, "held-out sequences");
        if (p->eval_done >= p->eval_total) {
            cli_progress_finish(&ui->eval);
            ui->eval_on = 0;
        }
    } else if (p->phase == DISTILL_TRAIN) {
        train_line(ui, p);
    } else if (p->phase == DISTILL_SAVE) {
        fprintf(stderr, "%s: writing the model\n", TOOL);
    }
    ui->phase = p->phase;
}

/* "kvdistill: error: rank R of N: msg" when several processes run */
static int train_fail(const kv_dist *d, const kv_error *err) {
    if (d->size > 1) {
        cli_error(TOOL, "rank %d of %d: %s", d->rank, d->size, err->msg[0] ? err->msg : "failed");
        return EXIT_FAIL;
    }
    return cli_fail(TOOL, err);
}

/* KVDISTILL_TEST_FAIL=RANK:STEP (STEP a step number or "setup"): the test hook of
 * distill_opts.test_fail_*, for tests/cli_kvdistill_mpi.sh; ignored when unset */
static int test_fail_from_env(distill_opts *o) {
    const char *s = getenv("KVDISTILL_TEST_FAIL");
    if (!s || !*s) return 0;
    const char *colon = strchr(s, ':');
    char rank[32];
    long r, step = -1;
    if (!colon || (size_t)(colon - s) >= sizeof rank) goto bad;
    memcpy(rank, s, (size_t)(colon - s));
    rank[colon - s] = 0;
    if (cli_parse_int(rank, 0, 1 << 24, &r) ||
        (strcmp(colon + 1, "setup") && cli_parse_int(colon + 1, 1, 1L << 40, &step)))
        goto bad;
    o->test_fail_rank = (int)r;
    o->test_fail_step = step;
    return 0;
bad:
    return cli_usage_error(TOOL, "bad KVDISTILL_TEST_FAIL '%s' (RANK:STEP or RANK:setup)", s);
}

static int cmd_train(cli_args *a) {
    extra_positionals_are_data(a, 3);
    if (a->n_pos != 3) return cli_usage_error(TOOL, "train needs TEACHER_DIR STUDENT_DIR OUT_DIR");
    if (a->n_data < 1) return cli_usage_error(TOOL, "train needs --data FILE");
    if (!a->d.steps && !a->d.tokens) return cli_usage_error(TOOL, "give --steps N or --tokens N");
    if (a->d.steps && a->d.tokens)
        return cli_usage_error(TOOL, "give --steps or --tokens, not both");
    if (!(a->pos[0] = cli_model_arg(TOOL, a->pos[0], 0)) ||
        !(a->pos[1] = cli_model_arg(TOOL, a->pos[1], 0)))
        return EXIT_FAIL;
    a->d.teacher_dir = a->pos[0];
    a->d.student_dir = a->pos[1];
    a->d.out_dir = a->pos[2];
    a->d.data = a->data;
    a->d.n_data = a->n_data;
    a->d.eval_data = a->eval_data;
    a->d.n_eval_data = a->n_eval_data;
    int rc = test_fail_from_env(&a->d);
    if (rc) return rc;
    /* the processes of this job: several under mpirun (MPI_Init only then), else one */
    kv_dist dist;
    kv_error err = {0};
    if (kv_dist_init(&dist, &err)) {
        rc = train_fail(&dist, &err);
        kv_dist_free(&dist);
        return rc;
    }
    a->d.dist = &dist;
    if (!a->threads && dist.local_size > 1) { /* the host's CPUs shared by its ranks */
        const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        a->threads = cpus > dist.local_size ? (int)(cpus / dist.local_size) : 1;
        kv_kernels_set_threads(a->threads);
    }
    kv_backend backend = {0};
    if (dist.size > 1) {
        /* one GPU per rank (local rank); every rank learns whether all opened their backend, so
         * that none waits for one that has left */
        rc = a->device && !strcmp(a->device, "cuda")
                 ? kv_backend_cuda_init(&backend, dist.local_rank, &err)
                 : kv_backend_init(&backend, a->device ? a->device : "cpu", a->threads, &err);
        int first = -1;
        kv_error derr = {0};
        const int drc = kv_dist_fail_any(&dist, rc != 0, &first, &derr);
        if (!rc && drc) {
            err = derr;
            rc = drc;
        } else if (!rc && first >= 0) {
            rc = kv_fail(&err, KV_EIO, "stopped: process %d of %d could not open its device", first,
                         dist.size);
        }
        if (rc) {
            rc = train_fail(&dist, &err);
            if (backend.ops) kv_backend_free(&backend);
            kv_dist_free(&dist);
            return rc;
        }
    } else if ((rc = open_backend(a, &backend))) {
        kv_dist_free(&dist);
        return rc;
    }
    a->d.backend = &backend;
    /* GPU-to-GPU gradient sums over the MPI group: NCCL (collective; every rank decides alike) */
    const int on_cuda = a->device && !strcmp(a->device, "cuda");
    const int want_nccl =
        a->allreduce ? !strcmp(a->allreduce, "nccl") : on_cuda && kv_dist_have_nccl();
    kv_dist nccl = {0};
    if (dist.size > 1 && want_nccl) {
        if (!on_cuda) rc = kv_fail(&err, KV_EINVAL, "--allreduce nccl needs --device cuda");
        else rc = kv_dist_init_nccl(&nccl, &dist, dist.local_rank, &err);
        if (rc) { /* every rank fails alike: the option is the same, init is collective */
            rc = train_fail(&dist, &err);
            kv_backend_free(&backend);
            kv_dist_free(&dist);
            return rc;
        }
        a->d.dist = &nccl;
    }
    train_ui ui = {.quiet = a->quiet, .tty = isatty(STDERR_FILENO), .last_decile = -1};
    distill_report rep;
    rc = distill_train(&a->d, on_progress, &ui, &rep, &err);
    if (nccl.ops) kv_dist_free(&nccl);
    kv_backend_free(&backend);
    if (ui.bar_on) fputc('\n', stderr);
    const int root = dist.rank == 0, failed = rc != 0;
    if (failed) rc = train_fail(&dist, &err);
    kv_dist_free(&dist);
    if (failed) return rc;
    if (!root) return 0;
    if (rep.processes > 1)
        printf("data parallel: %d processes, %d sequences each per micro-batch\n", rep.processes,
               a->d.batch / rep.processes);
    if (a->json) { /* the report (OUT_DIR/report.json) as one line */
        char path[4096], *text = NULL;
        size_t n = 0;
        cJSON *j = NULL;
        char *line = NULL;
        if (snprintf(path, sizeof path, "%s/report.json", a->d.out_dir) < (int)sizeof path &&
            !kv_read_file(path, &text, &n, (size_t)64 << 20, &err))
            j = cJSON_ParseWithLength(text, n);
        if (j) line = cJSON_PrintUnformatted(j);
        if (line) printf("%s\n", line);
        else
            cli_error(TOOL, "%s: cannot print the report as JSON%s%s", path, err.msg[0] ? ": " : "",
                      err.msg);
        cJSON_free(line);
        cJSON_Delete(j);
        free(text);
        return line ? 0 : EXIT_FAIL;
    }
    if (rep.tokens_per_s > 0)
        printf("map %s: %ld steps, %ld tokens in %.1f s (%.0f tokens/s)\n", rep.map_name, rep.steps,
               rep.tokens_trained, rep.seconds, rep.tokens_per_s);
    else
        printf("map %s: %ld steps, %ld tokens (no step left to train in this run)\n", rep.map_name,
               rep.steps, rep.tokens_trained);
    if (rep.chat)
        printf("chat data (template: %s): the KL trained on %ld %s positions\n", rep.chat_template,
               rep.loss_tokens_trained, rep.loss_assistant ? "assistant" : "(all)");
    printf("held-out perplexity: teacher %.4f, student %.4f -> %.4f (KL %.4f -> %.4f)\n",
           rep.teacher_ppl, rep.student_before_ppl, rep.student_after_ppl, rep.kl_before,
           rep.kl_after);
    if (rep.chat && rep.asst_eval_tokens > 0)
        printf("held-out on %ld assistant positions: teacher %.4f, student %.4f -> %.4f (KL %.4f "
               "-> %.4f)\n",
               rep.asst_eval_tokens, rep.asst_teacher_ppl, rep.asst_student_before_ppl,
               rep.asst_student_after_ppl, rep.asst_kl_before, rep.asst_kl_after);
    printf("wrote %s\n", a->d.out_dir);
    return 0;
}

/* ---- student ---- */

static int cmd_student(cli_args *a) {
    if (a->n_pos != 2) return cli_usage_error(TOOL, "student needs TEACHER_DIR OUT_DIR");
    if (a->n_maps != 1) return cli_usage_error(TOOL, "student needs exactly one --map SPEC");
    kv_error err = {0};
    kvt_model t, s;
    if (!(a->pos[0] = cli_model_arg(TOOL, a->pos[0], 0))) return EXIT_FAIL;
    int rc = kvt_model_load(&t, a->pos[0], &err);
    if (rc) return cli_fail(TOOL, &err);
    kv_map map;
    if ((rc = kvmap_parse(&map, a->maps[0], t.dims.n_layers, &err))) {
        kvt_model_free(&t);
        return cli_usage_error(TOOL, "%s", err.msg);
    }
    if (!a->d.force && !kv_dir_is_empty(a->pos[1])) {
        kvt_model_free(&t);
        cli_error(TOOL, "%s: not empty (use --force)", a->pos[1]);
        return EXIT_FAIL;
    }
    if (a->layout && map.kind != KVMAP_SWIFTKV) {
        kvt_model_free(&t);
        return cli_usage_error(TOOL, "--layout applies to SwiftKV only, not KV map '%s'", map.name);
    }
    distill_init_mode mode =
        a->init && !strcmp(a->init, "target") ? DISTILL_INIT_TARGET : DISTILL_INIT_MEAN;
    const kv_swiftkv_layout layout =
        a->layout && !strcmp(a->layout, "deploy") ? KV_LAYOUT_DEPLOY : KV_LAYOUT_HF_SWIFTKV;
    cli_warn_swiftkv_serving(TOOL, &map, layout);
    if (!(rc = distill_student_init_layout(&s, &t, &map, mode, layout, &err))) {
        rc = kvt_model_save(&s, a->pos[1], NULL, &err);
        kvt_model_free(&s);
    }
    kvt_model_free(&t);
    if (rc) return cli_fail(TOOL, &err);
    if (!a->quiet) fprintf(stderr, "%s: wrote the %s student to %s\n", TOOL, map.name, a->pos[1]);
    return 0;
}

/* ---- calibrate ---- */

static int add_map(kv_map *maps, int *n, const kv_map *m) {
    for (int i = 0; i < *n; i++)
        if (kvmap_equal(&maps[i], m)) return 0;
    if (*n >= MAX_MAPS) return -1;
    maps[(*n)++] = *m;
    return 0;
}

static int parse_range(const char *s, int *lo, int *hi) {
    long a, b;
    const char *dash = strchr(s, '-');
    if (!dash) {
        if (cli_parse_int(s, 1, HF_MAX_LAYERS, &a)) return -1;
        *lo = *hi = (int)a;
        return 0;
    }
    char first[32];
    size_t k = (size_t)(dash - s);
    if (k == 0 || k >= sizeof first) return -1;
    memcpy(first, s, k);
    first[k] = 0;
    if (cli_parse_int(first, 1, HF_MAX_LAYERS, &a) ||
        cli_parse_int(dash + 1, 1, HF_MAX_LAYERS, &b) || b < a)
        return -1;
    *lo = (int)a, *hi = (int)b;
    return 0;
}

static int build_candidates(const cli_args *a, int L, kv_map *maps, int *n) {
    kv_error err = {0};
    kv_map m;
    *n = 0;
    int any = a->swiftkv_range || a->cross_l || a->n_maps;
    int lo = 1, hi = L - 1, groups[16] = {1, 2, 4}, n_groups = 3;
    if (a->groups) {
        n_groups = 0;
        char buf[128];
        snprintf(buf, sizeof buf, "%s", a->groups);
        for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            long g;
            if (n_groups >= 16 || cli_parse_int(tok, 1, HF_MAX_LAYERS, &g))
                return cli_usage_error(TOOL, "bad --groups '%s'", a->groups);
            groups[n_groups++] = (int)g;
        }
    }
    if (a->swiftkv_range && parse_range(a->swiftkv_range, &lo, &hi))
        return cli_usage_error(TOOL, "bad --swiftkv '%s' (e.g. 3 or 1-4)", a->swiftkv_range);
    if (a->swiftkv_range || !any) {
        for (int l = lo; l <= hi && l < L; l++)
            for (int k = 0; k < n_groups; k++)
                if ((L - l) % groups[k] == 0 && !kvmap_swiftkv(&m, L, l, groups[k], &err))
                    add_map(maps, n, &m);
    }
    int cl = a->cross_l ? a->cross_l : (!any ? (L + 1) / 2 : 0);
    if (cl > L) return cli_usage_error(TOOL, "--cross %d: the model has %d layers", cl, L);
    if (cl) {
        static const char *const cfgs[] = {"pizza", "sandwich", "lasagna"};
        static const char *const tgts[] = {"bottom", "top", "middle"};
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) {
                char spec[64];
                snprintf(spec, sizeof spec, "%s-%s:%d", cfgs[i], tgts[j], cl);
                if (kvmap_parse(&m, spec, L, &err)) return cli_usage_error(TOOL, "%s", err.msg);
                if (!kvmap_is_identity(&m)) add_map(maps, n, &m);
            }
    }
    for (int i = 0; i < a->n_maps; i++) {
        if (kvmap_parse(&m, a->maps[i], L, &err)) return cli_usage_error(TOOL, "%s", err.msg);
        if (kvmap_is_identity(&m))
            return cli_usage_error(TOOL, "--map %s changes nothing", a->maps[i]);
        add_map(maps, n, &m);
    }
    if (*n == 0) return cli_usage_error(TOOL, "no valid candidate transform");
    return 0;
}

static void calib_tick(void *ctx, int done, int total) {
    cli_progress *p = ctx;
    cli_progress_update(p, (uint64_t)done, "candidates");
    (void)total;
}

static void print_table(const calib_result *r) {
    printf("teacher perplexity %.4f on %ld calibration tokens; budget +%.1f%%\n", r->teacher_ppl,
           r->tokens, r->budget_pct);
    printf("savings: KV = KV-cache bytes saved; prefill = share of a prompt token's layer FLOPs "
           "skipped (SwiftKV). Quality cost: KL and perplexity vs the teacher, zero-shot "
           "(! = over budget)\n");
    printf("%4s  %-22s %-8s %8s %7s %8s %10s %10s %8s  %s\n", "rank", "map", "kind", "slots", "KV",
           "prefill", "KL", "ppl", "ppl +%", "layer_types");
    for (int c = 0; c < r->n_cand; c++) {
        const calib_candidate *cd = &r->cand[c];
        char types[HF_MAX_LAYERS * 6];
        kvmap_layer_types(&cd->map, types, sizeof types);
        printf("%4d  %-22s %-8s %5d/%-2d %6.1f%% %7.1f%% %10.5f %10.4f %+7.2f%%%s %s\n", c + 1,
               cd->map.name, cd->map.kind == KVMAP_SWIFTKV ? "swiftkv" : "cross", cd->slots, r->L,
               100 * cd->cache_saving, 100 * cd->prefill_saving, cd->kl, cd->ppl,
               cd->ppl_increase_pct + 0.0, cd->within_budget ? " " : "!",
               !cd->saves                      ? "(saves nothing: never recommended)"
               : cd->map.kind == KVMAP_SWIFTKV ? "-"
                                               : types);
    }
    printf("\nhidden-state cosine similarity (row i, column j: states entering layers i and j; "
           "last: output)\n     ");
    for (int j = 0; j <= r->L; j++) printf(j == r->L ? "   out" : " %5d", j);
    printf("\n");
    for (int i = 0; i <= r->L; i++) {
        if (i == r->L) printf("  out");
        else printf("%5d", i);
        for (int j = 0; j <= r->L; j++) printf(" %5.3f", r->hidden_sim[i * (r->L + 1) + j]);
        printf("\n");
    }
    if (r->recommended >= 0) {
        const calib_candidate *cd = &r->cand[r->recommended];
        printf("\nrecommended: %s (%d of %d KV slots: KV cache saving %.1f%%", cd->map.name,
               cd->slots, r->L, 100 * cd->cache_saving);
        if (cd->map.kind == KVMAP_SWIFTKV)
            printf(", prefill compute saving %.1f%%", 100 * cd->prefill_saving);
        printf("; zero-shot ppl %+.2f%%, KL %.5f; distil it to recover the rest)\n",
               cd->ppl_increase_pct + 0.0, cd->kl);
    } else if (r->best_saving >= 0) {
        const calib_candidate *cd = &r->cand[r->best_saving];
        printf("\nrecommended: none: no candidate that saves anything is within +%.1f%% zero-shot. "
               "The one that costs least quality is %s (KV cache saving %.1f%%",
               r->budget_pct, cd->map.name, 100 * cd->cache_saving);
        if (cd->map.kind == KVMAP_SWIFTKV)
            printf(", prefill compute saving %.1f%%", 100 * cd->prefill_saving);
        printf("; zero-shot ppl %+.2f%%, KL %.5f): distil it, or raise --budget\n",
               cd->ppl_increase_pct + 0.0, cd->kl);
    } else {
        printf("\nrecommended: none: no candidate saves KV-cache memory or prefill compute\n");
    }
}

static int cmd_calibrate(cli_args *a) {
    extra_positionals_are_data(a, 1);
    if (a->n_pos != 1) return cli_usage_error(TOOL, "calibrate needs TEACHER_DIR");
    if (a->n_data < 1) return cli_usage_error(TOOL, "calibrate needs --data FILE");
    kv_error err = {0};
    if (!(a->pos[0] = cli_model_arg(TOOL, a->pos[0], 0))) return EXIT_FAIL;
    calib_opts co;
    calib_opts_default(&co);
    co.teacher_dir = a->pos[0];
    co.data = a->data;
    co.n_data = a->n_data;
    co.seq_len = a->d.seq_len;
    co.batch = a->d.batch;
    co.passes = a->d.passes;
    co.budget_pct = a->budget;
    if (a->eval_seqs_set) co.max_seqs = a->d.eval_max_seqs;
    /* the layer count decides the candidates: read the config first */
    kvt_model t;
    int rc = kvt_model_load(&t, co.teacher_dir, &err);
    if (rc) return cli_fail(TOOL, &err);
    const int L = t.dims.n_layers;
    kvt_model_free(&t);
    static kv_map maps[MAX_MAPS];
    int n_maps = 0;
    if ((rc = build_candidates(a, L, maps, &n_maps))) return rc;
    kv_backend backend;
    if ((rc = open_backend(a, &backend))) return rc;
    co.backend = &backend;
    cli_progress bar;
    cli_progress_start(&bar, "calibrate", (uint64_t)n_maps, a->quiet);
    calib_result res;
    rc = calib_run(&co, maps, n_maps, calib_tick, &bar, &res, &err);
    cli_progress_finish(&bar);
    kv_backend_free(&backend);
    if (rc) return cli_fail(TOOL, &err);
    if (a->svg && (rc = calib_write_svg(&res, a->svg, &err))) {
        calib_result_free(&res);
        return cli_fail(TOOL, &err);
    }
    if (a->json) {
        char *text = calib_json(&res);
        if (!text) {
            calib_result_free(&res);
            cli_error(TOOL, "out of memory");
            return EXIT_FAIL;
        }
        printf("%s\n", text);
        free(text);
    } else {
        print_table(&res);
    }
    calib_result_free(&res);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return cli_usage_error(TOOL, "missing command (train, calibrate or student)");
    const char *cmd = argv[1];
    cli_args a;
    int rc;
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) return usage(), 0;
    if (!strcmp(cmd, "--version")) return cli_version(TOOL), 0;
    if (strcmp(cmd, "train") && strcmp(cmd, "calibrate") && strcmp(cmd, "student"))
        return cli_usage_error(TOOL, "unknown command '%s' (train, calibrate or student)", cmd);
    if ((rc = parse_args(argc - 1, argv + 1, &a))) return rc == 1 ? 0 : rc;
    if (a.threads) kv_kernels_set_threads(a.threads);
    if (!strcmp(cmd, "train")) return cmd_train(&a);
    if (!strcmp(cmd, "student")) return cmd_student(&a);
    return cmd_calibrate(&a);
}
