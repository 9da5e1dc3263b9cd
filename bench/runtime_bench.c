/* Runtime speed, as ratios against baselines measured in the same run:
 *  - memory bandwidth: a plain read loop over a 1 GiB buffer (1 thread and all threads);
 *  - stories260K (../shared): prefill and decode tokens/s;
 *  - a synthetic model of stories110M's shape (kvsynth's "stories110m" preset: L=12, H=768,
 *    12 heads, FFN 2048, vocab 32000, F32): decode tokens/s at batch 1 and the weight bytes it
 *    streams per second as a fraction of the read loop's bandwidth (goal >= 0.60), prefill
 *    tokens/s at 1024 tokens;
 *  - SwiftKV l = L/2 (g = 1 and 2) built from the same weights: prefill time at a 1024-token
 *    prompt over the original's (goal <= 0.55);
 *  - decode tokens/s after a 960-token prompt with a BF16 KV cache over the F32 cache;
 *  - KV-cache bytes of every model against METHODS.md's formula (must be equal).
 * Usage: runtime_bench [--threads N] [--repeat N] [--keep DIR (reuse/keep the 110M model)]
 *                      [--map-weights (weights used in the file's mapping, not copied)] */
#include <cblas.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "base/fileio.h"
#include "formats/hfconfig.h"
#include "transform/synth/synth.h"
#include "runtime/forward.h"

#define STORIES260K  "../shared/models/stories260K"
#define PREFILL_LONG 1024
#define LONG_CONTEXT (PREFILL_LONG - 64) /* prompt before 64 decode steps at a long context */

static int repeat = 3;
/* weights copied into the arena (kv_model_load's default; the SwiftKV overlays too, so every
 * model streams from the same kind of memory); --map-weights: used in the file's mapping */
static kv_model_opts load_opts = {.copy_weights = 1};
static int failures;

static double minimum(double a, double b) { return a < b ? a : b; }
static double maximum(double a, double b) { return a > b ? a : b; }

/* ---- baseline: read bandwidth --------------------------------------------------------------- */

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} read_job;

/* 32-byte vectors, four independent sums: the loop is limited by memory, not by an add chain */
typedef uint64_t u64x4 __attribute__((vector_size(32)));

static void *read_part(void *arg) {
    read_job *j = arg;
    const u64x4 *p = (const u64x4 *)j->p;
    const size_t blocks = j->n / 16;
    u64x4 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (size_t i = 0; i < blocks; i++) {
        s0 += p[4 * i];
        s1 += p[4 * i + 1];
        s2 += p[4 * i + 2];
        s3 += p[4 * i + 3];
    }
    const u64x4 s = s0 + s1 + s2 + s3;
    uint64_t sum = s[0] + s[1] + s[2] + s[3];
    for (size_t i = blocks * 16; i < j->n; i++) sum += j->p[i];
    j->sum = sum;
    return NULL;
}

/* GB/s of one pass over buf with n_threads readers (parts start on 64-byte boundaries) */
static double read_pass(const uint64_t *buf, size_t n, int n_threads) {
    static uint64_t sink;
    pthread_t tid[64];
    read_job jobs[64];
    if (n_threads > 64) n_threads = 64;
    const double t = bench_seconds();
    for (int k = 0; k < n_threads; k++) {
        const size_t a = (n * k / n_threads) & ~(size_t)7,
                     b = (n * (k + 1) / n_threads) & ~(size_t)7;
        jobs[k] = (read_job){buf + a, (k == n_threads - 1 ? n : b) - a, 0};
        if (k) pthread_create(&tid[k], NULL, read_part, &jobs[k]);
    }
    read_part(&jobs[0]);
    for (int k = 1; k < n_threads; k++) pthread_join(tid[k], NULL);
    const double dt = bench_seconds() - t;
    for (int k = 0; k < n_threads; k++) sink += jobs[k].sum;
    return (double)n * sizeof(uint64_t) / dt / 1e9;
}

