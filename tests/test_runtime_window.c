/* Sliding-window models in the runtime, on synthetic checkpoints (no fixtures):
 *   - a window no position reaches past gives the windowless model's logits bit for bit, and
 *     the KV cache is then the full one;
 *   - a longer prompt gives different logits; the KV cache of windowed slots is a ring of
 *     W + batch - 1 rows (bytes as kvmap_cache_bytes_windowed), and a ring run equals, bit for bit, the
 *     same passes over a full cache (the same model with a batch too large for a ring);
 *   - one pass, chunks of 3 and single decode steps agree (to rounding: different matmul
 *     shapes), F32 and BF16 caches;
 *   - a naive reference: in a one-layer model the last position's logits depend only on the
 *     last W tokens (the suffix run alone gives them, to rounding: RoPE is relative);
 *   - mixed layers (LCKV's 's' on some layers, a cross-layer map with an upward layer):
 *     sequential and iterative prefills run, rings only on slots no full layer reads. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "runtime/forward.h"
#include "tests/check.h"
#include "tests/rand.h"
#include "transform/synth/synth.h"

static kv_backend cpu;
static char tmp_root[64];

/* a tiny synthetic Mistral (window W; 0: null) of n_layers layers in tmp_root/NAME */
static const char *make_mistral(const char *name, int n_layers, int W) {
    static char dir[8][128];
    static int next;
    char *d = dir[next++ % 8];
    snprintf(d, sizeof dir[0], "%s/%s", tmp_root, name);
    synth_spec s;
    synth_preset(&s, "tiny");
    s.arch = SYNTH_MISTRAL;
    s.n_layers = n_layers;
    s.sliding_window = W;
    s.max_pos = 256;
    kv_error err = {0};
    CHECK(synth_write(d, &s, &err) == 0, "synth %s: %s", name, err.msg);
    return d;
}

typedef struct {
    kv_model m;
    kv_state s;
    int ok;
} runner;

static int open_runner(runner *r, const char *dir, int max_seq, int max_batch, kv_dtype cache) {
    kv_error err = {0};
    memset(r, 0, sizeof *r);
    int rc = kv_model_load(&r->m, dir, NULL, &err);
    CHECK(rc == 0, "load %s: %s", dir, err.msg);
    if (!rc && (rc = kv_state_init(&r->s, &cpu, &r->m, max_seq, max_batch, cache, &err))) {
        CHECK(0, "state %s: %s", dir, err.msg);
        kv_model_free(&r->m);
    }
    r->ok = !rc;
    return rc;
}

static void close_runner(runner *r) {
    if (!r->ok) return;
    kv_state_free(&r->s);
    kv_model_free(&r->m);
    r->ok = 0;
}

/* all-position logits [T, V] of tokens from an empty context, fed `chunk` tokens per
 * kv_forward call (0: all at once) */
static int run_logits(runner *r, const int32_t *tokens, int T, int chunk, kv_prefill_mode mode,
                      float *out) {
    kv_error err = {0};
    kv_state_reset(&r->s);
    kv_forward_opts o = {.logits = KV_LOGITS_ALL, .prefill = {.mode = mode}};
    const size_t V = (size_t)r->m.dims.vocab;
    if (chunk <= 0) chunk = T;
    for (int t = 0; t < T; t += chunk) {
        const int n = T - t < chunk ? T - t : chunk;
        int rc = kv_forward(&r->s, tokens + t, n, &o, out + (size_t)t * V, &err);
        CHECK(rc == 0, "forward: %s", err.msg);
        if (rc) return rc;
    }
    return 0;
}

static void make_tokens(int32_t *tok, int T, int V) {
    uint32_t x = 12345;
    for (int t = 0; t < T; t++) {
        x = x * 1664525u + 1013904223u;
        tok[t] = (int32_t)(3 + (x >> 8) % (uint32_t)(V - 3));
    }
}

