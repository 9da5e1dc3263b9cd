/* kvrun: run a Llama model (original, cross-layer KV sharing or SwiftKV) on the CPU or a CUDA
 * GPU (kernels/backend.h): generate, perplexity, speed, logits dump, tokenize. Data on stdout;
 * statistics and errors on stderr. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cblas.h>

#include "cli/cli.h"
#include "kernels/backend.h"
#include "kernels/cpu/baseline.h"
#include "kernels/cpu/gemv.h"
#include "runtime/model_source.h"
#include "base/fileio.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "runtime/forward.h"
#include "runtime/generate.h"
#include "runtime/ppl.h"

static const char *TOOL = "kvrun";

#define SMALL_MODEL_BYTES ((size_t)16 << 20) /* default to one thread below this (weights/token) */

static void usage(void) {
    printf(
        "Usage: kvrun [OPTIONS] MODEL\n"
        "Run a Llama model (or Mistral, Qwen2; sliding windows honoured) on the CPU or a GPU.\n"
        "MODEL is a HuggingFace directory (config.json, *.safetensors, tokenizer.json; or\n"
        "its model.safetensors file) or a kvforge bundle (.kvb): an original model or one\n"
        "converted for cross-layer KV sharing or SwiftKV; the KV map is honoured exactly.\n\n"
        "Modes (exactly one):\n"
        "  --prompt TEXT          generate: print TEXT and its continuation on stdout\n"
        "  --ppl FILE             perplexity of a text file (nats/token, bits/byte)\n"
        "  --bench                prefill and decode tokens/s, decode GB/s of weights, prefill\n"
        "                         model TFLOP/s (every token through every layer) and KV bytes;\n"
        "                         on the CPU also decode GB/s (weights + K/V read per token)\n"
        "                         over a read loop and prefill GFLOP/s over a 1024^3 GEMM,\n"
        "                         both measured in the same run, and decode from context 1\n"
        "                         timed in each repeat (the context ratio pairs them); the\n"
        "                         read loop also runs over each repeat's decode bytes just\n"
        "                         before its decode steps (the paired ratio, a median), and\n"
        "                         over the very bytes a decode step reads (its weights and\n"
        "                         K/V rows), G sweeps before them (the step ratio, a median)\n"
        "  --logits-out FILE      write every position's logits [T, vocab] (F32) and the token\n"
        "                         ids to FILE, a safetensors file (the name is used as given,\n"
        "                         e.g. out.safetensors); input from --text or --tokens\n"
        "  --tokenize TEXT        print the token ids of TEXT (no BOS); MODEL may hold only\n"
        "                         tokenizer files\n\n"
        "Generation:\n"
        "  -n, --max-tokens N     tokens to generate (default 256; bench: decode steps, 64)\n"
        "  --temperature T        0 = greedy (default 1.0)\n"
        "  --top-p P              nucleus sampling in (0, 1); 0 or 1 = off (default 0.9)\n"
        "  --seed N               random seed (default: the time)\n"
        "  Generation stops at an EOS token (config.json eos_token_id) or BOS, as llama2.c's\n"
        "  run does, or at the end of the model's context; stderr says which. The prompt gets\n"
        "  a BOS first.\n"
        "Perplexity:\n"
        "  --ctx N                window in positions: BOS + N-1 tokens (default min(512,\n"
        "                         max_position_embeddings))\n"
        "  --max-windows N        score only the first N windows\n"
        "Bench:\n"
        "  --prompt-len N         prompt tokens (default 128)\n"
        "  --repeat N             runs; the fastest counts (default 3)\n"
        "Logits:\n"
        "  --text TEXT            input text (BOS prepended)\n"
        "  --tokens IDS           input ids, comma-separated, used as given\n"
        "Common:\n"
        "  --device D             cpu (default) or cuda (the first GPU; needs a build with\n"
        "                         CUDA and a GPU)\n"
        "  --threads N            CPU worker threads (default: all online CPUs; 1 for models\n"
        "                         under 16 MB of weights)\n"
        "  --prefill MODE         sequential | iterative[:N], for maps with upward layers\n"
        "                         (default iterative:9)\n"
        "  --batch N              tokens per forward pass (default 512)\n"
        "  --kv-dtype T           KV-cache element type: f32 (the reference) or bf16 (half the\n"
        "                         bytes; K/V rounded as they are cached). Default: the model's\n"
        "                         weight type (config.json torch_dtype), as kvconvert info and\n"
        "                         plan count KV bytes: bf16 for a BF16 model, else f32 (there\n"
        "                         is no f16 cache: an F16 model's cache takes twice its count)\n"
        "  --max-memory SIZE      memory budget (e.g. 4G): a run that plans more (weights widened\n"
        "                         to F32, KV cache, activations) is refused before it\n"
        "                         allocates. Default: $KVFORGE_MAX_MEMORY, else physical RAM\n"
        "  --json                 --ppl and --bench print JSON\n"
        "  -h, --help             this help\n"
        "  --version              print the version\n");
}

typedef enum { MODE_NONE, MODE_PROMPT, MODE_PPL, MODE_BENCH, MODE_LOGITS, MODE_TOKENIZE } run_mode;

typedef struct {
    run_mode mode;
    const char *model_dir, *text, *ppl_file, *logits_out, *logits_text, *logits_ids;
    long max_tokens, ctx, max_windows, prompt_len, repeat, threads, batch;
    int max_tokens_set, seed_set, json;
    double temperature, top_p;
    unsigned long seed;
    kv_prefill prefill;
    kv_dtype kv_dtype; /* KV-cache elements: KV_F32 or KV_BF16; KV_DTYPE_COUNT: as the weights */
    const char *device; /* "cpu" or "cuda" (checked by kv_device_parse) */
} run_args;