/* the baseline: best read bandwidth seen, with 1 thread and with all, sampled at the start and
 * again between the decode runs (so a burst of load elsewhere does not lower it) */
static struct {
    uint64_t *buf;
    size_t n;
    int threads;
    double best1, bestn;
} bw;

static void bandwidth_sample(int passes) {
    for (int r = 0; r < passes; r++) {
        bw.best1 = maximum(bw.best1, read_pass(bw.buf, bw.n, 1));
        bw.bestn = maximum(bw.bestn, read_pass(bw.buf, bw.n, bw.threads));
    }
}

static double bandwidth(void) { return maximum(bw.best1, bw.bestn); }

/* ---- model timings ---------------------------------------------------------------------------- */

/* the CPU backend every state runs on (its ops follow kv_kernels_set_threads as it changes) */
static kv_backend cpu;

/* a model with its state and a fixed pseudo-random prompt */
typedef struct {
    const kv_model *m;
    kv_forward_opts opts; /* prefill options (defaults: last-token logits, skips on) */
    kv_state s;
    int32_t *ids; /* [max_seq] ids in [3, vocab) */
    size_t cache_formula; /* METHODS.md bytes for max_seq positions */
} bench_model;

/* KV-cache bytes by METHODS.md: 2 * (KV layers) * nkv * hd * elem per position; SwiftKV l + (L-l)/g */
static size_t formula_bytes(const kv_model *m, int max_seq, kv_dtype cache) {
    int slots = 0;
    if (m->cfg.map.kind == KVMAP_SWIFTKV) {
        slots =
            m->cfg.map.swiftkv_l + (m->dims.n_layers - m->cfg.map.swiftkv_l) / m->cfg.map.swiftkv_g;
    } else {
        for (int i = 0; i < m->dims.n_layers; i++) slots += m->cfg.map.kv_layer_of[i] == i;
    }
    return (size_t)2 * slots * m->dims.n_kv_heads * m->dims.head_dim * kv_dtype_size(cache) *
           (size_t)max_seq;
}

static int bm_open(bench_model *b, const kv_model *m, int max_seq, kv_dtype cache) {
    kv_error err = {0};
    *b = (bench_model){.m = m, .cache_formula = formula_bytes(m, max_seq, cache)};
    b->ids = malloc(sizeof *b->ids * (size_t)max_seq);
    if (!b->ids || kv_state_init(&b->s, &cpu, m, max_seq, max_seq, cache, &err)) {
        fprintf(stderr, "runtime_bench: %s\n", b->ids ? err.msg : "out of memory");
        free(b->ids);
        return -1;
    }
    uint64_t x = 12345;
    for (int i = 0; i < max_seq; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        b->ids[i] = 3 + (int32_t)((x >> 33) % (uint64_t)(m->dims.vocab - 3));
    }
    return 0;
}

static void bm_close(bench_model *b) {
    kv_state_free(&b->s);
    free(b->ids);
}

/* seconds for a prefill of n tokens (last-token logits, default options), or -1 */
static double bm_prefill(bench_model *b, int n) {
    kv_error err = {0};
    kv_state_reset(&b->s);
    const double t0 = bench_seconds();
    if (kv_forward(&b->s, b->ids, n, &b->opts, NULL, &err)) {
        fprintf(stderr, "runtime_bench: forward: %s\n", err.msg);
        return -1.0;
    }
    return bench_seconds() - t0;
}

/* decode tokens/s over `steps` steps after a prompt of n tokens, or -1 */
static double bm_decode(bench_model *b, int n, int steps) {
    kv_error err = {0};
    if (bm_prefill(b, n) < 0) return -1.0;
    const double t0 = bench_seconds();
    for (int i = 0; i < steps; i++) {
        if (kv_forward(&b->s, b->ids + n + i, 1, NULL, NULL, &err)) {
            fprintf(stderr, "runtime_bench: decode: %s\n", err.msg);
            return -1.0;
        }
    }
    return steps / (bench_seconds() - t0);
}

