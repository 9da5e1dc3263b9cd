/* Decode's joined projections (runtime/forward.c: decode_qkv, decode_gate_up), on synthetic
 * checkpoints (no fixtures):
 *   - with the model's weights in its arena (q, k, v and gate, up back to back) a decode step
 *     runs 4 matrix-vector passes per layer (q|k|v, o, gate|up, down) and the LM head's, not 7;
 *   - the same model on a backend that maps every weight to a place of its own (nothing back to
 *     back: every projection alone) gives the same logits bit for bit, at every decode step,
 *     F32 and BF16 weights, F32 and BF16 caches, 1 and 2 threads;
 *   - Qwen2's q/k/v biases keep q, k, v apart (gate and up still join): 6 passes per layer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/forward.h"
#include "tests/check.h"
#include "transform/synth/synth.h"

enum { PROMPT = 5, STEPS = 6, MAX_SEQ = 64 };

static char tmp_root[64];

/* what the counting backend adds to the CPU's ops */
typedef struct {
    const kv_backend_ops *cpu;
    kv_backend *cpu_backend; /* runs every op */
    int scatter; /* map copies each weight to a block of its own */
    long matmuls;
} counter;

static counter *counter_of(kv_backend *b) { return b->impl; }

static int ct_map(kv_backend *b, const void **dptr, const void *host_src, size_t bytes,
                  kv_error *err) {
    counter *c = counter_of(b);
    if (!c->scatter) return c->cpu->map(c->cpu_backend, dptr, host_src, bytes, err);
    /* 64 bytes of room before the copy: no two copies can touch */
    unsigned char *p = aligned_alloc(64, 64 + (bytes + 63) / 64 * 64);
    if (!p) return kv_fail(err, KV_ENOMEM, "counter: map of %zu bytes", bytes);
    memcpy(p + 64, host_src, bytes);
    *dptr = p + 64;
    return 0;
}

static void ct_unmap(kv_backend *b, const void *dptr) {
    counter *c = counter_of(b);
    if (!c->scatter) c->cpu->unmap(c->cpu_backend, dptr);
    else if (dptr) free((unsigned char *)dptr - 64);
}

static int ct_matmul(kv_backend *b, float *out, const float *x, const void *W, kv_dtype w_type,
                     const float *bias, int T, int n_in, int n_out, int accumulate, kv_error *err) {
    counter *c = counter_of(b);
    c->matmuls++;
    return c->cpu->matmul(c->cpu_backend, out, x, W, w_type, bias, T, n_in, n_out, accumulate, err);
}

/* the CPU's table with map, unmap and matmul of the counter */
static kv_backend_ops counted_ops(const kv_backend_ops *cpu) {
    kv_backend_ops o = *cpu;
    o.map = ct_map;
    o.unmap = ct_unmap;
    o.matmul = ct_matmul;
    return o;
}

static const char *make_model(const char *name, const char *preset, kv_dtype dtype) {
    static char dir[4][128];
    static int next;
    char *d = dir[next++ % 4];
    snprintf(d, sizeof dir[0], "%s/%s", tmp_root, name);
    synth_spec s;
    synth_preset(&s, preset);
    s.dtype = dtype;
    s.max_pos = MAX_SEQ;
    kv_error err = {0};
    CHECK(synth_write(d, &s, &err) == 0, "synth %s: %s", name, err.msg);
    return d;
}

/* logits [STEPS + 1, V]: the prompt's last position, then each decode step's; *per_step = the
 * matmul passes of the last decode step */
static int run(kv_backend *b, const kv_model *m, kv_dtype cache, float *logits, long *per_step) {
    kv_error err = {0};
    kv_state s;
    if (kv_state_init(&s, b, m, MAX_SEQ, 16, cache, &err)) {
        CHECK(0, "state: %s", err.msg);
        return -1;
    }
    int32_t tok[PROMPT + STEPS];
    for (int i = 0; i < PROMPT + STEPS; i++) tok[i] = 3 + (i * 37) % (m->dims.vocab - 3);
    const size_t V = (size_t)m->dims.vocab;
    kv_forward_opts last = {.logits = KV_LOGITS_LAST};
    int rc = kv_forward(&s, tok, PROMPT, &last, logits, &err);
    for (int i = 0; !rc && i < STEPS; i++) {
        const long before = counter_of(b)->matmuls;
        rc = kv_forward(&s, tok + PROMPT + i, 1, &last, logits + (size_t)(i + 1) * V, &err);
        *per_step = counter_of(b)->matmuls - before;
    }
    CHECK(rc == 0, "forward: %s", err.msg);
    kv_state_free(&s);
    return rc;
}

static void test_model(const char *what, const char *dir, long joined_per_layer) {
    kv_error err = {0};
    kv_model m;
    if (kv_model_load(&m, dir, NULL, &err)) {
        CHECK(0, "load %s: %s", dir, err.msg);
        return;
    }
    const size_t n = (size_t)(STEPS + 1) * (size_t)m.dims.vocab;
    float *joined = malloc(sizeof(float) * n), *apart = malloc(sizeof(float) * n);
    const long L = m.dims.n_layers;
    for (int threads = 1; joined && apart && threads <= 2; threads++)
        for (int c = 0; c < 2; c++) {
            const kv_dtype cache = c ? KV_BF16 : KV_F32;
            kv_backend cpu;
            if (kv_backend_cpu_init(&cpu, threads, &err)) {
                CHECK(0, "cpu backend: %s", err.msg);
                break;
            }
            const kv_backend_ops ops = counted_ops(cpu.ops);
            counter c_joined = {.cpu = cpu.ops, .cpu_backend = &cpu},
                    c_apart = {.cpu = cpu.ops, .cpu_backend = &cpu, .scatter = 1};
            kv_backend bj = {.ops = &ops,
                             .device = KV_DEVICE_CPU,
                             .unified = 1,
                             .threads = threads,
                             .name = "counted",
                             .impl = &c_joined};
            kv_backend ba = bj;
            ba.impl = &c_apart;
            long steps_joined = 0, steps_apart = 0;
            if (!run(&bj, &m, cache, joined, &steps_joined) &&
                !run(&ba, &m, cache, apart, &steps_apart)) {
                CHECK(steps_joined == joined_per_layer * L + 1,
                      "%s, %s cache, %d threads: %ld passes per decode step, want %ld", what,
                      kv_dtype_name(cache), threads, steps_joined, joined_per_layer * L + 1);
                CHECK(steps_apart == 7 * L + 1,
                      "%s, %s cache, %d threads, weights apart: %ld passes per step, want %ld",
                      what, kv_dtype_name(cache), threads, steps_apart, 7 * L + 1);
                CHECK(memcmp(joined, apart, sizeof(float) * n) == 0,
                      "%s, %s cache, %d threads: joined passes change the logits", what,
                      kv_dtype_name(cache), threads);
            }
            kv_backend_free(&cpu);
        }
    free(joined);
    free(apart);
    kv_model_free(&m);
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/kvforge-test-fused-XXXXXX");
    if (!mkdtemp(tmp_root)) {
        CHECK(0, "mkdtemp");
        return check_done("test_decode_fused");
    }
    test_model("llama F32", make_model("f32", "tiny", KV_F32), 4);
    test_model("llama BF16", make_model("bf16", "tiny", KV_BF16), 4);
    test_model("qwen2 (q/k/v biases)", make_model("qwen2", "qwen2-tiny", KV_F32), 6);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    if (system(cmd) != 0) CHECK(0, "cleanup %s", tmp_root);
    return check_done("test_decode_fused");
}