/* ---- shared setup ------------------------------------------------------------------------- */

/* the KV cache's element type: --kv-dtype, else the model's weight type (config.json
 * torch_dtype) where the cache has it: BF16 for a BF16 model, F32 otherwise (F16 included) */
static kv_dtype cache_dtype(const run_args *a, const kv_model *m) {
    if (a->kv_dtype != KV_DTYPE_COUNT) return a->kv_dtype;
    return m->cfg.torch_dtype == KV_BF16 ? KV_BF16 : KV_F32;
}

/* set when MODEL is a bundle: it owns the weights, so it lives until exit */
static kv_bundle *g_bundle;

static int load_tokenizer(const char *dir, const kv_model *m, kv_tokenizer **tk, kv_error *err) {
    const char *path = dir;
    int rc;
    if (!g_bundle && kv_path_is_bundle(dir) && (rc = kv_bundle_open(&g_bundle, dir, err)))
        return rc;
    if ((rc = kv_tokenizer_open_path(tk, g_bundle, dir, err))) return rc;
    if (m && kv_tokenizer_vocab_size(*tk) > m->dims.vocab)
        return kv_fail(err, KV_EFORMAT, "%s: %d tokens but the model's vocab_size is %d", path,
                       kv_tokenizer_vocab_size(*tk), m->dims.vocab);
    if (m && (m->cfg.bos_token_id >= 0 || m->cfg.n_eos > 0)) {
        const int bos = m->cfg.bos_token_id >= 0 ? m->cfg.bos_token_id : kv_tokenizer_bos(*tk);
        const int eos = m->cfg.n_eos > 0 ? m->cfg.eos_token_ids[0] : kv_tokenizer_eos(*tk);
        if (bos < kv_tokenizer_vocab_size(*tk) && eos < kv_tokenizer_vocab_size(*tk) &&
            (rc = kv_tokenizer_set_bos_eos(*tk, bos, eos, err)))
            return rc;
    }
    return 0;
}

/* The backend first (a device this build or machine lacks fails before the model is read),
 * then the model. On failure neither is left open. */
static int open_model(const run_args *a, kv_backend *b, kv_model *m, kv_error *err) {
    const int threads = (int)(a->threads > 0 ? a->threads : 0); /* 0: every online CPU */
    int rc = kv_backend_init(b, a->device, threads, err);
    if (rc) return rc;
    if ((rc = kv_model_open_path(m, &g_bundle, a->model_dir, threads, err))) {
        kv_backend_free(b);
        return rc;
    }
    /* a model whose weights fit in cache runs faster on one thread than waking others */
    if (a->threads <= 0 && b->device == KV_DEVICE_CPU && m->step_bytes < SMALL_MODEL_BYTES) {
        kv_backend_free(b);
        rc = kv_backend_cpu_init(b, 1, err);
    }
    if (rc) kv_model_free(m);
    return rc;
}

/* ---- --tokenize --------------------------------------------------------------------------- */

static int run_tokenize(const run_args *a) {
    kv_error err = {0};
    kv_tokenizer *tk = NULL;
    int *ids = NULL, n = 0;
    if (load_tokenizer(a->model_dir, NULL, &tk, &err) ||
        kv_tokenizer_encode(tk, a->text, strlen(a->text), 0, &ids, &n, &err)) {
        kv_tokenizer_free(tk);
        return cli_fail(TOOL, &err);
    }
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(ids);
    kv_tokenizer_free(tk);
    return 0;
}

/* ---- --prompt ----------------------------------------------------------------------------- */

typedef struct {
    const kv_tokenizer *tk;
} stream_ctx;

static void print_piece(const kv_tokenizer *tk, int prev, int id) {
    char buf[256];
    fputs(kv_tokenizer_piece_runc(tk, prev, id, buf, sizeof buf), stdout);
    fflush(stdout);
}

static int on_token(void *ctx, int prev, int token) {
    print_piece(((stream_ctx *)ctx)->tk, prev, token);
    return 0;
}