static void report_cache(const char *what, const bench_model *b) {
    const int ok = b->s.cache.bytes == b->cache_formula;
    if (!ok) failures++;
    printf("  %-28s KV cache %zu bytes, formula %zu: %s\n", what, b->s.cache.bytes,
           b->cache_formula, ok ? "equal" : "DIFFERENT");
}

/* ---- SwiftKV from the original's tensors ------------------------------------------------------- */

/* SwiftKV (l, g) over an original checkpoint: norm_swiftkv = input_layernorm of layer l,
 * q_proj_swiftkv = q_proj, leaders' k/v_proj_swiftkv = their own k/v_proj (METHODS.md would
 * average the group; the timing does not depend on the values). No copies: views only. */
typedef struct {
    char names[3 * 1024 + 1][96];
    st_tensor items[3 * 1024 + 1];
    kv_tensor_table table;
    kv_tensor_source src;
} swift_overlay;

/* ck's tensor `from` under another name */
static int alias(st_tensor *out, char *name, const st_checkpoint *ck, const char *from) {
    const st_tensor *t = st_checkpoint_find(ck, from);
    if (!t) return -1;
    *out = *t;
    out->name = name;
    return 0;
}

static int swift_overlay_init(swift_overlay *o, const st_checkpoint *ck,
                              const kv_tensor_source *base, int L, int l, int g) {
    int n = 0;
    char from[96];
    snprintf(o->names[n], sizeof o->names[n], "model.norm_swiftkv.weight");
    snprintf(from, sizeof from, "model.layers.%d.input_layernorm.weight", l);
    if (alias(&o->items[n], o->names[n], ck, from)) return -1;
    n++;
    for (int j = l; j < L; j++) {
        static const char *proj[] = {"q", "k", "v"};
        for (int p = 0; p < 3; p++) {
            if (p && (j - l) % g) continue;
            snprintf(o->names[n], sizeof o->names[n],
                     "model.layers.%d.self_attn.%s_proj_swiftkv.weight", j, proj[p]);
            snprintf(from, sizeof from, "model.layers.%d.self_attn.%s_proj.weight", j, proj[p]);
            if (alias(&o->items[n], o->names[n], ck, from)) return -1;
            n++;
        }
    }
    o->table = (kv_tensor_table){
        .items = o->items, .n_items = n, .base = base, .label = "swiftkv overlay"};
    kv_tensor_source_table(&o->src, &o->table);
    return 0;
}

/* ---- main ----------------------------------------------------------------------------------- */

static void run_stories260k(void) {
    kv_error err = {0};
    kv_model m;
    if (!kv_path_exists(STORIES260K "/model.safetensors")) {
        printf("stories260K: fixtures not found (../shared), skipped\n");
        return;
    }
    if (kv_model_load(&m, STORIES260K, NULL, &err)) {
        fprintf(stderr, "runtime_bench: %s\n", err.msg);
        failures++;
        return;
    }
    bench_model b;
    const int threads = kv_kernels_threads();
    kv_kernels_set_threads(1); /* as kvrun runs a model this small by default */
    if (bm_open(&b, &m, 128 + 256, KV_F32) == 0) {
        double prefill = 1e30, decode = 0.0;
        for (int r = 0; r <= repeat; r++) { /* the first run warms up */
            const double p = bm_prefill(&b, 128), d = bm_decode(&b, 128, 256);
            if (p < 0 || d < 0) failures++;
            if (r > 0) prefill = minimum(prefill, p), decode = maximum(decode, d);
        }
        printf("stories260K (1 thread): prefill 128 tokens %.0f tok/s; decode %.0f tok/s\n",
               128 / prefill, decode);
        report_cache("stories260K", &b);
        bm_close(&b);
    } else {
        failures++;
    }
    kv_kernels_set_threads(threads);
    kv_model_free(&m);
}