static void test_short_prompt_and_ring(void) {
    const int W = 8, T = 40, V = 512;
    const char *win = make_mistral("w8", 4, W), *full = make_mistral("full", 4, 0);
    int32_t tok[40];
    make_tokens(tok, T, V);
    float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
    float *c = malloc(sizeof(float) * T * V);
    runner rw, rf;
    if (open_runner(&rw, win, 128, 4, KV_F32) || open_runner(&rf, full, 128, 4, KV_F32)) goto out;
    /* a ring of W + 4 - 1 rows per slot (4 slots, 4 kv heads of 8, F32, K and V) */
    CHECK(rw.s.cache.bytes == (size_t)4 * (W + 3) * 4 * 8 * 4 * 2 &&
              rw.s.cache.bytes == kvmap_cache_bytes_windowed(&rw.m.cfg.map, rw.m.cfg.layer_window,
                                                             4, 4, 8, 128, 4, NULL),
          "ring cache %zu bytes", rw.s.cache.bytes);
    CHECK(rf.s.cache.bytes == (size_t)4 * 128 * 4 * 8 * 4 * 2, "full cache %zu bytes",
          rf.s.cache.bytes);
    /* prompts of up to W tokens: the windowless bits (rows 0..W-1 of a longer prompt too) */
    run_logits(&rw, tok, W, 0, KV_PREFILL_ITERATIVE, a);
    run_logits(&rf, tok, W, 0, KV_PREFILL_ITERATIVE, b);
    CHECK(memcmp(a, b, sizeof(float) * W * V) == 0, "window %d, %d tokens != no window", W, W);
    run_logits(&rw, tok, T, 4, KV_PREFILL_ITERATIVE, a);
    run_logits(&rf, tok, T, 4, KV_PREFILL_ITERATIVE, b);
    CHECK(memcmp(a, b, sizeof(float) * W * V) == 0, "first %d positions != no window", W);
    CHECK(max_abs_diff(a + (size_t)W * V, b + (size_t)W * V, (size_t)(T - W) * V) > 1e-3,
          "positions past the window equal the windowless ones");
    close_runner(&rf);
    /* the same passes (4 tokens each) over a full cache: W + 64 - 1 rows would not be smaller
     * than a context of 64 */
    if (open_runner(&rf, win, 64, 64, KV_F32)) goto out;
    CHECK(rf.s.cache.bytes == (size_t)4 * 64 * 4 * 8 * 4 * 2, "batch 64: full cache");
    run_logits(&rf, tok, T, 4, KV_PREFILL_ITERATIVE, c);
    CHECK(memcmp(a, c, sizeof(float) * T * V) == 0, "ring cache != full cache, bit for bit");
    /* one pass, chunks of 3, decode steps: the same to rounding */
    run_logits(&rf, tok, T, 0, KV_PREFILL_ITERATIVE, c);
    CHECK(max_abs_diff(a, c, (size_t)T * V) < 1e-5, "one pass vs chunks of 4: %g",
          max_abs_diff(a, c, (size_t)T * V));
    run_logits(&rw, tok, T, 3, KV_PREFILL_ITERATIVE, c);
    CHECK(max_abs_diff(a, c, (size_t)T * V) < 1e-5, "chunks of 3 vs 4: %g",
          max_abs_diff(a, c, (size_t)T * V));
    run_logits(&rw, tok, T, 1, KV_PREFILL_ITERATIVE, c);
    CHECK(max_abs_diff(a, c, (size_t)T * V) < 1e-5, "decode steps vs chunks of 4: %g",
          max_abs_diff(a, c, (size_t)T * V));
    close_runner(&rw);
    /* BF16 cache: a ring too, close to F32 */
    if (open_runner(&rw, win, 128, 4, KV_BF16)) goto out;
    CHECK(rw.s.cache.bytes == (size_t)4 * (W + 3) * 4 * 8 * 2 * 2, "BF16 ring %zu bytes",
          rw.s.cache.bytes);
    run_logits(&rw, tok, T, 4, KV_PREFILL_ITERATIVE, c);
    CHECK(max_abs_diff(a, c, (size_t)T * V) < 2e-2, "BF16 ring vs F32: %g",
          max_abs_diff(a, c, (size_t)T * V));
out:
    close_runner(&rw);
    close_runner(&rf);
    free(a), free(b), free(c);
}

/* one layer, window W: the last position reads only the last W tokens, so its logits are the
 * windowless model's on those W tokens alone (and not on W + 1) */
static void test_naive_reference(void) {
    const int W = 5, T = 23, V = 512;
    const char *one = make_mistral("one", 1, W), *plain = make_mistral("one-full", 1, 0);
    int32_t tok[23];
    make_tokens(tok, T, V);
    float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
    runner r, f;
    if (!open_runner(&r, one, 64, 8, KV_F32)) {
        if (!open_runner(&f, plain, 64, 8, KV_F32)) {
            run_logits(&r, tok, T, 0, KV_PREFILL_ITERATIVE, a);
            for (int n = W; n <= W + 1; n++) {
                run_logits(&f, tok + T - n, n, 0, KV_PREFILL_ITERATIVE, b);
                const double d = max_abs_diff(a + (size_t)(T - 1) * V, b + (size_t)(n - 1) * V, V);
                if (n == W) CHECK(d < 1e-4, "last row vs the last %d tokens alone: %g", n, d);
                else CHECK(d > 1e-3, "the last %d tokens (W + 1) give the same row: %g", n, d);
            }
            close_runner(&f);
        }
        close_runner(&r);
    }
    free(a), free(b);
}