static int run_prompt(const run_args *a) {
    kv_error err = {0};
    kv_backend b;
    kv_model m;
    kv_tokenizer *tk = NULL;
    kv_state s = {0};
    kv_sampler smp = {0};
    int *ids = NULL, n_ids = 0, status = EXIT_FAIL;
    if (open_model(a, &b, &m, &err)) return cli_fail(TOOL, &err);
    const int bos = m.cfg.bos_token_id;
    if (load_tokenizer(a->model_dir, &m, &tk, &err) ||
        kv_tokenizer_encode(tk, a->text, strlen(a->text), bos >= 0, &ids, &n_ids, &err))
        goto fail;
    if (bos >= 0 && ids[0] != bos) ids[0] = bos; /* config's BOS wins over the tokenizer's */
    if (n_ids < 1) {
        kv_fail(&err, KV_EINVAL, "the prompt is empty and the model has no BOS token");
        goto fail;
    }
    if (n_ids > m.dims.max_pos) {
        kv_fail(&err, KV_EINVAL, "the prompt has %d tokens; the model's context is %d", n_ids,
                m.dims.max_pos);
        goto fail;
    }
    long max_new = a->max_tokens_set ? a->max_tokens : 256;
    const int ctx_capped = max_new > m.dims.max_pos - n_ids + 1; /* the context ends it first */
    if (ctx_capped) max_new = m.dims.max_pos - n_ids + 1;
    const int max_seq =
        n_ids + (int)max_new > m.dims.max_pos ? m.dims.max_pos : n_ids + (int)max_new;
    const uint64_t seed = a->seed_set ? a->seed : (uint64_t)time(NULL);
    if (kv_state_init(&s, &b, &m, max_seq, (int)a->batch, cache_dtype(a, &m), &err) ||
        kv_sampler_init(&smp, m.dims.vocab, (float)a->temperature, (float)a->top_p, seed, &err))
        goto fail;
    int stops[HF_MAX_EOS + 1], n_stop = 0;
    for (int i = 0; i < m.cfg.n_eos; i++) stops[n_stop++] = m.cfg.eos_token_ids[i];
    if (bos >= 0) stops[n_stop++] = bos;
    /* the prompt as llama2.c's run prints it: every token after the first, then the rest */
    if (bos < 0) print_piece(tk, -1, ids[0]);
    for (int i = 1; i < n_ids; i++) print_piece(tk, ids[i - 1], ids[i]);
    stream_ctx sc = {tk};
    kv_generate_opts go = {
        .max_new_tokens = (int)max_new, .prefill = a->prefill, .stop_ids = stops, .n_stop = n_stop};
    kv_generate_stats st;
    if (kv_generate(&s, &smp, ids, n_ids, &go, on_token, &sc, NULL, &st, &err)) {
        printf("\n");
        goto fail;
    }
    printf("\n");
    fflush(stdout);
    char why[128] = "";
    if (st.stopped_on >= 0)
        snprintf(why, sizeof why, "; stopped at %s", st.stopped_on == bos ? "BOS" : "EOS");
    else if (ctx_capped && st.n_generated == (int)max_new)
        snprintf(why, sizeof why, "; stopped at the context limit (%d positions)", m.dims.max_pos);
    char decode_rate[64] = "";
    if (st.n_generated > 1)
        snprintf(decode_rate, sizeof decode_rate, " (%.1f tok/s)",
                 (st.n_generated - 1) / (st.decode_s + 1e-12));
    struct rusage ru;
    const long peak_kb = getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : 0; /* KiB on Linux */
    fprintf(stderr,
            "kvrun: prompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens in %.3f s"
            "%s%s; peak RSS %ld KiB, KV cache %zu bytes\n",
            st.n_prompt, st.prefill_s, st.n_prompt / (st.prefill_s + 1e-12), st.n_generated,
            st.decode_s, decode_rate, why, peak_kb, s.cache.bytes);
    status = 0;
fail:
    if (status) cli_fail(TOOL, &err);
    free(ids);
    kv_sampler_free(&smp);
    if (s.model) kv_state_free(&s);
    kv_tokenizer_free(tk);
    kv_model_free(&m);
    kv_backend_free(&b);
    return status;
}

/* ---- --ppl -------------------------------------------------------------------------------- */

static void ppl_progress(void *ctx, int done, int total) {
    cli_progress *p = ctx;
    (void)total;
    cli_progress_update(p, (uint64_t)done, NULL);
}

static int run_ppl(const run_args *a) {
    kv_error err = {0};
    kv_backend b;
    kv_model m;
    kv_tokenizer *tk = NULL;
    kv_state s = {0};
    char *text = NULL, *decoded = NULL;
    size_t n_text = 0, n_decoded = 0;
    int *ids = NULL, n_ids = 0, status = EXIT_FAIL;
    if (open_model(a, &b, &m, &err)) return cli_fail(TOOL, &err);
    const int ctx = a->ctx > 0 ? (int)a->ctx : (m.dims.max_pos < 512 ? m.dims.max_pos : 512);
    if (ctx < 2 || ctx > m.dims.max_pos) {
        kv_fail(&err, KV_EINVAL, "--ctx %d: the model allows 2..%d", ctx, m.dims.max_pos);
        goto fail;
    }
    if (load_tokenizer(a->model_dir, &m, &tk, &err) ||
        kv_read_file(a->ppl_file, &text, &n_text, (size_t)1 << 31, &err) ||
        kv_tokenizer_encode(tk, text, n_text, 0, &ids, &n_ids, &err) ||
        kv_state_init(&s, &b, &m, ctx, (int)a->batch, cache_dtype(a, &m), &err))
        goto fail;
    kv_ppl_opts o = {.ctx = ctx,
                     .bos = m.cfg.bos_token_id,
                     .max_windows = (int)a->max_windows,
                     .prefill = a->prefill};
    cli_progress prog;
    const long stride = ctx - 1;
    long windows = (n_ids + stride - 1) / stride;
    if (a->max_windows > 0 && windows > a->max_windows) windows = a->max_windows;
    /* progress on a terminal whatever --json says (the JSON goes to stdout); piped stderr gets
     * plain lines unless --json */
    cli_progress_start(&prog, "perplexity", (uint64_t)windows, a->json && !isatty(STDERR_FILENO));
    kv_ppl_result r;
    const double t0 = cli_now();
    int rc = kv_perplexity(&s, ids, n_ids, &o, ppl_progress, &prog, &r, &err);
    const double secs = cli_now() - t0;
    cli_progress_finish(&prog);
    if (rc) goto fail;
    /* bytes of the text the scored tokens stand for */
    if (kv_tokenizer_decode_ex(tk, ids, (int)r.n_ids_used, 1, &decoded, &n_decoded, &err))
        goto fail;
    const double nats = r.nats / (double)r.n_scored;
    const double bpb = r.nats / log(2.0) / (double)(n_decoded ? n_decoded : 1);
    if (a->json)
        printf("{\"file\": \"%s\", \"ctx\": %d, \"windows\": %d, \"tokens\": %ld, \"bytes\": %zu, "
               "\"nats_per_token\": %.6f, \"perplexity\": %.6f, \"bits_per_byte\": %.6f, "
               "\"kv_cache_dtype\": \"%s\", \"seconds\": %.3f}\n",
               a->ppl_file, ctx, r.n_windows, r.n_scored, n_decoded, nats, exp(nats), bpb,
               kv_dtype_name(s.cache.dtype), secs);
    else
        printf("%s: %ld tokens (%zu bytes) in %d windows of %d: %.6f nats/token, perplexity %.4f, "
               "%.6f bits/byte\n",
               a->ppl_file, r.n_scored, n_decoded, r.n_windows, ctx, nats, exp(nats), bpb);
    status = 0;
fail:
    if (status) cli_fail(TOOL, &err);
    free(ids);
    free(text);
    free(decoded);
    if (s.model) kv_state_free(&s);
    kv_tokenizer_free(tk);
    kv_model_free(&m);
    kv_backend_free(&b);
    return status;
}