static int write_110m(const char *dir) {
    synth_spec spec;
    kv_error err = {0};
    synth_preset(&spec, "stories110m");
    const double t0 = bench_seconds();
    if (synth_write(dir, &spec, &err)) {
        fprintf(stderr, "runtime_bench: %s\n", err.msg);
        return -1;
    }
    printf("110M-shape synthetic model written to %s in %.1f s\n", dir, bench_seconds() - t0);
    return 0;
}

/* original and SwiftKV l = L/2 (g = 1, 2) of the 110M shape; runs interleaved, best of each, so
 * that load from other processes hits them alike */
static void run_110m(const char *dir) {
    kv_error err = {0};
    kv_model m, sm[2];
    char path[4096];
    hf_config cfg;
    if (kv_model_load(&m, dir, &load_opts, &err) ||
        kv_join(path, sizeof path, dir, "config.json", &err) || hf_config_load(&cfg, path, &err)) {
        fprintf(stderr, "runtime_bench: %s\n", err.msg);
        failures++;
        return;
    }
    kv_tensor_source base;
    kv_tensor_source_checkpoint(&base, m.ckpt);
    const int L = m.dims.n_layers, l = L / 2, n_swift = 2;
    static swift_overlay ov[2];
    for (int g = 1; g <= n_swift; g++) {
        hf_config sc = cfg;
        if (kvmap_swiftkv(&sc.map, L, l, g, &err) ||
            swift_overlay_init(&ov[g - 1], m.ckpt, &base, L, l, g) ||
            kv_model_from_source(&sm[g - 1], &sc, &ov[g - 1].src, &load_opts, &err)) {
            fprintf(stderr, "runtime_bench: swiftkv l=%d g=%d: %s\n", l, g, err.msg);
            failures++;
            kv_model_free(&m);
            return;
        }
    }
    /* b[0] original, b[1] b[2] SwiftKV g = 1, 2, b[3] original with every token through every
     * layer (no tail skip: how HF transformers or vLLM prefill), b[4] original, BF16 KV cache */
    enum { NB = 5 };
    bench_model b[NB];
    const int max_seq = PREFILL_LONG;
    int opened = 0;
    for (; opened < NB; opened++)
        if (bm_open(&b[opened], opened == 1 || opened == 2 ? &sm[opened - 1] : &m, max_seq,
                    opened == 4 ? KV_BF16 : KV_F32))
            break;
    if (opened == NB) {
        b[3].opts.no_tail_skip = 1;
        double prefill[NB] = {1e30, 1e30, 1e30, 1e30, 1e30}, decode = 0.0, long_decode[2] = {0, 0};
        for (int r = 0; r <= repeat; r++) { /* the first round warms up */
            bandwidth_sample(1);
            const double d = bm_decode(&b[0], 16, 64);
            if (d < 0) failures++;
            if (r > 0) decode = maximum(decode, d);
            for (int c = 0; c < 2; c++) { /* decode at a long context: F32 cache, BF16 cache */
                const double dl = bm_decode(&b[c ? 4 : 0], LONG_CONTEXT, 64);
                if (dl < 0) failures++;
                if (r > 0) long_decode[c] = maximum(long_decode[c], dl);
            }
            for (int k = 0; k < 4; k++) {
                const double p = bm_prefill(&b[k], PREFILL_LONG);
                if (p < 0) failures++;
                if (r > 0) prefill[k] = minimum(prefill[k], p);
            }
        }
        bandwidth_sample(1);
        const double gbs = (double)m.step_bytes * decode / 1e9, base = bandwidth();
        printf("110M shape (L=%d H=%d heads %d FFN %d vocab %d, F32%s, %d thread%s):\n",
               m.dims.n_layers, m.dims.hidden, m.dims.n_heads, m.dims.ffn, m.dims.vocab,
               load_opts.map_file ? " mapped" : " copied", kv_kernels_threads(),
               kv_kernels_threads() == 1 ? "" : "s");
        printf("  decode batch 1: %.1f tok/s x %.1f MB of weights per token = %.2f GB/s = %.2f of "
               "the read loop's %.2f GB/s (goal >= 0.60)\n",
               decode, m.step_bytes / 1e6, gbs, gbs / base, base);
        printf("  read loop, best over the run: %.2f GB/s with 1 thread, %.2f GB/s with %d\n",
               bw.best1, bw.bestn, bw.threads);
        printf("  prefill %d tokens: %.3f s = %.1f tok/s (every token through every layer: "
               "%.3f s)\n",
               PREFILL_LONG, prefill[0], PREFILL_LONG / prefill[0], prefill[3]);
        report_cache("original", &b[0]);
        printf("  decode after %d tokens: BF16 KV cache %.1f tok/s / F32 cache %.1f tok/s = %.2f "
               "(cache bytes %.2f)\n",
               LONG_CONTEXT, long_decode[1], long_decode[0], long_decode[1] / long_decode[0],
               (double)b[4].s.cache.bytes / (double)b[0].s.cache.bytes);
        report_cache("original, BF16 KV cache", &b[4]);
        for (int g = 1; g <= n_swift; g++) {
            printf(
                "  SwiftKV l=%d g=%d: prefill %d tokens %.3f s; / original = %.3f (goal <= 0.55); "
                "/ original without the tail skip = %.3f\n",
                l, g, PREFILL_LONG, prefill[g], prefill[g] / prefill[0], prefill[g] / prefill[3]);
            char what[48];
            snprintf(what, sizeof what, "SwiftKV l=%d g=%d", l, g);
            report_cache(what, &b[g]);
        }
    } else {
        failures++;
    }
    for (int k = 0; k < opened; k++) bm_close(&b[k]);
    for (int g = 0; g < n_swift; g++) kv_model_free(&sm[g]);
    kv_model_free(&m);
}