/* config.json of DIR rewritten as LCKV's: layer_types LT, sliding_window W */
static void to_lckv(const char *dir, const char *lt, int W) {
    char path[256], *text = NULL, *out = NULL;
    size_t n;
    kv_error err = {0};
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(kv_read_file(path, &text, &n, 1 << 20, &err) == 0, "%s", err.msg);
    if (!text) return;
    const char *from = strstr(text, "\"model_type\"");
    const char *rest = from ? strchr(from, '\n') : NULL;
    const char *sw = strstr(text, "\"sliding_window\"");
    if (!rest || !sw) {
        CHECK(0, "config layout");
        free(text);
        return;
    }
    out = malloc(n + 512);
    /* drop the Mistral sliding_window line, put LCKV's fields after model_type */
    size_t o = 0;
    const char *arch = strstr(text, "MistralForCausalLM");
    for (const char *p = text; *p;) {
        if (p == arch) {
            o += (size_t)sprintf(out + o, "LCKVLlamaForCausalLM");
            p += strlen("MistralForCausalLM");
        } else if (p == from) {
            o += (size_t)sprintf(out + o,
                                 "\"model_type\": \"lckv-llama\",\n  \"layer_types\": \"%s\",\n"
                                 "  \"sliding_window\": %d,",
                                 lt, W);
            p = rest;
        } else if (p == sw) {
            p = strchr(p, '\n') + 1;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    CHECK(kv_write_file_atomic(path, out, o, &err) == 0, "write %s: %s", path, err.msg);
    free(text), free(out);
}

static void test_mixed_layers(void) {
    const int W = 6, T = 30, V = 512;
    const char *dir = make_mistral("lckv", 4, 0);
    to_lckv(dir, "0_1s_3s_3s", W); /* layer 1 upward into 3: strict mask, iterative prefill */
    int32_t tok[30];
    make_tokens(tok, T, V);
    float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
    runner r;
    if (!open_runner(&r, dir, 128, 4, KV_F32)) {
        CHECK(r.m.cfg.layer_window[0] == 0 && r.m.cfg.layer_window[1] == W &&
                  r.m.cfg.layer_window[3] == W,
              "LCKV windows read");
        /* slots: layer 0 (full), layer 3 (read by 1, 2, 3: all windowed: a ring) */
        CHECK(r.s.cache.ring[0] == 0 && r.s.cache.ring[1] == W + 3, "rings %d %d",
              r.s.cache.ring[0], r.s.cache.ring[1]);
        CHECK(run_logits(&r, tok, T, 1, KV_PREFILL_SEQUENTIAL, a) == 0, "sequential");
        CHECK(run_logits(&r, tok, T, 4, KV_PREFILL_ITERATIVE, b) == 0, "iterative");
        for (size_t i = 0; i < (size_t)T * V; i++)
            if (!isfinite(a[i]) || !isfinite(b[i])) {
                CHECK(0, "non-finite logits at %zu", i);
                break;
            }
        close_runner(&r);
        /* the same passes over a full cache: equal bit for bit */
        if (!open_runner(&r, dir, 64, 64, KV_F32)) {
            CHECK(r.s.cache.ring[1] == 0, "batch 64: no ring");
            run_logits(&r, tok, T, 4, KV_PREFILL_ITERATIVE, a);
            CHECK(memcmp(a, b, sizeof(float) * T * V) == 0,
                  "iterative prefill: ring != full cache");
            close_runner(&r);
        }
    }
    free(a), free(b);
}

int main(void) {
    kv_error err = {0};
    kv_backend_cpu_init(&cpu, 2, &err);
    snprintf(tmp_root, sizeof tmp_root, "/tmp/kvforge-test-window-XXXXXX");
    if (!mkdtemp(tmp_root)) {
        CHECK(0, "mkdtemp");
        return check_done("test_runtime_window");
    }
    test_short_prompt_and_ring();
    test_naive_reference();
    test_mixed_layers();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    if (system(cmd) != 0) CHECK(0, "cleanup %s", tmp_root);
    return check_done("test_runtime_window");
}