/* ---- --bench ------------------------------------------------------------------------------ */

/* the baselines' sizes: a read loop well past the caches, a GEMM large enough for full speed */
#define BENCH_READ_BYTES ((size_t)512 << 20)
#define BENCH_GEMM_N     1024

/* a fresh run of the state: prefill of P tokens, then G decode steps of one token each, the
 * fastest so far of each kept in *best_prefill / *best_decode (seconds), this run's decode time
 * in *decode_s when not NULL */
static int bench_pass(kv_state *s, const int32_t *tokens, int P, int G, const kv_forward_opts *fo,
                      double *best_prefill, double *best_decode, double *decode_s, kv_error *err) {
    kv_state_reset(s);
    double t = cli_now();
    if (kv_forward(s, tokens, P, fo, NULL, err)) return -1;
    double dt = cli_now() - t;
    if (dt < *best_prefill) *best_prefill = dt;
    t = cli_now();
    for (int i = 0; i < G; i++)
        if (kv_forward(s, tokens + P + i, 1, fo, NULL, err)) return -1;
    dt = cli_now() - t;
    if (dt < *best_decode) *best_decode = dt;
    if (decode_s) *decode_s = dt;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* the median of v [n] (n >= 1; sorts v) */
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* what a decode step at context ctx reads, as spans of host memory: every weight matrix it runs
 * (each layer's projections, the LM head) and, layer by layer, each KV head's K and V rows of
 * the positions it sees (at most its window, or its ring); *spans malloc'd, NULL on failure */
static kv_span *step_spans(const kv_model *m, const kv_state *s, int ctx, int *n_spans) {
    const int L = m->dims.n_layers, nkv = m->dims.n_kv_heads;
    const size_t H = (size_t)m->dims.hidden, Q = (size_t)m->dims.q_dim, KV = (size_t)m->dims.kv_dim,
                 F = (size_t)m->dims.ffn, es = kv_dtype_size(m->mat_type);
    kv_span *sp = malloc(sizeof *sp * ((size_t)L * (7 + 2 * (size_t)nkv) + 1));
    int n = 0;
    if (!sp) return NULL;
    sp[n++] = (kv_span){m->lm_head, (size_t)m->dims.vocab * H * es};
    const size_t row_bytes = (size_t)m->dims.head_dim * s->cache.elem;
    for (int i = 0; i < L; i++) {
        const kv_layer_weights *w = &m->layers[i];
        sp[n++] = (kv_span){w->wq, Q * H * es};
        if (w->wk) sp[n++] = (kv_span){w->wk, KV * H * es};
        if (w->wv) sp[n++] = (kv_span){w->wv, KV * H * es};
        sp[n++] = (kv_span){w->wo, H * Q * es};
        sp[n++] = (kv_span){w->w_gate, F * H * es};
        sp[n++] = (kv_span){w->w_up, F * H * es};
        sp[n++] = (kv_span){w->w_down, H * F * es};
        const int rows_held = kv_cache_head_rows(&s->cache, i), win = m->cfg.layer_window[i];
        int rows = ctx < rows_held ? ctx : rows_held;
        if (win > 0 && win < rows) rows = win;
        for (int g = 0; g < nkv; g++) {
            const size_t at = (size_t)g * rows_held * row_bytes;
            sp[n++] = (kv_span){(const char *)kv_cache_k(&s->cache, i) + at, rows * row_bytes};
            sp[n++] = (kv_span){(const char *)kv_cache_v(&s->cache, i) + at, rows * row_bytes};
        }
    }
    *n_spans = n;
    return sp;
}

static int run_bench(const run_args *a) {
    kv_error err = {0};
    kv_backend b;
    kv_model m;
    kv_state s = {0};
    int status = EXIT_FAIL;
    int32_t *prompt = NULL;
    kv_read_loop *rl = NULL, *step_loop = NULL;
    kv_span *spans = NULL;
    /* [repeat] each */
    double *paired_loop = NULL, *paired_ratio = NULL, *step_gbps = NULL, *step_ratio = NULL;
    if (open_model(a, &b, &m, &err)) return cli_fail(TOOL, &err);
    const int P = (int)a->prompt_len, G = a->max_tokens_set ? (int)a->max_tokens : 64;
    if (P + G > m.dims.max_pos) {
        kv_fail(&err, KV_EINVAL, "--prompt-len %d + %d decode steps exceed the context of %d", P, G,
                m.dims.max_pos);
        goto fail;
    }
    prompt = malloc(sizeof *prompt * (size_t)(P + G));
    if (!prompt || kv_state_init(&s, &b, &m, P + G, (int)a->batch, cache_dtype(a, &m), &err)) {
        if (!prompt) kv_fail(&err, KV_ENOMEM, "out of memory");
        goto fail;
    }
    uint64_t x = 12345; /* fixed pseudo-random prompt: ids in [3, vocab) */
    for (int i = 0; i < P + G; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = m.dims.vocab > 3 ? 3 + (int32_t)((x >> 33) % (uint64_t)(m.dims.vocab - 3)) : 0;
    }
    double best_prefill = 1e30, best_decode = 1e30;
    const kv_forward_opts fo = {.logits = KV_LOGITS_LAST, .prefill = a->prefill};
    /* bytes one decode step reads: the weights, and every layer's K and V rows of the positions
     * it sees (P + 1 .. P + G, on average P + (G + 1) / 2; at most W with a sliding window) */
    const double seen = P + (G + 1) / 2.0;
    double kv_read = 0.0;
    for (int i = 0; i < m.dims.n_layers; i++) {
        const int w = m.cfg.layer_window[i];
        kv_read += 2.0 * m.dims.kv_dim * (double)s.cache.elem * (w > 0 && w < seen ? w : seen);
    }
    const double step_read = (double)m.step_bytes + kv_read;
    /* CPU baselines of the same run: a read loop (best of 512 MiB passes before and after the
     * timings) and a large F32 GEMM; and, paired with each repeat, the read loop over as many
     * bytes as its decode steps read, just before them (bandwidth that comes and goes on a
     * shared machine then meets both alike) */
    const int cpu = b.device == KV_DEVICE_CPU;
    double read_gbps = 0, gemm_gflops = 0;
    const int nearest_sweeps = (int)(G * step_read / (double)BENCH_READ_BYTES + 0.5);
    const int sweeps = nearest_sweeps > 0 ? nearest_sweeps : 1;
    paired_loop = calloc((size_t)a->repeat, sizeof(double));
    paired_ratio = calloc((size_t)a->repeat, sizeof(double));
    step_gbps = calloc((size_t)a->repeat, sizeof(double));
    step_ratio = calloc((size_t)a->repeat, sizeof(double));
    if (!paired_loop || !paired_ratio || !step_gbps || !step_ratio) {
        kv_fail(&err, KV_ENOMEM, "out of memory");
        goto fail;
    }
    if (cpu && (kv_read_loop_init(&rl, BENCH_READ_BYTES, &err) ||
                kv_gemm_gflops(&gemm_gflops, BENCH_GEMM_N, 3, &err)))
        goto fail;
    if (cpu) read_gbps = kv_read_loop_best(rl, 3);
    /* and the read loop over the very bytes a decode step reads (its weights, its K/V rows at
     * the mid context), G sweeps just before each repeat's decode: the same pages, so where
     * memory lands (huge pages or not, in the VM's host) meets both alike */
    int n_spans = 0;
    if (cpu && !(spans = step_spans(&m, &s, (int)seen, &n_spans))) {
        kv_fail(&err, KV_ENOMEM, "out of memory");
        goto fail;
    }
    if (cpu && kv_read_loop_init_spans(&step_loop, spans, n_spans, &err)) goto fail;
    free(spans); /* the loop keeps its own chunks */
    spans = NULL;
    /* decode from context 1 (a 1-token prompt, then the same G steps) is timed in every repeat
     * next to the main case, so the context ratio pairs timings of one run, under the same
     * machine load; with P = 1 the main case is that case */
    double best_start = 1e30, prefill_1 = 1e30;
    for (long r = 0; r < a->repeat; r++) {
        double decode_s = 0;
        if (P > 1 && bench_pass(&s, prompt, 1, G, &fo, &prefill_1, &best_start, NULL, &err))
            goto fail;
        if (cpu) paired_loop[r] = kv_read_loop_run(rl, sweeps);
        if (cpu) step_gbps[r] = kv_read_loop_run(step_loop, G);
        if (bench_pass(&s, prompt, P, G, &fo, &best_prefill, &best_decode, &decode_s, &err))
            goto fail;
        const double run_gbps = decode_s > 0 ? step_read * G / decode_s / 1e9 : 0.0;
        if (cpu && paired_loop[r] > 0) paired_ratio[r] = run_gbps / paired_loop[r];
        if (cpu && step_gbps[r] > 0) step_ratio[r] = run_gbps / step_gbps[r];
    }
    if (cpu) {
        const double after = kv_read_loop_best(rl, 3);
        if (after > read_gbps) read_gbps = after;
    }
    const double paired_gbps = cpu ? median(paired_loop, (int)a->repeat) : 0.0;
    const double paired = cpu ? median(paired_ratio, (int)a->repeat) : 0.0;
    const double step_loop_gbps = cpu ? median(step_gbps, (int)a->repeat) : 0.0;
    const double step_loop_ratio = cpu ? median(step_ratio, (int)a->repeat) : 0.0;
    const double prefill_tps = P / best_prefill, decode_tps = G / best_decode;
    const double start_tps = G / (P > 1 ? best_start : best_decode);
    const double prefill_tflops = kv_model_prefill_flops(&m, P) / best_prefill / 1e12;
    const size_t per_token = s.cache.bytes / (size_t)s.max_seq;
    const double decode_gbps = step_read * decode_tps / 1e9, prefill_gflops = prefill_tflops * 1e3;
    /* the matrix-vector variant a CPU decode step runs for the held weights (gemv.h) */
    const char *decode_kernel = cpu ? kv_gemv_isa_name(kv_gemv_isa_for(m.mat_type)) : "cuda";
    if (a->json)
        printf("{\"model\": \"%s\", \"kv_map\": \"%s\", \"device\": \"%s\", \"threads\": %d, "
               "\"blas_core\": \"%s\", \"decode_kernel\": \"%s\", \"prompt_tokens\": %d, "
               "\"decode_tokens\": %d, \"prefill_tokens_per_s\": %.2f, \"decode_tokens_per_s\": "
               "%.2f, \"kv_cache_dtype\": \"%s\", \"kv_cache_bytes\": %zu, "
               "\"kv_cache_bytes_per_token\": %zu, "
               "\"weight_bytes_per_token\": %zu, \"decode_weight_gb_per_s\": %.3f, "
               "\"prefill_model_tflop_per_s\": %.4f, \"weight_dtype\": \"%s\", "
               "\"decode_bytes_per_token\": %.0f, \"decode_gb_per_s\": %.3f, "
               "\"read_loop_gb_per_s\": %.3f, \"decode_read_loop_ratio\": %.4f, "
               "\"prefill_gflop_per_s\": %.3f, \"gemm_gflop_per_s\": %.3f, "
               "\"prefill_gemm_ratio\": %.4f, \"decode_at_1_tokens_per_s\": %.2f, "
               "\"decode_context_ratio\": %.4f, \"read_loop_paired_gb_per_s\": %.3f, "
               "\"decode_read_loop_paired_ratio\": %.4f, \"step_read_loop_gb_per_s\": %.3f, "
               "\"decode_step_read_loop_ratio\": %.4f}\n",
               a->model_dir, m.cfg.map.name, b.name, kv_kernels_threads(), openblas_get_corename(),
               decode_kernel, P, G, prefill_tps, decode_tps, kv_dtype_name(s.cache.dtype),
               s.cache.bytes, per_token, m.step_bytes, m.step_bytes * decode_tps / 1e9,
               prefill_tflops, kv_dtype_name(m.mat_type), step_read, decode_gbps, read_gbps,
               read_gbps > 0 ? decode_gbps / read_gbps : 0.0, prefill_gflops, gemm_gflops,
               gemm_gflops > 0 ? prefill_gflops / gemm_gflops : 0.0, start_tps,
               decode_tps / start_tps, paired_gbps, paired, step_loop_gbps, step_loop_ratio);
    else
        printf("%s (%s, %s, OpenBLAS %s, decode kernel %s): prefill %d tokens %.1f tok/s (%.3g "
               "model TFLOP/s); "
               "decode %d tokens %.1f tok/s "
               "(%.2f GB/s of weights), from context 1 %.1f tok/s (ratio %.2f); KV cache %s %zu "
               "bytes (%zu per token)\n",
               a->model_dir, m.cfg.map.name, b.name, openblas_get_corename(), decode_kernel, P,
               prefill_tps, prefill_tflops, G, decode_tps, m.step_bytes * decode_tps / 1e9,
               start_tps, decode_tps / start_tps, kv_dtype_name(s.cache.dtype), s.cache.bytes,
               per_token);
    if (!a->json && cpu)
        printf("  decode reads %.0f bytes/token: %.2f GB/s = %.2f x the read loop (%.2f GB/s); "
               "prefill %.1f GFLOP/s = %.2f x a %d^3 GEMM (%.1f GFLOP/s)\n",
               step_read, decode_gbps, read_gbps > 0 ? decode_gbps / read_gbps : 0.0, read_gbps,
               prefill_gflops, gemm_gflops > 0 ? prefill_gflops / gemm_gflops : 0.0, BENCH_GEMM_N,
               gemm_gflops);
    if (!a->json && cpu)
        printf("  paired: the read loop over each repeat's decode bytes just before its decode "
               "steps, %.2f GB/s (median); decode over it %.2f (median of %ld)\n",
               paired_gbps, paired, a->repeat);
    if (!a->json && cpu)
        printf("  step loop: the read loop over the bytes a decode step reads (its weights and K/V "
               "rows), G sweeps just before its decode steps, %.2f GB/s (median); decode over it "
               "%.2f (median of %ld)\n",
               step_loop_gbps, step_loop_ratio, a->repeat);
    status = 0;
fail:
    if (status) cli_fail(TOOL, &err);
    kv_read_loop_free(rl);
    kv_read_loop_free(step_loop);
    free(spans);
    free(paired_loop);
    free(paired_ratio);
    free(step_gbps);
    free(step_ratio);
    free(prompt);
    if (s.model) kv_state_free(&s);
    kv_model_free(&m);
    kv_backend_free(&b);
    return status;
}

/* ---- --logits-out ------------------------------------------------------------------------- */

/* "1,2,3" -> ids (malloc'd) */
static int parse_ids(const char *s, int **out, int *n_out) {
    int cap = 16, n = 0;
    int *ids = malloc(sizeof *ids * (size_t)cap);
    if (!ids) return -1;
    const char *p = s;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char num[32];
        long v;
        if (len == 0 || len >= sizeof num) break;
        memcpy(num, p, len);
        num[len] = 0;
        if (cli_parse_int(num, 0, 0x7fffffff, &v)) break;
        if (n == cap) {
            int *q = realloc(ids, sizeof *ids * (size_t)(cap *= 2));
            if (!q) break;
            ids = q;
        }
        ids[n++] = (int)v;
        if (!comma) {
            *out = ids;
            *n_out = n;
            return 0;
        }
        p = comma + 1;
    }
    free(ids);
    return -1;
}

static int run_logits(const run_args *a) {
    kv_error err = {0};
    kv_backend b;
    kv_model m;
    kv_tokenizer *tk = NULL;
    kv_state s = {0};
    int *ids = NULL, n = 0, status = EXIT_FAIL;
    float *logits = NULL;
    if (open_model(a, &b, &m, &err)) return cli_fail(TOOL, &err);
    if (a->logits_ids) {
        if (parse_ids(a->logits_ids, &ids, &n)) {
            kv_fail(&err, KV_EINVAL, "--tokens '%s': expected comma-separated ids", a->logits_ids);
            goto fail;
        }
    } else {
        const int bos = m.cfg.bos_token_id;
        if (load_tokenizer(a->model_dir, &m, &tk, &err) ||
            kv_tokenizer_encode(tk, a->logits_text, strlen(a->logits_text), bos >= 0, &ids, &n,
                                &err))
            goto fail;
        if (bos >= 0) ids[0] = bos;
    }
    if (n < 1 || n > m.dims.max_pos) {
        kv_fail(&err, KV_EINVAL, "%d tokens: the model takes 1..%d", n, m.dims.max_pos);
        goto fail;
    }
    for (int i = 0; i < n; i++)
        if (ids[i] >= m.dims.vocab) {
            kv_fail(&err, KV_EINVAL, "token %d at position %d is outside the vocabulary of %d",
                    ids[i], i, m.dims.vocab);
            goto fail;
        }
    logits = malloc(sizeof *logits * (size_t)n * (size_t)m.dims.vocab);
    if (!logits) {
        kv_fail(&err, KV_ENOMEM, "out of memory for %d x %d logits", n, m.dims.vocab);
        goto fail;
    }
    const kv_forward_opts fo = {.logits = KV_LOGITS_ALL, .prefill = a->prefill};
    if (kv_state_init(&s, &b, &m, n, (int)a->batch, cache_dtype(a, &m), &err) ||
        kv_forward(&s, ids, n, &fo, logits, &err))
        goto fail;
    const st_spec specs[2] = {
        {.name = "logits", .dtype = KV_F32, .n_dims = 2, .shape = {n, m.dims.vocab}},
        {.name = "tokens", .dtype = KV_I32, .n_dims = 1, .shape = {n}}};
    const void *data[2] = {logits, ids};
    const char *meta[] = {"format", "pt", "producer", "kvrun", "kv_map", m.cfg.map.name};
    if (st_write_file(a->logits_out, specs, data, 2, meta, 3, &err)) goto fail;
    fprintf(stderr, "kvrun: wrote logits [%d, %d] to %s\n", n, m.dims.vocab, a->logits_out);
    status = 0;
fail:
    if (status) cli_fail(TOOL, &err);
    free(ids);
    free(logits);
    if (s.model) kv_state_free(&s);
    kv_tokenizer_free(tk);
    kv_model_free(&m);
    kv_backend_free(&b);
    return status;
}

/* ---- options ------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    enum {
        O_PROMPT = 256,
        O_PPL,
        O_BENCH,
        O_LOGITS,
        O_TOKENIZE,
        O_TEMP,
        O_TOPP,
        O_SEED,
        O_CTX,
        O_WINDOWS,
        O_PLEN,
        O_REPEAT,
        O_TEXT,
        O_TOKENS,
        O_THREADS,
        O_PREFILL,
        O_BATCH,
        O_JSON,
        O_VERSION,
        O_KV_DTYPE,
        O_DEVICE,
        O_MAX_MEMORY
    };
    static const struct option opts[] = {{"prompt", 1, 0, O_PROMPT},
                                         {"ppl", 1, 0, O_PPL},
                                         {"bench", 0, 0, O_BENCH},
                                         {"logits-out", 1, 0, O_LOGITS},
                                         {"tokenize", 1, 0, O_TOKENIZE},
                                         {"max-tokens", 1, 0, 'n'},
                                         {"temperature", 1, 0, O_TEMP},
                                         {"top-p", 1, 0, O_TOPP},
                                         {"seed", 1, 0, O_SEED},
                                         {"ctx", 1, 0, O_CTX},
                                         {"max-windows", 1, 0, O_WINDOWS},
                                         {"prompt-len", 1, 0, O_PLEN},
                                         {"repeat", 1, 0, O_REPEAT},
                                         {"text", 1, 0, O_TEXT},
                                         {"tokens", 1, 0, O_TOKENS},
                                         {"threads", 1, 0, O_THREADS},
                                         {"prefill", 1, 0, O_PREFILL},
                                         {"batch", 1, 0, O_BATCH},
                                         {"json", 0, 0, O_JSON},
                                         {"help", 0, 0, 'h'},
                                         {"kv-dtype", 1, 0, O_KV_DTYPE},
                                         {"device", 1, 0, O_DEVICE},
                                         {"version", 0, 0, O_VERSION},
                                         {"max-memory", 1, 0, O_MAX_MEMORY},
                                         {0, 0, 0, 0}};
    run_args a = {.temperature = 1.0,
                  .top_p = 0.9,
                  .prompt_len = 128,
                  .repeat = 3,
                  .batch = 512,
                  .prefill = {KV_PREFILL_ITERATIVE, KV_PREFILL_DEFAULT_PASSES},
                  .kv_dtype = KV_DTYPE_COUNT,
                  .device = "cpu"};
    int c, n_modes = 0;
    const char *max_memory = NULL;
    long v;
    double d;
    kv_error err = {0};
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hn:", opts, NULL)) != -1) {
        switch (c) {
        case 'h': usage(); return 0;
        case O_VERSION: cli_version(TOOL); return 0;
        case O_PROMPT:
            a.mode = MODE_PROMPT;
            a.text = optarg;
            n_modes++;
            break;
        case O_PPL:
            a.mode = MODE_PPL;
            a.ppl_file = optarg;
            n_modes++;
            break;
        case O_BENCH:
            a.mode = MODE_BENCH;
            n_modes++;
            break;
        case O_LOGITS:
            a.mode = MODE_LOGITS;
            a.logits_out = optarg;
            n_modes++;
            break;
        case O_TOKENIZE:
            a.mode = MODE_TOKENIZE;
            a.text = optarg;
            n_modes++;
            break;
        case O_TEXT: a.logits_text = optarg; break;
        case O_TOKENS: a.logits_ids = optarg; break;
        case O_JSON: a.json = 1; break;
        case 'n':
            if (cli_parse_int(optarg, 0, 1L << 30, &a.max_tokens))
                return cli_usage_error(TOOL, "bad --max-tokens '%s'", optarg);
            a.max_tokens_set = 1;
            break;
        case O_TEMP:
            if (cli_parse_double(optarg, &d) || d < 0)
                return cli_usage_error(TOOL, "bad --temperature '%s' (>= 0)", optarg);
            a.temperature = d;
            break;
        case O_TOPP:
            if (cli_parse_double(optarg, &d) || d < 0 || d > 1)
                return cli_usage_error(TOOL, "bad --top-p '%s' (0..1)", optarg);
            a.top_p = d;
            break;
        case O_SEED:
            if (cli_parse_int(optarg, 0, 0x7fffffffffffffffL, &v))
                return cli_usage_error(TOOL, "bad --seed '%s'", optarg);
            a.seed = (unsigned long)v;
            a.seed_set = 1;
            break;
        case O_CTX:
            if (cli_parse_int(optarg, 2, 1L << 24, &a.ctx))
                return cli_usage_error(TOOL, "bad --ctx '%s' (>= 2)", optarg);
            break;
        case O_WINDOWS:
            if (cli_parse_int(optarg, 1, 1L << 30, &a.max_windows))
                return cli_usage_error(TOOL, "bad --max-windows '%s'", optarg);
            break;
        case O_PLEN:
            if (cli_parse_int(optarg, 1, 1L << 24, &a.prompt_len))
                return cli_usage_error(TOOL, "bad --prompt-len '%s'", optarg);
            break;
        case O_REPEAT:
            if (cli_parse_int(optarg, 1, 1000, &a.repeat))
                return cli_usage_error(TOOL, "bad --repeat '%s'", optarg);
            break;
        case O_THREADS:
            if (cli_parse_int(optarg, 1, 256, &a.threads))
                return cli_usage_error(TOOL, "bad --threads '%s' (1..256)", optarg);
            break;
        case O_BATCH:
            if (cli_parse_int(optarg, 1, 1L << 20, &a.batch))
                return cli_usage_error(TOOL, "bad --batch '%s'", optarg);
            break;
        case O_PREFILL:
            if (kv_prefill_parse(&a.prefill, optarg, &err))
                return cli_usage_error(TOOL, "--prefill: %s", err.msg);
            break;
        case O_KV_DTYPE:
            if (cli_parse_float_dtype(optarg, &a.kv_dtype) || a.kv_dtype == KV_F16)
                return cli_usage_error(TOOL, "bad --kv-dtype '%s' (f32 or bf16)", optarg);
            break;
        case O_DEVICE: {
            kv_device dev;
            if (kv_device_parse(&dev, optarg, &err))
                return cli_usage_error(TOOL, "--device: %s", err.msg);
            a.device = optarg;
            break;
        }
        case O_MAX_MEMORY: max_memory = optarg; break;
        default: return cli_bad_option(TOOL, c, argv);
        }
    }
    if (cli_memory_budget(TOOL, max_memory)) return EXIT_USAGE;
    if (optind != argc - 1) return cli_usage_error(TOOL, "expected one MODEL directory");
    if (n_modes != 1)
        return cli_usage_error(TOOL, "give exactly one of --prompt, --ppl, --bench, --logits-out, "
                                     "--tokenize");
    if (a.mode == MODE_LOGITS && !a.logits_text == !a.logits_ids)
        return cli_usage_error(TOOL, "--logits-out needs exactly one of --text and --tokens");
    if (a.mode != MODE_LOGITS && (a.logits_text || a.logits_ids))
        return cli_usage_error(TOOL, "--text and --tokens go with --logits-out");
    if (!(a.model_dir = cli_model_arg(TOOL, argv[optind], 1))) return EXIT_FAIL;
    int rc;
    switch (a.mode) {
    case MODE_PROMPT: rc = run_prompt(&a); break;
    case MODE_PPL: rc = run_ppl(&a); break;
    case MODE_BENCH: rc = run_bench(&a); break;
    case MODE_LOGITS: rc = run_logits(&a); break;
    case MODE_TOKENIZE: rc = run_tokenize(&a); break;
    default: return EXIT_USAGE;
    }
    kv_bundle_close(g_bundle); /* after the model that read from it is freed */
    return rc;
}