int main(int argc, char **argv) {
    const char *keep = NULL;
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keep") && i + 1 < argc) keep = argv[++i];
        else if (!strcmp(argv[i], "--map-weights")) load_opts = (kv_model_opts){.map_file = 1};
        else {
            fprintf(
                stderr,
                "usage: runtime_bench [--threads N] [--repeat N] [--keep DIR] [--map-weights]\n");
            return 2;
        }
    }
    if (repeat < 1) repeat = 1;
    if (threads > 0) kv_kernels_set_threads(threads);
    threads = kv_kernels_threads();
    kv_kernels_set_threads(threads);
    kv_error berr = {0};
    kv_backend_cpu_init(&cpu, threads, &berr); /* cannot fail */

    /* 1 GiB read loop */
    bw.n = ((size_t)1 << 30) / sizeof(uint64_t);
    bw.threads = threads;
    if (posix_memalign((void **)&bw.buf, 64, bw.n * sizeof *bw.buf)) {
        fprintf(stderr, "runtime_bench: cannot allocate 1 GiB\n");
        return 1;
    }
    for (size_t i = 0; i < bw.n; i++) bw.buf[i] = i;
    read_pass(bw.buf, bw.n, threads); /* warm-up */
    bandwidth_sample(5);
    printf("OpenBLAS core: %s (OPENBLAS_CORETYPE %s)\n", openblas_get_corename(),
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset");
    printf("read loop over 1 GiB: %.2f GB/s with 1 thread, %.2f GB/s with %d threads\n", bw.best1,
           bw.bestn, threads);

    run_stories260k();

    char dir[256];
    if (keep) {
        snprintf(dir, sizeof dir, "%s", keep);
        if (!kv_path_exists(dir) && write_110m(dir)) return 1;
    } else {
        snprintf(dir, sizeof dir, "/tmp/kvforge-bench-110m-XXXXXX");
        if (!mkdtemp(dir) || write_110m(dir)) return 1;
    }
    run_110m(dir);
    free(bw.buf);
    if (!keep) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "runtime_bench: could not remove %s\n", dir);
    }
    return failures ? 1 : 0;
}
