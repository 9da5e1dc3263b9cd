/* Runtime: the real stories260K against independent goldens (llama2.c run.c logits and greedy
 * tokens), and transformed checkpoints built here from its tensors (every map family, SwiftKV
 * with g = 1 and 2) for the invariants METHODS.md states: identity map = original bit for bit,
 * prefill + decode = one full forward, SwiftKV skip = no skip for the last token, iterative:T =
 * sequential, iterative:9 close to sequential at T = 64, KV-cache bytes = the formula;
 * F16/BF16 loading, untied heads, biases, llama3 RoPE plumbing; perplexity; the forward reaches
 * memory and compute only through its backend (an instrumented second backend). */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "runtime/forward.h"
#include "runtime/generate.h"
#include "runtime/ppl.h"
#include "tests/check.h"
#include "tests/rand.h"
#include "transform/synth/synth.h"

#define MODEL_DIR     SHARED_DIR "/models/stories260K"
#define GOLDEN_LOGITS SHARED_DIR "/golden/stories260K_logits.safetensors"
#define GOLDEN_GREEDY SHARED_DIR "/golden/stories260K_greedy.json"
#define VAL_TEXT      SHARED_DIR "/data/tinystories_val.txt"

enum { L = 5, H = 64, V = 512, KVD = 32, SEQ = 64 };

static char tmp_root[256];
static kv_backend cpu; /* every state runs on it (kernels/backend.h) */
static st_checkpoint orig; /* the original checkpoint, source of every variant */
static st_file golden;
static const int32_t *golden_tokens; /* [3, 64] */
static const float *golden_logits; /* [3, 64, 512] */

/* ---- building checkpoints ----------------------------------------------------------------- */

typedef struct {
    char name[128];
    kv_dtype dtype;
    int n_dims;
    int64_t shape[2];
    void *data; /* owned copy */
} wtensor;

typedef struct {
    wtensor t[160];
    int n;
} wset;

static void wset_add(wset *w, const char *name, const float *src, int n_dims, int64_t d0,
                     int64_t d1) {
    wtensor *t = &w->t[w->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = KV_F32;
    t->n_dims = n_dims;
    t->shape[0] = d0;
    t->shape[1] = d1;
    size_t n = (size_t)d0 * (size_t)(n_dims == 2 ? d1 : 1);
    t->data = malloc(n * sizeof(float));
    memcpy(t->data, src, n * sizeof(float));
}

static void wset_add_orig(wset *w, const char *as, const char *name) {
    const st_tensor *s = st_checkpoint_find(&orig, name);
    CHECK(s != NULL, "original lacks %s", name);
    if (!s) return;
    wset_add(w, as ? as : name, s->data, s->n_dims, s->shape[0], s->n_dims == 2 ? s->shape[1] : 0);
}

static const float *orig_f32(const char *fmt, int layer) {
    char name[128];
    snprintf(name, sizeof name, fmt, layer);
    const st_tensor *s = st_checkpoint_find(&orig, name);
    return s ? s->data : NULL;
}

/* every original tensor except those for which skip(name) says so */
static void wset_add_all_orig(wset *w, int (*skip)(const char *name, void *ctx), void *ctx) {
    for (int i = 0; i < orig.n_tensors; i++) {
        const char *name = orig.tensors[i]->name;
        if (skip && skip(name, ctx)) continue;
        wset_add_orig(w, NULL, name);
    }
}

/* converts every tensor to dtype in place (the values stored are rounded) */
static void wset_to_dtype(wset *w, kv_dtype dt) {
    for (int i = 0; i < w->n; i++) {
        wtensor *t = &w->t[i];
        size_t n = (size_t)t->shape[0] * (size_t)(t->n_dims == 2 ? t->shape[1] : 1);
        uint16_t *h = malloc(n * 2);
        kv_dtype_cast(h, dt, t->data, KV_F32, n);
        free(t->data);
        t->data = h;
        t->dtype = dt;
    }
}

/* every tensor rounded through dtype and back to F32 */
static void wset_round_through(wset *w, kv_dtype dt) {
    for (int i = 0; i < w->n; i++) {
        wtensor *t = &w->t[i];
        size_t n = (size_t)t->shape[0] * (size_t)(t->n_dims == 2 ? t->shape[1] : 1);
        uint16_t *h = malloc(n * 2);
        kv_dtype_cast(h, dt, t->data, KV_F32, n);
        kv_to_f32(t->data, h, dt, n);
        free(h);
    }
}

static void wset_free(wset *w) {
    for (int i = 0; i < w->n; i++) free(w->t[i].data);
    w->n = 0;
}

static cJSON *orig_config(void) {
    char *txt;
    size_t n;
    kv_error err;
    if (kv_read_file(MODEL_DIR "/config.json", &txt, &n, 1 << 20, &err)) return NULL;
    cJSON *c = cJSON_Parse(txt);
    free(txt);
    return c;
}

static void cfg_set_num(cJSON *c, const char *key, double v) {
    cJSON_DeleteItemFromObjectCaseSensitive(c, key);
    cJSON_AddNumberToObject(c, key, v);
}

static void cfg_set_str(cJSON *c, const char *key, const char *v) {
    cJSON_DeleteItemFromObjectCaseSensitive(c, key);
    cJSON_AddStringToObject(c, key, v);
}

static void cfg_set_bool(cJSON *c, const char *key, int v) {
    cJSON_DeleteItemFromObjectCaseSensitive(c, key);
    cJSON_AddBoolToObject(c, key, v);
}

/* writes DIR = tmp_root/name with config + weights; returns the path (static buffer per call) */
static const char *write_model(const char *name, cJSON *cfg, const wset *w) {
    static char dirs[8][512];
    static int next;
    char *dir = dirs[next++ % 8];
    snprintf(dir, 512, "%s/%s", tmp_root, name);
    kv_error err = {0};
    CHECK(kv_mkdir_p(dir, &err) == 0, "mkdir %s: %s", dir, err.msg);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *txt = cJSON_Print(cfg);
    CHECK(kv_write_file_atomic(path, txt, strlen(txt), &err) == 0, "%s: %s", path, err.msg);
    free(txt);
    st_spec specs[160];
    const void *data[160];
    for (int i = 0; i < w->n; i++) {
        specs[i] = (st_spec){.name = w->t[i].name,
                             .dtype = w->t[i].dtype,
                             .n_dims = w->t[i].n_dims,
                             .shape = {w->t[i].shape[0], w->t[i].shape[1]}};
        data[i] = w->t[i].data;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const char *meta[] = {"format", "pt"};
    CHECK(st_write_file(path, specs, data, w->n, meta, 1, &err) == 0, "%s: %s", path, err.msg);
    return dir;
}

/* ---- running models ----------------------------------------------------------------------- */

typedef struct {
    kv_model m;
    kv_state s;
    int ok;
} runner;

static int runner_open_cache(runner *r, const char *dir, int max_seq, int max_batch,
                             kv_dtype cache) {
    kv_error err = {0};
    memset(r, 0, sizeof *r);
    int rc = kv_model_load(&r->m, dir, NULL, &err);
    CHECK(rc == 0, "load %s: %s", dir, err.msg);
    if (rc) return rc;
    rc = kv_state_init(&r->s, &cpu, &r->m, max_seq, max_batch, cache, &err);
    CHECK(rc == 0, "state %s: %s", dir, err.msg);
    if (rc) {
        kv_model_free(&r->m);
        return rc;
    }
    r->ok = 1;
    return 0;
}

static int runner_open(runner *r, const char *dir, int max_seq, int max_batch) {
    return runner_open_cache(r, dir, max_seq, max_batch, KV_F32);
}

static void runner_close(runner *r) {
    if (!r->ok) return;
    kv_state_free(&r->s);
    kv_model_free(&r->m);
    r->ok = 0;
}

/* all-position logits of tokens[T] from an empty context */
static int full_logits(runner *r, const int32_t *tokens, int T, kv_prefill pf, int no_skip,
                       float *out) {
    kv_error err = {0};
    kv_state_reset(&r->s);
    kv_forward_opts o = {.logits = KV_LOGITS_ALL, .prefill = pf, .no_swiftkv_skip = no_skip};
    int rc = kv_forward(&r->s, tokens, T, &o, out, &err);
    CHECK(rc == 0, "forward: %s", err.msg);
    return rc;
}

/* logits rows P-1 .. T-1: a P-token prefill (last logits) then T-P decode steps */
static int prefill_decode_logits(runner *r, const int32_t *tokens, int T, int P, kv_prefill pf,
                                 float *out /* [T-P+1, V] */) {
    kv_error err = {0};
    kv_state_reset(&r->s);
    kv_forward_opts o = {.logits = KV_LOGITS_LAST, .prefill = pf};
    int rc = kv_forward(&r->s, tokens, P, &o, out, &err);
    for (int t = P; !rc && t < T; t++)
        rc = kv_forward(&r->s, tokens + t, 1, &o, out + (size_t)(t - P + 1) * V, &err);
    CHECK(rc == 0, "prefill/decode: %s", err.msg);
    return rc;
}

static const kv_prefill SEQUENTIAL = {.mode = KV_PREFILL_SEQUENTIAL};
static const kv_prefill ITER9 = {.mode = KV_PREFILL_ITERATIVE, .passes = 9};

/* ---- 1. the original against the goldens ---------------------------------------------------- */

static void test_golden_logits(void) {
    runner r;
    if (runner_open(&r, MODEL_DIR, 512, 64)) return;
    float *out = malloc(sizeof(float) * SEQ * V);
    for (int b = 0; b < 3; b++) {
        const int32_t *tok = golden_tokens + b * SEQ;
        const float *want = golden_logits + (size_t)b * SEQ * V;
        /* batched prompt pass (sgemm) */
        if (full_logits(&r, tok, SEQ, ITER9, 0, out)) break;
        double d = max_abs_diff(out, want, (size_t)SEQ * V);
        CHECK(d <= 1e-4, "sequence %d: batched logits differ from run.c by %g", b, d);
        /* one token at a time (sgemv), as run.c computes them */
        kv_error err = {0};
        kv_state_reset(&r.s);
        double worst = 0.0;
        int argmax_ok = 1;
        for (int t = 0; t < SEQ; t++) {
            kv_forward_opts o = {.logits = KV_LOGITS_LAST};
            CHECK(kv_forward(&r.s, tok + t, 1, &o, out, &err) == 0, "decode: %s", err.msg);
            double dt = max_abs_diff(out, want + (size_t)t * V, V);
            if (dt > worst) worst = dt;
            argmax_ok &= kv_argmax(out, V) == kv_argmax(want + (size_t)t * V, V);
        }
        CHECK(worst <= 1e-4, "sequence %d: decoded logits differ from run.c by %g", b, worst);
        printf("sequence %d: decoded (T = 1) logits vs run.c max |diff| %.3g\n", b, worst);
        CHECK(argmax_ok, "sequence %d: argmax differs from run.c", b);
    }
    /* a small batch forces chunked passes: same logits */
    runner r16;
    if (runner_open(&r16, MODEL_DIR, 128, 16) == 0) {
        if (full_logits(&r16, golden_tokens, SEQ, ITER9, 0, out) == 0) {
            double d = max_abs_diff(out, golden_logits, (size_t)SEQ * V);
            CHECK(d <= 1e-4, "chunked (16-token passes) logits differ from run.c by %g", d);
        }
        runner_close(&r16);
    }
    free(out);
    runner_close(&r);
}

static void test_golden_greedy(void) {
    char *txt;
    size_t n;
    kv_error err = {0};
    if (kv_read_file(GOLDEN_GREEDY, &txt, &n, 1 << 20, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    const cJSON *pid = cJSON_GetObjectItem(j, "prompt_ids"),
                *gid = cJSON_GetObjectItem(j, "greedy_ids");
    const cJSON *prompt = cJSON_GetObjectItem(j, "prompt");
    int n_prompt = cJSON_GetArraySize(pid), n_gen = cJSON_GetArraySize(gid);
    int32_t ids[16], *want = malloc(sizeof(int32_t) * (size_t)n_gen),
                     *got = calloc((size_t)n_gen, sizeof(int32_t));
    for (int i = 0; i < n_prompt && i < 16; i++) ids[i] = cJSON_GetArrayItem(pid, i)->valueint;
    for (int i = 0; i < n_gen; i++) want[i] = cJSON_GetArrayItem(gid, i)->valueint;

    /* the tokenizer gives the golden prompt ids */
    kv_tokenizer *tk = NULL;
    if (kv_tokenizer_load(&tk, MODEL_DIR "/tokenizer.json", &err) == 0) {
        int *enc = NULL, n_enc = 0;
        const char *p = prompt->valuestring;
        CHECK(kv_tokenizer_encode(tk, p, strlen(p), 1, &enc, &n_enc, &err) == 0, "%s", err.msg);
        CHECK(n_enc == n_prompt && !memcmp(enc, ids, sizeof(int) * (size_t)n_enc),
              "prompt encodes to %d ids, not the golden %d", n_enc, n_prompt);
        free(enc);
        kv_tokenizer_free(tk);
    } else {
        CHECK(0, "tokenizer: %s", err.msg);
    }

    runner r;
    if (runner_open(&r, MODEL_DIR, 512, 64) == 0) {
        kv_sampler smp;
        CHECK(kv_sampler_init(&smp, V, 0.0f, 0.9f, 1, &err) == 0, "%s", err.msg);
        kv_generate_opts o = {.max_new_tokens = n_gen};
        kv_generate_stats st;
        CHECK(kv_generate(&r.s, &smp, ids, n_prompt, &o, NULL, NULL, got, &st, &err) == 0, "%s",
              err.msg);
        CHECK(st.n_generated == n_gen, "generated %d of %d", st.n_generated, n_gen);
        int first_bad = -1;
        for (int i = 0; i < n_gen && first_bad < 0; i++)
            if (got[i] != want[i]) first_bad = i;
        CHECK(first_bad < 0, "greedy token %d: %d, run.c %d", first_bad,
              got[first_bad < 0 ? 0 : first_bad], want[first_bad < 0 ? 0 : first_bad]);
        /* an EOS stop list ends generation before the stop token */
        o.max_new_tokens = n_gen;
        o.stop_ids = &want[10];
        o.n_stop = 1;
        CHECK(kv_generate(&r.s, &smp, ids, n_prompt, &o, NULL, NULL, got, &st, &err) == 0, "%s",
              err.msg);
        int first = 0;
        while (want[first] != want[10]) first++;
        CHECK(st.n_generated == first && st.stopped_on == want[10], "stop: %d tokens (want %d)",
              st.n_generated, first);
        kv_sampler_free(&smp);
        runner_close(&r);
    }
    free(want);
    free(got);
    cJSON_Delete(j);
}

/* ---- 2. transformed checkpoints ------------------------------------------------------------- */

static int skip_kv_of_nonkv(const char *name, void *ctx) {
    (void)ctx;
    int layer;
    char rest[96];
    if (sscanf(name, "model.layers.%d.self_attn.%95s", &layer, rest) != 2) return 0;
    if (strncmp(rest, "k_proj", 6) && strncmp(rest, "v_proj", 6)) return 0;
    return 1; /* every k/v is re-added below: kept on KV layers (mean init), dropped elsewhere */
}

/* cross-layer conversion (METHODS.md s1, `mean` init): KV layers get the mean of their readers'
 * k/v; others have none */
static const char *make_cross(const char *spec, kv_map *m) {
    kv_error err = {0};
    CHECK(kvmap_parse(m, spec, L, &err) == 0, "%s: %s", spec, err.msg);
    static wset w;
    w.n = 0;
    wset_add_all_orig(&w, skip_kv_of_nonkv, m);
    for (int j = 0; j < L; j++) {
        if (m->kv_layer_of[j] != j) continue;
        int readers[L];
        int n = kvmap_readers(m, j, readers, L);
        for (int kind = 0; kind < 2; kind++) {
            const char *fmt = kind ? "model.layers.%d.self_attn.v_proj.weight"
                                   : "model.layers.%d.self_attn.k_proj.weight";
            float mean[KVD * H] = {0};
            for (int r = 0; r < n; r++) {
                const float *src = orig_f32(fmt, readers[r]);
                for (int e = 0; e < KVD * H; e++) mean[e] += src[e] / (float)n;
            }
            char name[128];
            snprintf(name, sizeof name, fmt, j);
            wset_add(&w, name, mean, 2, KVD, H);
        }
    }
    cJSON *cfg = orig_config();
    char types[64];
    kvmap_layer_types(m, types, sizeof types);
    cfg_set_str(cfg, "layer_types", types);
    char dirname[64];
    snprintf(dirname, sizeof dirname, "cross-%s", spec);
    for (char *p = dirname; *p; p++)
        if (*p == ':') *p = '_';
    const char *dir = write_model(dirname, cfg, &w);
    cJSON_Delete(cfg);
    wset_free(&w);
    return dir;
}

typedef struct {
    int l, interop;
} swift_ctx;

static int skip_swift(const char *name, void *ctx) {
    const swift_ctx *c = ctx;
    int layer;
    char rest[96];
    if (c->interop) return 0;
    if (sscanf(name, "model.layers.%d.self_attn.%95s", &layer, rest) != 2) return 0;
    return layer >= c->l && strncmp(rest, "o_proj", 6) != 0; /* deploy: no teacher q/k/v */
}

/* SwiftKV conversion (METHODS.md s2 initialisation); interop keeps the teacher's q/k/v */
static const char *make_swiftkv(int l, int g, int interop) {
    static wset w;
    w.n = 0;
    swift_ctx c = {l, interop};
    wset_add_all_orig(&w, skip_swift, &c);
    char name[128];
    wset_add(&w, "model.norm_swiftkv.weight", orig_f32("model.layers.%d.input_layernorm.weight", l),
             1, H, 0);
    for (int j = l; j < L; j++) {
        snprintf(name, sizeof name, "model.layers.%d.self_attn.q_proj_swiftkv.weight", j);
        wset_add(&w, name, orig_f32("model.layers.%d.self_attn.q_proj.weight", j), 2, H, H);
        if ((j - l) % g) continue;
        for (int kind = 0; kind < 2; kind++) {
            const char *fmt = kind ? "model.layers.%d.self_attn.v_proj.weight"
                                   : "model.layers.%d.self_attn.k_proj.weight";
            float mean[KVD * H] = {0};
            for (int u = j; u < j + g; u++) {
                const float *src = orig_f32(fmt, u);
                for (int e = 0; e < KVD * H; e++) mean[e] += src[e] / (float)g;
            }
            snprintf(name, sizeof name,
                     kind ? "model.layers.%d.self_attn.v_proj_swiftkv.weight"
                          : "model.layers.%d.self_attn.k_proj_swiftkv.weight",
                     j);
            wset_add(&w, name, mean, 2, KVD, H);
        }
    }
    cJSON *cfg = orig_config();
    cfg_set_str(cfg, "model_type", "llama_swiftkv");
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "architectures");
    cJSON *arch = cJSON_AddArrayToObject(cfg, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("LlamaSwiftKVForCausalLM"));
    cfg_set_bool(cfg, "swiftkv", 1);
    cfg_set_num(cfg, "num_key_value_layers", l);
    cfg_set_num(cfg, "key_value_group_size", g);
    char dirname[64];
    snprintf(dirname, sizeof dirname, "swiftkv-%d-%d%s", l, g, interop ? "-interop" : "");
    const char *dir = write_model(dirname, cfg, &w);
    cJSON_Delete(cfg);
    wset_free(&w);
    return dir;
}

/* KV-cache bytes against METHODS.md: 2 * (KV layers) * nkv * hd * 4 per position */
static void check_cache_bytes(const runner *r, int kv_layers, const char *what) {
    const size_t want = (size_t)2 * (size_t)kv_layers * 4 /* nkv */ * 8 /* hd */ * 4 /* F32 */ *
                        (size_t)r->s.max_seq;
    CHECK(r->s.cache.bytes == want, "%s: KV cache %zu bytes, formula %zu", what, r->s.cache.bytes,
          want);
    CHECK(r->s.cache.n_slots == kv_layers, "%s: %d slots, want %d", what, r->s.cache.n_slots,
          kv_layers);
}

/* model FLOPs of a prefill, by hand for stories260K (L 5, H 64, nh 8, nkv 4, hd 8, F 172, V 512):
 * per token and layer 2 (64*64 Q+O + 3*64*172 MLP + 64*32*2 K,V) = 90624; T = 2: 2 * 5 * 45312 * 2
 * tokens, attention 4 * 64 * (1 + 2) positions * 5 layers, head 2 * 64 * 512 once */
static void test_prefill_flops(void) {
    runner r;
    if (runner_open(&r, MODEL_DIR, 8, 8)) return;
    const double want = 2.0 * 5 * 45312 * 2 + 4.0 * 64 * 3 * 5 + 2.0 * 64 * 512;
    CHECK(kv_model_prefill_flops(&r.m, 2) == want, "prefill flops %.0f, want %.0f",
          kv_model_prefill_flops(&r.m, 2), want);
    runner_close(&r);
}

static void test_identity_map(void) {
    static wset w;
    w.n = 0;
    wset_add_all_orig(&w, NULL, NULL);
    cJSON *cfg = orig_config();
    cfg_set_str(cfg, "layer_types", "0_1_2_3_4");
    const char *dir = write_model("identity", cfg, &w);
    cJSON_Delete(cfg);
    wset_free(&w);
    runner a, b;
    if (runner_open(&a, MODEL_DIR, 128, 64)) return;
    if (runner_open(&b, dir, 128, 64) == 0) {
        float *x = malloc(sizeof(float) * SEQ * V), *y = malloc(sizeof(float) * SEQ * V);
        for (int s = 0; s < 3; s++) {
            full_logits(&a, golden_tokens + s * SEQ, SEQ, ITER9, 0, x);
            full_logits(&b, golden_tokens + s * SEQ, SEQ, ITER9, 0, y);
            CHECK(memcmp(x, y, sizeof(float) * SEQ * V) == 0,
                  "identity map: sequence %d not bit-identical", s);
        }
        check_cache_bytes(&b, L, "identity");
        free(x);
        free(y);
        runner_close(&b);
    }
    runner_close(&a);
}

static int n_kv_layers(const kv_map *m) {
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) n += m->kv_layer_of[i] == i;
    return n;
}

static int has_upward(const kv_map *m) {
    for (int i = 0; i < m->n_layers; i++)
        if (m->kv_layer_of[i] > i) return 1;
    return 0;
}

/* prefill + decode = one full forward; for upward maps also iterative:T = sequential */
static void check_consistency(runner *r, const char *what, int upward, int swiftkv) {
    const int T = SEQ, P = 24;
    const int32_t *tok = golden_tokens + SEQ; /* sequence 1 */
    float *full = malloc(sizeof(float) * T * V), *pd = malloc(sizeof(float) * (T - P + 1) * V);
    float *it = malloc(sizeof(float) * T * V);
    full_logits(r, tok, T, SEQUENTIAL, 0, full);
    for (int mode = 0; mode < (upward ? 2 : 1); mode++) {
        /* prefill iterative:P or sequential, then decode: equals the exact full forward */
        kv_prefill pf = mode ? SEQUENTIAL : (kv_prefill){.mode = KV_PREFILL_ITERATIVE, .passes = P};
        prefill_decode_logits(r, tok, T, P, pf, pd);
        double d = max_abs_diff(pd, full + (size_t)(P - 1) * V, (size_t)(T - P + 1) * V);
        CHECK(d <= 2e-4, "%s: prefill(%s)+decode differs from the full forward by %g", what,
              mode ? "sequential" : "iterative:P", d);
    }
    if (upward) {
        kv_prefill pf = {.mode = KV_PREFILL_ITERATIVE, .passes = T};
        full_logits(r, tok, T, pf, 0, it);
        double d = max_abs_diff(it, full, (size_t)T * V);
        CHECK(d <= 2e-4, "%s: iterative:T differs from sequential by %g", what, d);
    } else {
        /* without upward layers the batched pass is the full forward whatever the mode */
        full_logits(r, tok, T, ITER9, 0, it);
        double d = max_abs_diff(it, full, (size_t)T * V);
        CHECK(d == 0.0, "%s: prefill mode changed a map without upward layers (%g)", what, d);
    }
    if (!swiftkv) {
        /* the last token's logits with the tail skip (layers above the highest K/V writer only
         * for the last token) = every token through every layer */
        float last_skip[V], last_all[V];
        kv_error err = {0};
        kv_forward_opts o = {.logits = KV_LOGITS_LAST, .prefill = SEQUENTIAL};
        kv_state_reset(&r->s);
        CHECK(kv_forward(&r->s, tok, T, &o, last_skip, &err) == 0, "%s", err.msg);
        o.no_tail_skip = 1;
        kv_state_reset(&r->s);
        CHECK(kv_forward(&r->s, tok, T, &o, last_all, &err) == 0, "%s", err.msg);
        double d = max_abs_diff(last_skip, last_all, V);
        CHECK(d <= 2e-5, "%s: tail skip vs all layers for the last token: %g", what, d);
    }
    if (swiftkv) {
        /* the last prompt token: skipping layers >= l for the others changes nothing */
        float last_skip[V], last_all[V];
        kv_error err = {0};
        kv_forward_opts o = {.logits = KV_LOGITS_LAST};
        kv_state_reset(&r->s);
        CHECK(kv_forward(&r->s, tok, T, &o, last_skip, &err) == 0, "%s", err.msg);
        o.no_swiftkv_skip = 1;
        kv_state_reset(&r->s);
        CHECK(kv_forward(&r->s, tok, T, &o, last_all, &err) == 0, "%s", err.msg);
        double d1 = max_abs_diff(last_skip, last_all, V);
        double d2 = max_abs_diff(last_skip, full + (size_t)(T - 1) * V, V);
        CHECK(d1 <= 2e-5 && d2 <= 2e-5, "%s: skip vs all layers for the last token: %g, %g", what,
              d1, d2);
        CHECK(kv_argmax(last_skip, V) == kv_argmax(last_all, V), "%s: skip changes the argmax",
              what);
    }
    free(full);
    free(pd);
    free(it);
}

static void test_cross_maps(void) {
    static const char *specs[] = {"pizza-bottom:3",    "pizza-top:3",    "pizza-middle:3",
                                  "sandwich-bottom:3", "sandwich-top:3", "sandwich-middle:3",
                                  "lasagna-bottom:3",  "lasagna-top:3",  "lasagna-middle:3",
                                  "pizza-top:2",       "lasagna-top:2",  "sandwich-middle:4"};
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        kv_map m;
        const char *dir = make_cross(specs[i], &m);
        runner r;
        if (runner_open(&r, dir, 128, 64)) continue;
        check_cache_bytes(&r, n_kv_layers(&m), specs[i]);
        check_consistency(&r, specs[i], has_upward(&m), 0);
        runner_close(&r);
    }
}

static void test_swiftkv(void) {
    static const int lg[][2] = {{2, 1}, {3, 1}, {3, 2}, {1, 2}, {1, 4}};
    for (size_t i = 0; i < sizeof lg / sizeof lg[0]; i++) {
        const int l = lg[i][0], g = lg[i][1];
        char what[32];
        snprintf(what, sizeof what, "swiftkv l=%d g=%d", l, g);
        const char *dir = make_swiftkv(l, g, 0);
        runner r;
        if (runner_open(&r, dir, 128, 64)) continue;
        check_cache_bytes(&r, l + (L - l) / g, what);
        check_consistency(&r, what, 0, 1);
        /* the interop layout (teacher q/k/v kept) runs the same model */
        if (g == 2) {
            const char *idir = make_swiftkv(l, g, 1);
            runner ri;
            if (runner_open(&ri, idir, 128, 64) == 0) {
                float *a = malloc(sizeof(float) * SEQ * V), *b = malloc(sizeof(float) * SEQ * V);
                full_logits(&r, golden_tokens, SEQ, ITER9, 1, a);
                full_logits(&ri, golden_tokens, SEQ, ITER9, 1, b);
                CHECK(!memcmp(a, b, sizeof(float) * SEQ * V),
                      "%s: interop layout differs from deploy", what);
                free(a);
                free(b);
                runner_close(&ri);
            }
        }
        runner_close(&r);
    }
}

/* The one binder over a source in memory: SwiftKV l=3, g=1 as a table over the original
 * checkpoint (norm_swiftkv = input_layernorm of layer 3, q/k/v_proj_swiftkv = the layer's own
 * q/k/v, no copies) runs exactly as make_swiftkv(3, 1, interop) from files. */
static void test_table_source(void) {
    enum { SL = 3 };
    static char names[1 + 3 * L][96];
    static st_tensor items[2 + 3 * L];
    static hf_config cfg;
    kv_error err = {0};
    int n = 0, rc = hf_config_load(&cfg, MODEL_DIR "/config.json", &err);
    if (!rc) rc = kvmap_swiftkv(&cfg.map, L, SL, 1, &err);
    CHECK(rc == 0, "swiftkv config: %s", err.msg);
    if (rc) return;
    snprintf(names[n], sizeof names[n], "model.norm_swiftkv.weight");
    items[n] = *st_checkpoint_find(&orig, "model.layers.3.input_layernorm.weight");
    items[n].name = names[n];
    n++;
    for (int j = SL; j < L; j++)
        for (int p = 0; p < 3; p++) {
            char from[96];
            snprintf(from, sizeof from, "model.layers.%d.self_attn.%c_proj.weight", j, "qkv"[p]);
            snprintf(names[n], sizeof names[n], "model.layers.%d.self_attn.%c_proj_swiftkv.weight",
                     j, "qkv"[p]);
            items[n] = *st_checkpoint_find(&orig, from);
            items[n].name = names[n];
            n++;
        }
    kv_tensor_source base, src;
    kv_tensor_source_checkpoint(&base, &orig);
    kv_tensor_table table = {
        .items = items, .n_items = n, .base = &base, .label = "swiftkv overlay"};
    kv_tensor_source_table(&src, &table);
    runner a = {0}, b;
    rc = kv_model_from_source(&a.m, &cfg, &src, NULL, &err);
    CHECK(rc == 0, "model from a table: %s", err.msg);
    if (rc) return;
    CHECK(a.m.n_params == (size_t)hf_config_param_count(&cfg), "params %zu", a.m.n_params);
    CHECK(a.m.layers[4].wq == items[4].data && a.m.layers[3].wk == items[2].data &&
              a.m.layers[2].wq ==
                  st_checkpoint_find(&orig, "model.layers.2.self_attn.q_proj.weight")->data,
          "weights in place from the table and the checkpoint");
    if (kv_state_init(&a.s, &cpu, &a.m, 128, 64, KV_F32, &err) == 0) a.ok = 1;
    CHECK(a.ok, "state: %s", err.msg);
    if (a.ok && runner_open(&b, make_swiftkv(SL, 1, 1), 128, 64) == 0) {
        float *x = malloc(sizeof(float) * SEQ * V), *y = malloc(sizeof(float) * SEQ * V);
        full_logits(&a, golden_tokens, SEQ, SEQUENTIAL, 0, x);
        full_logits(&b, golden_tokens, SEQ, SEQUENTIAL, 0, y);
        CHECK(!memcmp(x, y, sizeof(float) * SEQ * V), "table source differs from the files");
        free(x);
        free(y);
        runner_close(&b);
    }
    if (a.ok) runner_close(&a);
    else kv_model_free(&a.m);
    /* a table naming a tensor its base holds too is refused, named */
    items[n] = *st_checkpoint_find(&orig, "model.norm.weight");
    table.n_items = n + 1;
    kv_tensor_source_table(&src, &table);
    kv_model m;
    CHECK(kv_model_from_source(&m, &cfg, &src, NULL, &err) == KV_EFORMAT &&
              strstr(err.msg, "tensor 'model.norm.weight' appears twice"),
          "repeated name: %s", err.msg);
}

/* METHODS.md: on stories260K at T = 64, iterative:9 stays within about 0.05 of sequential,
 * iterative:2 is far off. Measured here on the unconverged (not distilled) pizza-top:3 model:
 * N=9 within 0.003 .. 0.013 on the three golden sequences, N=2 off by 3.8 .. 4.6. How fast the
 * passes converge depends on the map: maps with several cyclic groups are further off
 * (test_group_plan); iterative:T is always exact (check_consistency). */
static void test_iterative_close(void) {
    kv_map m;
    const char *dir = make_cross("pizza-top:3", &m);
    runner r;
    if (runner_open(&r, dir, 128, 64)) return;
    float *seq = malloc(sizeof(float) * SEQ * V), *it = malloc(sizeof(float) * SEQ * V);
    for (int b = 0; b < 3; b++) {
        const int32_t *tok = golden_tokens + b * SEQ;
        full_logits(&r, tok, SEQ, SEQUENTIAL, 0, seq);
        full_logits(&r, tok, SEQ, ITER9, 0, it);
        double d9 = max_abs_diff(it, seq, (size_t)SEQ * V);
        full_logits(&r, tok, SEQ, (kv_prefill){.mode = KV_PREFILL_ITERATIVE, .passes = 2}, 0, it);
        double d2 = max_abs_diff(it, seq, (size_t)SEQ * V);
        printf("iterative vs sequential, T=64, pizza-top:3, sequence %d: N=9 %.4g, N=2 %.4g\n", b,
               d9, d2);
        CHECK(d9 <= 0.05, "sequence %d: iterative:9 is %g from sequential", b, d9);
        CHECK(d2 > 1.0, "sequence %d: iterative:2 (%g) should be far from sequential", b, d2);
    }
    free(seq);
    free(it);
    runner_close(&r);
}

/* LCKV's iteration plan (METHODS.md s1): each cyclic group N times after the groups below it.
 * Single-group maps: exactly the single-block plan (iterative-block:N), bit for bit. Maps with
 * several groups (lasagna-top:2 and :3 here, groups [0,2] [3,4] and [0,1] [2,3]): at T = 64,
 * N = 9 the argmax agrees with sequential prefill at all 64 positions of golden sequences 0 and
 * 1 and of the issue's sequence, where the single block misses some for lasagna-top:2 (golden
 * sequence 2 is harder for lasagna-top:2 under either plan: docs/RESULTS.md), and
 * iterative-block:T, like iterative:T, equals sequential. */
/* BOS + the first 63 tokens of the first story of ../shared/data/tinystories_val.txt ("Spot. Spot
 * saw the shiny car ..."): the sequence of the issue's per-group figures (docs/RESULTS.md) */
static const int32_t issue_tokens[64] = {
    1,   301, 427, 309, 426, 301, 427, 309, 394, 265, 262, 415, 271, 422, 280, 295,
    269, 336, 432, 313, 448, 327, 432, 410, 462, 362, 422, 432, 364, 420, 280, 295,
    410, 293, 384, 268, 325, 428, 415, 413, 269, 280, 305, 303, 443, 436, 410, 462,
    362, 422, 262, 423, 290, 266, 269, 410, 276, 427, 421, 417, 266, 432, 313, 434};

static void test_group_plan(void) {
    static const char *single[] = {"pizza-top:2", "pizza-middle:2", "lasagna-middle:2",
                                   "pizza-top:3", "sandwich-top:3", "sandwich-middle:3"};
    static const char *multi[] = {"lasagna-top:2", "lasagna-top:3"};
    const kv_prefill block9 = {.mode = KV_PREFILL_ITERATIVE, .passes = 9, .block = 1};
    float *a = malloc(sizeof(float) * SEQ * V), *b = malloc(sizeof(float) * SEQ * V);
    for (size_t k = 0; k < sizeof single / sizeof *single; k++) {
        kv_map m;
        const char *dir = make_cross(single[k], &m);
        runner r;
        CHECK(kvmap_n_cyclic_groups(&m) == 1, "%s: one cyclic group", single[k]);
        if (runner_open(&r, dir, 128, 64)) continue;
        full_logits(&r, golden_tokens, SEQ, ITER9, 0, a);
        full_logits(&r, golden_tokens, SEQ, block9, 0, b);
        CHECK(!memcmp(a, b, sizeof(float) * SEQ * V), "%s: per-group plan differs from the block",
              single[k]);
        runner_close(&r);
    }
    for (size_t k = 0; k < sizeof multi / sizeof *multi; k++) {
        kv_map m;
        const char *dir = make_cross(multi[k], &m);
        runner r;
        CHECK(kvmap_n_cyclic_groups(&m) == 2, "%s: two cyclic groups", multi[k]);
        if (runner_open(&r, dir, 128, 64)) continue;
        for (int q = 0; q < 3; q++) {
            const int32_t *tok = q < 2 ? golden_tokens + q * SEQ : issue_tokens;
            full_logits(&r, tok, SEQ, SEQUENTIAL, 0, a);
            full_logits(&r, tok, SEQ, ITER9, 0, b);
            int agree = 0;
            for (int t = 0; t < SEQ; t++)
                agree += kv_argmax(a + (size_t)t * V, V) == kv_argmax(b + (size_t)t * V, V);
            const double d = max_abs_diff(a, b, (size_t)SEQ * V);
            full_logits(&r, tok, SEQ, block9, 0, b);
            int agree_block = 0;
            for (int t = 0; t < SEQ; t++)
                agree_block += kv_argmax(a + (size_t)t * V, V) == kv_argmax(b + (size_t)t * V, V);
            const double d_block = max_abs_diff(a, b, (size_t)SEQ * V);
            printf("%s, %s, T=64, N=9 vs sequential: per group %.4g (argmax %d/64), "
                   "block %.4g (argmax %d/64)\n",
                   multi[k],
                   (const char *[]){"golden sequence 0", "golden sequence 1",
                                    "the issue's sequence"}[q],
                   d, agree, d_block, agree_block);
            CHECK(agree == SEQ, "%s, sequence %d: argmax agrees at %d of 64", multi[k], q, agree);
            /* the issue's case: the single block misses positions that the per-group plan gets,
             * and is farther off for both maps (golden sequence 1 of lasagna-top:3 is not) */
            if (q == 2) {
                CHECK(d < d_block,
                      "%s, issue's sequence: per group %g not closer than the block %g", multi[k],
                      d, d_block);
                if (k == 0)
                    CHECK(agree_block < SEQ, "%s: the block plan agrees at %d of 64", multi[k],
                          agree_block);
            }
        }
        full_logits(&r, golden_tokens, SEQ,
                    (kv_prefill){.mode = KV_PREFILL_ITERATIVE, .passes = SEQ, .block = 1}, 0, b);
        full_logits(&r, golden_tokens, SEQ, SEQUENTIAL, 0, a);
        const double d = max_abs_diff(a, b, (size_t)SEQ * V);
        CHECK(d <= 2e-4, "%s: iterative-block:T differs from sequential by %g", multi[k], d);
        runner_close(&r);
    }
    free(a);
    free(b);
}

/* ---- 3. loading variants -------------------------------------------------------------------- */

static void compare_dirs(const char *a_dir, const char *b_dir, double tol, const char *what) {
    runner a, b;
    if (runner_open(&a, a_dir, 64, 64)) return;
    if (runner_open(&b, b_dir, 64, 64) == 0) {
        float *x = malloc(sizeof(float) * SEQ * V), *y = malloc(sizeof(float) * SEQ * V);
        full_logits(&a, golden_tokens + 2 * SEQ, SEQ, ITER9, 0, x);
        full_logits(&b, golden_tokens + 2 * SEQ, SEQ, ITER9, 0, y);
        double d = max_abs_diff(x, y, (size_t)SEQ * V);
        CHECK(d <= tol, "%s: logits differ by %g (tolerance %g)", what, d, tol);
        free(x);
        free(y);
        runner_close(&b);
    }
    runner_close(&a);
}

static void test_dtypes_and_layouts(void) {
    static wset w;
    for (int k = 0; k < 2; k++) {
        kv_dtype dt = k ? KV_BF16 : KV_F16;
        cJSON *cfg = orig_config();
        w.n = 0;
        wset_add_all_orig(&w, NULL, NULL);
        wset_round_through(&w, dt);
        const char *ref = write_model(k ? "bf16-as-f32" : "f16-as-f32", cfg, &w);
        wset_to_dtype(&w, dt);
        cfg_set_str(cfg, "torch_dtype", k ? "bfloat16" : "float16");
        const char *half = write_model(k ? "bf16" : "f16", cfg, &w);
        wset_free(&w);
        cJSON_Delete(cfg);
        /* F16 and BF16: held as stored (own kernels widen in registers, exactly; the prefill's
         * blocked products add in another order): within 1e-4 of the F32 model holding the
         * rounded values */
        compare_dirs(ref, half, 1e-4, kv_dtype_name(dt));
        /* a batch's MLP in two passes (16-bit weights on the CPU with more tokens than mlp_rows:
         * runtime/forward.c) gives the one pass's bits under OpenBLAS's Haswell kernels */
        runner one, two;
        if (runner_open(&one, half, 8 * SEQ, 8 * SEQ) == 0) {
            if (runner_open(&two, half, SEQ, SEQ) == 0) {
                CHECK(two.s.mlp_rows < SEQ && one.s.mlp_rows >= SEQ, "mlp_rows %d and %d",
                      two.s.mlp_rows, one.s.mlp_rows);
                float *x = malloc(sizeof(float) * SEQ * V), *y = malloc(sizeof(float) * SEQ * V);
                if (x && y && !full_logits(&one, golden_tokens, SEQ, ITER9, 0, x) &&
                    !full_logits(&two, golden_tokens, SEQ, ITER9, 0, y)) {
                    const double d = max_abs_diff(x, y, (size_t)SEQ * V);
                    if (strcmp(openblas_get_corename(), "Haswell") == 0)
                        CHECK(!memcmp(x, y, sizeof(float) * SEQ * V),
                              "%s: the MLP in two passes changed the logits (max %g)",
                              kv_dtype_name(dt), d);
                    else
                        CHECK(d <= 1e-4, "%s: the MLP in two passes: logits off by %g",
                              kv_dtype_name(dt), d);
                }
                free(x);
                free(y);
                runner_close(&two);
            }
            runner_close(&one);
        }
        kv_model hm, fm;
        kv_error err = {0};
        if (kv_model_load(&hm, half, NULL, &err) == 0) {
            CHECK(hm.mat_type == dt, "%s model holds %s matrices", kv_dtype_name(dt),
                  kv_dtype_name(hm.mat_type));
            if (kv_model_load(&fm, ref, NULL, &err) == 0) {
                /* matrices at 2 bytes, copied as they are into the arena (no F32 copy) */
                CHECK(hm.step_bytes < fm.step_bytes * 0.55 &&
                          hm.weight_bytes < fm.weight_bytes * 0.55 &&
                          hm.store.size < fm.weight_bytes * 0.6,
                      "%s: step bytes %zu vs F32 %zu, weights %zu vs %zu, arena %zu",
                      kv_dtype_name(dt), hm.step_bytes, fm.step_bytes, hm.weight_bytes,
                      fm.weight_bytes, hm.store.size);
                kv_model_free(&fm);
            }
            kv_model_free(&hm);
        }
        /* map_file: the matrices in place in the file's mapping, only the vectors in the arena */
        const kv_model_opts mapped = {.map_file = 1};
        if (kv_model_load(&hm, half, &mapped, &err) == 0) {
            CHECK(hm.mat_type == dt && hm.store.size < hm.weight_bytes / 16,
                  "mapped %s: %s matrices, arena %zu of %zu weight bytes", kv_dtype_name(dt),
                  kv_dtype_name(hm.mat_type), hm.store.size, hm.weight_bytes);
            kv_model_free(&hm);
        }
        const kv_model_opts widen = {.widen_f32 = 1};
        if (kv_model_load(&hm, half, &widen, &err) == 0) {
            CHECK(hm.mat_type == KV_F32, "widen_f32 holds %s", kv_dtype_name(hm.mat_type));
            kv_model_free(&hm);
        }
        CHECK(!err.code, "loading %s: %s", half, err.msg);
    }
    /* separate LM head holding the embedding's values = tied */
    {
        cJSON *cfg = orig_config();
        w.n = 0;
        wset_add_all_orig(&w, NULL, NULL);
        wset_add_orig(&w, "lm_head.weight", "model.embed_tokens.weight");
        cfg_set_bool(cfg, "tie_word_embeddings", 0);
        const char *dir = write_model("untied", cfg, &w);
        wset_free(&w);
        cJSON_Delete(cfg);
        compare_dirs(MODEL_DIR, dir, 0.0, "untied lm_head");
        /* and an untied model without lm_head.weight is refused, naming the tensor */
        cfg = orig_config();
        w.n = 0;
        wset_add_all_orig(&w, NULL, NULL);
        cfg_set_bool(cfg, "tie_word_embeddings", 0);
        dir = write_model("untied-missing", cfg, &w);
        wset_free(&w);
        cJSON_Delete(cfg);
        kv_model m;
        kv_error err = {0};
        CHECK(kv_model_load(&m, dir, NULL, &err) != 0 && strstr(err.msg, "lm_head.weight"),
              "missing lm_head: '%s'", err.msg);
    }
    /* a tensor the config does not account for is refused, named (formats/llama_view.h) */
    {
        cJSON *cfg = orig_config();
        w.n = 0;
        wset_add_all_orig(&w, NULL, NULL);
        wset_add_orig(&w, "model.layers.1.self_attn.rotary.weight", "model.norm.weight");
        const char *dir = write_model("stray-tensor", cfg, &w);
        wset_free(&w);
        cJSON_Delete(cfg);
        kv_model m;
        kv_error err = {0};
        CHECK(kv_model_load(&m, dir, NULL, &err) != 0 && strstr(err.msg, "self_attn.rotary.weight"),
              "stray tensor: '%s'", err.msg);
    }
    /* attention_bias / mlp_bias with zero biases: same logits; the names are bound */
    {
        cJSON *cfg = orig_config();
        w.n = 0;
        wset_add_all_orig(&w, NULL, NULL);
        static const float zeros[256];
        char name[128];
        static const char *proj[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                     "mlp.down_proj"};
        static const int dim[] = {H, KVD, KVD, H, 172, 172, H};
        for (int i = 0; i < L; i++)
            for (int p = 0; p < 7; p++) {
                snprintf(name, sizeof name, "model.layers.%d.%s.bias", i, proj[p]);
                wset_add(&w, name, zeros, 1, dim[p], 0);
            }
        cfg_set_bool(cfg, "attention_bias", 1);
        cfg_set_bool(cfg, "mlp_bias", 1);
        const char *dir = write_model("biases", cfg, &w);
        compare_dirs(MODEL_DIR, dir, 0.0, "zero biases");
        /* a bias of the wrong length is refused with both shapes named */
        for (int i = 0; i < w.n; i++)
            if (!strcmp(w.t[i].name, "model.layers.2.self_attn.o_proj.bias")) w.t[i].shape[0] = 32;
        dir = write_model("bad-bias", cfg, &w);
        wset_free(&w);
        cJSON_Delete(cfg);
        kv_model m;
        kv_error err = {0};
        CHECK(kv_model_load(&m, dir, NULL, &err) != 0 && strstr(err.msg, "o_proj.bias") &&
                  strstr(err.msg, "[32]") && strstr(err.msg, "[64]"),
              "bad bias: '%s'", err.msg);
    }
    /* llama3 rope_scaling with factor 1 leaves every frequency unchanged (plumbing check);
     * factor 8 changes the logits */
    {
        cJSON *cfg = orig_config();
        w.n = 0;
        wset_add_all_orig(&w, NULL, NULL);
        cJSON_DeleteItemFromObjectCaseSensitive(cfg, "rope_scaling");
        cJSON *rs = cJSON_AddObjectToObject(cfg, "rope_scaling");
        cJSON_AddStringToObject(rs, "rope_type", "llama3");
        cJSON_AddNumberToObject(rs, "factor", 1.0);
        cJSON_AddNumberToObject(rs, "low_freq_factor", 1.0);
        cJSON_AddNumberToObject(rs, "high_freq_factor", 4.0);
        cJSON_AddNumberToObject(rs, "original_max_position_embeddings", 64);
        const char *dir1 = write_model("llama3-f1", cfg, &w);
        cJSON_ReplaceItemInObject(rs, "factor", cJSON_CreateNumber(8.0));
        const char *dir8 = write_model("llama3-f8", cfg, &w);
        wset_free(&w);
        cJSON_Delete(cfg);
        compare_dirs(MODEL_DIR, dir1, 1e-5, "llama3 rope factor 1");
        runner a, b;
        if (runner_open(&a, MODEL_DIR, 64, 64) == 0 && runner_open(&b, dir8, 64, 64) == 0) {
            CHECK(b.m.dims.rope.scaling == KV_ROPE_LLAMA3 && b.m.dims.rope.factor == 8.0,
                  "llama3 config not bound");
            float *x = malloc(sizeof(float) * SEQ * V), *y = malloc(sizeof(float) * SEQ * V);
            full_logits(&a, golden_tokens, SEQ, ITER9, 0, x);
            full_logits(&b, golden_tokens, SEQ, ITER9, 0, y);
            CHECK(max_abs_diff(x, y, (size_t)SEQ * V) > 1e-3, "llama3 factor 8 changed nothing");
            CHECK(max_abs_diff(x, y, V) == 0.0, "position 0 has no rotation: must be unchanged");
            free(x);
            free(y);
            runner_close(&b);
        }
        runner_close(&a);
    }
}

/* ---- 4. perplexity ---------------------------------------------------------------------------- */

/* Stored value: perplexity of stories260K on data/tinystories_val.txt, first 20 windows of 256
 * positions (BOS + 255 tokens, 5100 tokens scored), computed once by this runtime when the test
 * was written (1.496337 nats/token). Independent anchors: the nats/token of kv_perplexity equal
 * those from run.c's golden logits on the same ids (below), and the value is close to the nats
 * per token run.c's logits give on golden sequences 1 and 2 (val paragraphs 2 and 4). */
#define PPL_WINDOWS     20
#define PPL_CTX         256
#define PPL_STORED_NATS 1.496337

/* ids of the val text (no BOS); count, or -1 with a failed check */
static int val_text_ids(int **ids) {
    kv_error err = {0};
    kv_tokenizer *tk = NULL;
    char *text = NULL;
    size_t n_text = 0;
    int n_ids = -1;
    *ids = NULL;
    if (kv_tokenizer_load(&tk, MODEL_DIR "/tokenizer.json", &err) ||
        kv_read_file(VAL_TEXT, &text, &n_text, 1 << 24, &err) ||
        kv_tokenizer_encode(tk, text, n_text, 0, ids, &n_ids, &err)) {
        CHECK(0, "val text: %s", err.msg);
        n_ids = -1;
    }
    free(text);
    kv_tokenizer_free(tk);
    return n_ids;
}

/* kv_argmax = the one-pass loop (the first i with x[i] > x[best] so far) on every length 0..40
 * and a vocabulary's, with ties (values from a set of 5), NaNs, infinities and signed zeros */
static int argmax_loop(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void test_argmax(void) {
    enum { N_MAX = 32003 };
    static float x[N_MAX];
    const float values[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1.5f, -2.0f};
    int mismatches = 0, cases = 0;
    for (int trial = 0; trial < 400; trial++) {
        const int n = trial < 300 ? trial % 41 : N_MAX - trial % 7;
        const int kind = trial % 4; /* 0: distinct, 1: ties, 2: specials, 3: ties + specials */
        for (int i = 0; i < n; i++) {
            const float r = frand();
            x[i] = kind == 0   ? r
                   : kind == 1 ? (float)(int)(2.5f * r)
                               : values[(int)((r + 1.0f) * 3.5f) % 7];
            if (kind == 3 && i % 3) x[i] = (float)(int)(2.5f * r);
        }
        mismatches += kv_argmax(x, n) != argmax_loop(x, n);
        cases++;
    }
    CHECK(mismatches == 0, "kv_argmax differs from the one-pass loop in %d of %d arrays",
          mismatches, cases);
}

static void test_perplexity(void) {
    kv_error err = {0};
    /* the nats/token of golden sequences 1 and 2 (TinyStories val paragraphs) from run.c's own
     * logits equal those of kv_perplexity on the same ids */
    runner r;
    if (runner_open(&r, MODEL_DIR, 512, 64)) return;
    double golden_nats = 0.0;
    for (int b = 1; b < 3; b++) {
        const int32_t *tok = golden_tokens + b * SEQ;
        double want = 0.0;
        for (int t = 0; t + 1 < SEQ; t++)
            want += kv_cross_entropy(golden_logits + ((size_t)b * SEQ + t) * V, V, tok[t + 1]);
        kv_ppl_opts o = {.ctx = SEQ, .bos = -1};
        kv_ppl_result res;
        CHECK(kv_perplexity(&r.s, tok, SEQ, &o, NULL, NULL, &res, &err) == 0, "%s", err.msg);
        CHECK(res.n_scored == SEQ - 1 && res.n_windows == 1, "scored %ld in %d windows",
              res.n_scored, res.n_windows);
        CHECK_NEAR(res.nats / res.n_scored, want / (SEQ - 1), 1e-5, "nats/token vs run.c logits");
        golden_nats += want / (SEQ - 1) / 2;
    }
    /* windows: every id scored once, with BOS */
    {
        int32_t ids[300];
        for (int i = 0; i < 300; i++) ids[i] = golden_tokens[SEQ + 1 + i % 63];
        kv_ppl_opts o = {.ctx = 100, .bos = 1};
        kv_ppl_result res;
        CHECK(kv_perplexity(&r.s, ids, 300, &o, NULL, NULL, &res, &err) == 0, "%s", err.msg);
        CHECK(res.n_scored == 300 && res.n_windows == 4 && res.n_ids_used == 300,
              "300 ids in windows of 99: scored %ld, %d windows", res.n_scored, res.n_windows);
        o.max_windows = 2;
        CHECK(kv_perplexity(&r.s, ids, 300, &o, NULL, NULL, &res, &err) == 0, "%s", err.msg);
        CHECK(res.n_scored == 198 && res.n_ids_used == 198, "2 windows: scored %ld", res.n_scored);
    }
    /* the val text */
    int *ids = NULL, n_ids = val_text_ids(&ids);
    if (n_ids >= 0) {
        kv_ppl_opts o = {.ctx = PPL_CTX, .bos = 1, .max_windows = PPL_WINDOWS};
        kv_ppl_result res;
        CHECK(kv_perplexity(&r.s, ids, n_ids, &o, NULL, NULL, &res, &err) == 0, "%s", err.msg);
        const double nats = res.nats / (double)res.n_scored;
        printf("perplexity: stories260K on %d windows of %d: %.6f nats/token (%ld tokens)\n",
               res.n_windows, PPL_CTX, nats, res.n_scored);
        CHECK(nats > 0.5 && nats < 4.0 && fabs(nats - golden_nats) < 0.5,
              "implausible: %g nats/token (run.c on two val paragraphs: %g)", nats, golden_nats);
        CHECK_NEAR(nats, PPL_STORED_NATS, 1e-4, "stored perplexity");
    }
    free(ids);
    runner_close(&r);
}

/* ---- 4b. BF16 KV cache ----------------------------------------------------------------------
 * Half the bytes of the F32 cache for every map; all arithmetic stays F32, only the cached K/V
 * are rounded. Measured on stories260K (2026-12-03): logits within 0.30 of run.c's (the model's
 * logits span about +-20), argmax unchanged at 192 of 192 golden positions, val nats/token
 * +0.00017; prefill+decode against one pass 0.0007-0.0033 (sgemm and sgemv K/V can round to
 * different BF16 neighbours). */
static void test_bf16_cache(void) {
    kv_error err = {0};
    runner f, b;
    if (runner_open(&f, MODEL_DIR, 512, 64)) return;
    if (runner_open_cache(&b, MODEL_DIR, 512, 64, KV_BF16)) {
        runner_close(&f);
        return;
    }
    CHECK(b.s.cache.dtype == KV_BF16 && 2 * b.s.cache.bytes == f.s.cache.bytes,
          "BF16 cache %zu bytes, F32 %zu", b.s.cache.bytes, f.s.cache.bytes);
    float *out = malloc(sizeof(float) * SEQ * V), *pd = malloc(sizeof(float) * SEQ * V);
    double worst = 0.0;
    int agree = 0;
    for (int s = 0; s < 3; s++) {
        const float *want = golden_logits + (size_t)s * SEQ * V;
        if (full_logits(&b, golden_tokens + s * SEQ, SEQ, ITER9, 0, out)) break;
        double d = max_abs_diff(out, want, (size_t)SEQ * V);
        if (d > worst) worst = d;
        for (int t = 0; t < SEQ; t++)
            agree += kv_argmax(out + (size_t)t * V, V) == kv_argmax(want + (size_t)t * V, V);
    }
    printf("bf16 cache: logits vs run.c max |diff| %.5f, argmax agrees at %d of %d\n", worst, agree,
           3 * SEQ);
    CHECK(worst < 0.5, "BF16 cache: logits off run.c's by %g", worst);
    CHECK(agree >= 3 * SEQ - 3, "BF16 cache: argmax agrees at only %d of %d positions", agree,
          3 * SEQ);
    /* prefill + decode over a BF16 cache = the one-pass forward (same rounding of the same K/V) */
    if (full_logits(&b, golden_tokens + SEQ, SEQ, ITER9, 0, out) == 0 &&
        prefill_decode_logits(&b, golden_tokens + SEQ, SEQ, 24, ITER9, pd) == 0) {
        double d = max_abs_diff(pd, out + (size_t)23 * V, (size_t)(SEQ - 23) * V);
        printf("bf16 cache: prefill+decode vs one pass %.2g\n", d);
        CHECK(d <= 1e-2, "BF16 cache: prefill+decode differs from one pass by %g", d);
    }
    /* perplexity on the val text: close to the F32 cache's */
    int *ids = NULL, n_ids = val_text_ids(&ids);
    if (n_ids >= 0) {
        kv_ppl_opts o = {.ctx = PPL_CTX, .bos = 1, .max_windows = PPL_WINDOWS};
        kv_ppl_result rf, rb;
        CHECK(kv_perplexity(&f.s, ids, n_ids, &o, NULL, NULL, &rf, &err) == 0, "%s", err.msg);
        CHECK(kv_perplexity(&b.s, ids, n_ids, &o, NULL, NULL, &rb, &err) == 0, "%s", err.msg);
        const double nf = rf.nats / (double)rf.n_scored, nb = rb.nats / (double)rb.n_scored;
        printf("bf16 cache: val nats/token %.6f (F32 cache %.6f)\n", nb, nf);
        CHECK(fabs(nb - nf) < 0.005 && nb != nf, "BF16 cache: %g nats/token, F32 %g", nb, nf);
    }
    free(ids);
    runner_close(&b);
    runner_close(&f);
    /* transformed maps (the last: SwiftKV l=3 g=1, 3 + 2 slots): half the bytes, consistent
     * prefill/decode */
    static const char *specs[] = {"pizza-top:3", "lasagna-bottom:3", "swiftkv l=3 g=1"};
    for (size_t i = 0; i < 3; i++) {
        kv_map m;
        const int swift = i == 2;
        const char *dir = swift ? make_swiftkv(3, 1, 0) : make_cross(specs[i], &m);
        if (runner_open_cache(&b, dir, 128, 64, KV_BF16)) continue;
        const size_t want = (size_t)2 * (swift ? 5 : n_kv_layers(&m)) * 4 * 8 * 2 * 128;
        CHECK(b.s.cache.bytes == want, "%s BF16: %zu bytes, formula %zu", specs[i], b.s.cache.bytes,
              want);
        kv_prefill pf = {.mode = KV_PREFILL_ITERATIVE, .passes = SEQ};
        full_logits(&b, golden_tokens, SEQ, pf, swift, out);
        prefill_decode_logits(&b, golden_tokens, SEQ, 24, SEQUENTIAL, pd);
        double d = max_abs_diff(pd, out + (size_t)23 * V, (size_t)(SEQ - 23) * V);
        printf("bf16 cache %s: prefill+decode vs iterative:T %.2g\n", specs[i], d);
        CHECK(d <= 1e-2, "%s BF16: prefill+decode vs iterative:T %g", specs[i], d);
        runner_close(&b);
    }
    kv_model mm;
    if (kv_model_load(&mm, MODEL_DIR, NULL, &err) == 0) {
        kv_state s2;
        CHECK(kv_state_init(&s2, &cpu, &mm, 16, 8, KV_F16, &err) == KV_EINVAL &&
                  strstr(err.msg, "F16"),
              "an F16 cache is refused: '%s'", err.msg);
        kv_model_free(&mm);
    }
    free(out);
    free(pd);
}

/* ---- 5. errors ---------------------------------------------------------------------------------- */

static void test_errors(void) {
    kv_error err = {0};
    kv_prefill p;
    CHECK(kv_prefill_parse(&p, "iterative:4", &err) == 0 && p.passes == 4, "iterative:4");
    CHECK(kv_prefill_parse(&p, "sequential", &err) == 0 && p.mode == KV_PREFILL_SEQUENTIAL,
          "sequential");
    CHECK(kv_prefill_parse(&p, "iterative", &err) == 0 && p.passes == 9, "iterative");
    CHECK(kv_prefill_parse(&p, "iterative:0", &err) != 0, "iterative:0 accepted");
    CHECK(kv_prefill_parse(&p, "iterative:x", &err) != 0, "iterative:x accepted");
    CHECK(kv_prefill_parse(&p, "parallel", &err) != 0, "parallel accepted");
    CHECK(kv_prefill_parse(&p, "iterative:4", &err) == 0 && !p.block, "iterative: per group");
    CHECK(kv_prefill_parse(&p, "iterative-block:5", &err) == 0 && p.block && p.passes == 5 &&
              p.mode == KV_PREFILL_ITERATIVE,
          "iterative-block:5");
    CHECK(kv_prefill_parse(&p, "iterative-block", &err) == 0 && p.block && p.passes == 9,
          "iterative-block");
    CHECK(kv_prefill_parse(&p, "iterative-block:0", &err) != 0, "iterative-block:0 accepted");
    CHECK(kv_prefill_parse(&p, "iterative-blocks", &err) != 0, "iterative-blocks accepted");
    CHECK(kv_prefill_parse(&p, "iterativex", &err) != 0, "iterativex accepted");
    runner r;
    if (runner_open(&r, MODEL_DIR, 16, 8)) return;
    int32_t tok[20] = {1, 2, 3};
    CHECK(kv_forward(&r.s, tok, 17, NULL, NULL, &err) == KV_EINVAL && strstr(err.msg, "context"),
          "17 tokens in 16 positions: '%s'", err.msg);
    tok[1] = 512;
    kv_state_reset(&r.s);
    CHECK(kv_forward(&r.s, tok, 3, NULL, NULL, &err) != 0 && strstr(err.msg, "512"),
          "token 512 of 512: '%s'", err.msg);
    kv_forward_opts all = {.logits = KV_LOGITS_ALL};
    CHECK(kv_forward(&r.s, tok, 1, &all, NULL, &err) == KV_EINVAL, "all logits without a buffer");
    kv_state s2;
    CHECK(kv_state_init(&s2, &cpu, &r.m, 513, 8, KV_F32, &err) == KV_EINVAL,
          "context beyond max_position_embeddings");
    runner_close(&r);
    kv_model m;
    CHECK(kv_model_load(&m, SHARED_DIR "/models/llama2-tokenizer", NULL, &err) != 0,
          "tokenizer-only dir loads");
}

/* ---- 6. the backend seam -------------------------------------------------------------------- */

/* A second backend: the CPU's ops behind a table that counts every call and checks every device
 * pointer it is given (with the bytes the op touches) against the regions it handed out. alloc
 * and map are its own: page-aligned regions of one mmap'd pool, map a copy (so a weight read
 * from the model rather than through its view is caught). With unified = 0 the pool is
 * PROT_NONE between ops, so any host read or write of device memory outside an op faults, as it
 * would on a GPU; logits then come back by download and the RoPE table is uploaded. With
 * unified = 1 the forward may hand an op host memory the backend did not allocate only where
 * backend.h says so: the caller's logits buffer and the RoPE table kv_backend_rope_table
 * returns (the host table itself). */
enum {
    TR_ALLOC,
    TR_FREE,
    TR_MAP,
    TR_UNMAP,
    TR_UPLOAD,
    TR_DOWNLOAD,
    TR_ZERO,
    TR_COPY,
    TR_CONVERT,
    TR_STORE_HEADS,
    TR_SYNC,
    TR_MATMUL,
    TR_RMSNORM,
    TR_ROPE,
    TR_ATTENTION,
    TR_SWIGLU,
    TR_EMBEDDING,
    TR_N
};
static const char *const tr_names[TR_N] = {
    "alloc",   "free", "map",       "unmap",       "upload",   "download",
    "zero",    "copy", "convert",   "store_heads", "sync",     "matmul",
    "rmsnorm", "rope", "attention", "swiglu",      "embedding"};

enum { TR_REGIONS = 512, TR_LENT = 4 };
#define TR_POOL ((size_t)16 << 20) /* stories260K's state and weight copies take about 2 MB */

typedef struct {
    const kv_backend_ops *cpu; /* what runs each op */
    unsigned char *pool; /* [TR_POOL], handed out page by page, never reused */
    size_t used;
    struct {
        unsigned char *p;
        size_t bytes;
    } r[TR_REGIONS]; /* live regions */
    int n;
    struct {
        const char *p;
        size_t bytes;
    } lent[TR_LENT]; /* unified only: host memory the forward may pass (see above) */
    int n_lent;
    long calls[TR_N];
    long outside; /* pointers in no region */
    char first[200]; /* the first of them */
} tracker;

static tracker *tr_of(kv_backend *b) { return b->impl; }

/* the pool readable and writable (an op runs) or not (between ops; non-unified only) */
static void tr_access(kv_backend *b, int open) {
    tracker *t = tr_of(b);
    if (!b->unified && mprotect(t->pool, TR_POOL, open ? PROT_READ | PROT_WRITE : PROT_NONE))
        CHECK(0, "mprotect");
}

/* p[0 .. bytes) must lie inside one region (or, unified, one lent buffer) */
static void tr_need(kv_backend *b, int op, const char *arg, const void *p, size_t bytes) {
    tracker *t = tr_of(b);
    const unsigned char *q = p;
    for (int i = 0; i < t->n; i++)
        if (q >= t->r[i].p && q + bytes <= t->r[i].p + t->r[i].bytes) return;
    for (int i = 0; b->unified && i < t->n_lent; i++) {
        const char *c = p, *l = t->lent[i].p;
        if (c >= l && c + bytes <= l + t->lent[i].bytes) return;
    }
    if (!t->outside++)
        snprintf(t->first, sizeof t->first, "%s: %s = %p (%zu bytes) is not the backend's",
                 tr_names[op], arg, p, bytes);
}

static void tr_lend(kv_backend *b, const void *p, size_t bytes) {
    tracker *t = tr_of(b);
    if (t->n_lent < TR_LENT) {
        t->lent[t->n_lent].p = p;
        t->lent[t->n_lent++].bytes = bytes;
    }
}

/* a fresh, zeroed region (called with the pool open) */
static int tr_new(kv_backend *b, void **dptr, size_t bytes, kv_error *err) {
    tracker *t = tr_of(b);
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), len = (bytes + page) / page * page;
    if (t->n == TR_REGIONS || len > TR_POOL - t->used)
        return kv_fail(err, KV_ENOMEM, "tracked: no room for %zu bytes", bytes);
    unsigned char *p = t->pool + t->used;
    t->used += len;
    memset(p, 0, bytes);
    t->r[t->n].p = p;
    t->r[t->n++].bytes = bytes;
    *dptr = p;
    return 0;
}

static void tr_drop(kv_backend *b, int op, const void *dptr) {
    tracker *t = tr_of(b);
    t->calls[op]++;
    if (!dptr) return;
    for (int i = 0; i < t->n; i++)
        if (t->r[i].p == dptr) {
            t->r[i] = t->r[--t->n];
            return;
        }
    tr_need(b, op, "dptr", dptr, 1); /* not one of ours: counted as outside */
}

static int tr_alloc(kv_backend *b, void **dptr, size_t bytes, kv_error *err) {
    tr_of(b)->calls[TR_ALLOC]++;
    tr_access(b, 1);
    int rc = tr_new(b, dptr, bytes, err);
    tr_access(b, 0);
    return rc;
}

static void tr_free(kv_backend *b, void *dptr) { tr_drop(b, TR_FREE, dptr); }

static int tr_map(kv_backend *b, const void **dptr, const void *host_src, size_t bytes,
                  kv_error *err) {
    tr_of(b)->calls[TR_MAP]++;
    void *p;
    tr_access(b, 1);
    int rc = tr_new(b, &p, bytes, err);
    if (!rc) memcpy(p, host_src, bytes), *dptr = p;
    tr_access(b, 0);
    return rc;
}

static void tr_unmap(kv_backend *b, const void *dptr) { tr_drop(b, TR_UNMAP, dptr); }

#define TR_RUN(b, call)                                                                            \
    do {                                                                                           \
        tr_access(b, 1);                                                                           \
        int rc_ = tr_of(b)->cpu->call;                                                             \
        tr_access(b, 0);                                                                           \
        return rc_;                                                                                \
    } while (0)

static int tr_upload(kv_backend *b, void *dst, const void *host_src, size_t bytes, kv_error *err) {
    tr_of(b)->calls[TR_UPLOAD]++;
    tr_need(b, TR_UPLOAD, "dst", dst, bytes);
    TR_RUN(b, upload(b, dst, host_src, bytes, err));
}

static int tr_download(kv_backend *b, void *host_dst, const void *src, size_t bytes,
                       kv_error *err) {
    tr_of(b)->calls[TR_DOWNLOAD]++;
    tr_need(b, TR_DOWNLOAD, "src", src, bytes);
    TR_RUN(b, download(b, host_dst, src, bytes, err));
}

static int tr_zero(kv_backend *b, void *dst, size_t bytes, kv_error *err) {
    tr_of(b)->calls[TR_ZERO]++;
    tr_need(b, TR_ZERO, "dst", dst, bytes);
    TR_RUN(b, zero(b, dst, bytes, err));
}

static int tr_copy(kv_backend *b, void *dst, const void *src, size_t bytes, kv_error *err) {
    tr_of(b)->calls[TR_COPY]++;
    tr_need(b, TR_COPY, "dst", dst, bytes);
    tr_need(b, TR_COPY, "src", src, bytes);
    TR_RUN(b, copy(b, dst, src, bytes, err));
}

static int tr_convert(kv_backend *b, void *dst, kv_dtype dst_type, const void *src,
                      kv_dtype src_type, size_t n, kv_error *err) {
    tr_of(b)->calls[TR_CONVERT]++;
    tr_need(b, TR_CONVERT, "dst", dst, n * kv_dtype_size(dst_type));
    tr_need(b, TR_CONVERT, "src", src, n * kv_dtype_size(src_type));
    TR_RUN(b, convert(b, dst, dst_type, src, src_type, n, err));
}

static int tr_store_heads(kv_backend *b, void *dst, kv_dtype dst_type, size_t head_pitch,
                          const float *src, int T, int n_heads, int head_dim, kv_error *err) {
    tr_of(b)->calls[TR_STORE_HEADS]++;
    const size_t hd = (size_t)head_dim;
    if (n_heads > 0 && T > 0)
        tr_need(b, TR_STORE_HEADS, "dst", dst,
                kv_dtype_size(dst_type) * ((size_t)(n_heads - 1) * head_pitch + (size_t)T * hd));
    tr_need(b, TR_STORE_HEADS, "src", src, sizeof(float) * (size_t)T * n_heads * hd);
    TR_RUN(b, store_heads(b, dst, dst_type, head_pitch, src, T, n_heads, head_dim, err));
}

static int tr_sync(kv_backend *b, kv_error *err) {
    tr_of(b)->calls[TR_SYNC]++;
    return tr_of(b)->cpu->sync(b, err);
}

static int tr_matmul(kv_backend *b, float *out, const float *x, const void *W, kv_dtype w_type,
                     const float *bias, int T, int n_in, int n_out, int accumulate, kv_error *err) {
    tr_of(b)->calls[TR_MATMUL]++;
    const size_t rows = (size_t)T, in = (size_t)n_in, o = (size_t)n_out;
    tr_need(b, TR_MATMUL, "out", out, 4 * rows * o);
    tr_need(b, TR_MATMUL, "x", x, 4 * rows * in);
    tr_need(b, TR_MATMUL, "W", W, kv_dtype_size(w_type) * o * in);
    if (bias) tr_need(b, TR_MATMUL, "bias", bias, 4 * o);
    TR_RUN(b, matmul(b, out, x, W, w_type, bias, T, n_in, n_out, accumulate, err));
}

static int tr_rmsnorm(kv_backend *b, float *out, const float *x, const float *w, int T, int dim,
                      float eps, kv_error *err) {
    tr_of(b)->calls[TR_RMSNORM]++;
    tr_need(b, TR_RMSNORM, "out", out, 4 * (size_t)T * dim);
    tr_need(b, TR_RMSNORM, "x", x, 4 * (size_t)T * dim);
    tr_need(b, TR_RMSNORM, "w", w, 4 * (size_t)dim);
    TR_RUN(b, rmsnorm(b, out, x, w, T, dim, eps, err));
}

static int tr_rope(kv_backend *b, float *x, int T, int n_heads, const int32_t *pos,
                   const kv_rope_table *table, kv_error *err) {
    tr_of(b)->calls[TR_ROPE]++;
    const size_t half = (size_t)table->max_pos * (size_t)(table->head_dim / 2);
    tr_need(b, TR_ROPE, "x", x, 4 * (size_t)T * n_heads * table->head_dim);
    tr_need(b, TR_ROPE, "pos", pos, 4 * (size_t)T);
    tr_need(b, TR_ROPE, "table->cos", table->cos, 4 * half);
    tr_need(b, TR_ROPE, "table->sin", table->sin, 4 * half);
    TR_RUN(b, rope(b, x, T, n_heads, pos, table, err));
}

static int tr_attention(kv_backend *b, float *out, const float *q, const void *k, const void *v,
                        kv_dtype cache_type, int head_rows, int T, int pos0, int S, int n_heads,
                        int n_kv_heads, int head_dim, kv_attn_mask mask, int window, int ring,
                        kv_error *err) {
    tr_of(b)->calls[TR_ATTENTION]++;
    const size_t qb = 4 * (size_t)T * n_heads * head_dim;
    const size_t rows = (size_t)(head_rows ? head_rows : ring ? ring : S);
    const size_t kb = kv_dtype_size(cache_type) * rows * n_kv_heads * head_dim;
    tr_need(b, TR_ATTENTION, "out", out, qb);
    tr_need(b, TR_ATTENTION, "q", q, qb);
    tr_need(b, TR_ATTENTION, "k", k, kb);
    tr_need(b, TR_ATTENTION, "v", v, kb);
    TR_RUN(b, attention(b, out, q, k, v, cache_type, head_rows, T, pos0, S, n_heads, n_kv_heads,
                        head_dim, mask, window, ring, err));
}

static int tr_swiglu(kv_backend *b, float *h, const float *gate, const float *up, int T, int n,
                     kv_error *err) {
    tr_of(b)->calls[TR_SWIGLU]++;
    const size_t bytes = 4 * (size_t)T * n;
    tr_need(b, TR_SWIGLU, "h", h, bytes);
    tr_need(b, TR_SWIGLU, "gate", gate, bytes);
    tr_need(b, TR_SWIGLU, "up", up, bytes);
    TR_RUN(b, swiglu(b, h, gate, up, T, n, err));
}

static int tr_embedding(kv_backend *b, float *out, const float *table, int vocab, int dim,
                        const int32_t *host_ids, int T, kv_error *err) {
    tr_of(b)->calls[TR_EMBEDDING]++;
    tr_need(b, TR_EMBEDDING, "out", out, 4 * (size_t)T * dim);
    tr_need(b, TR_EMBEDDING, "table", table, 4 * (size_t)vocab * dim);
    TR_RUN(b, embedding(b, out, table, vocab, dim, host_ids, T, err));
}

/* the forward's ops only: a loss, backward or optimiser call would be a NULL call (a crash) */
static const kv_backend_ops tracked_ops = {.alloc = tr_alloc,
                                           .free = tr_free,
                                           .map = tr_map,
                                           .unmap = tr_unmap,
                                           .upload = tr_upload,
                                           .download = tr_download,
                                           .zero = tr_zero,
                                           .copy = tr_copy,
                                           .convert = tr_convert,
                                           .store_heads = tr_store_heads,
                                           .sync = tr_sync,
                                           .matmul = tr_matmul,
                                           .rmsnorm = tr_rmsnorm,
                                           .rope = tr_rope,
                                           .attention = tr_attention,
                                           .swiglu = tr_swiglu,
                                           .embedding = tr_embedding};

/* SIGSEGV while the guard is on: a probe (faults()) jumps back; anything else is the host
 * touching device memory outside an op, a failure named before the test stops */
static sigjmp_buf fault_jmp;
static volatile sig_atomic_t probing;
static void on_fault(int sig) {
    (void)sig;
    if (probing) siglongjmp(fault_jmp, 1);
    static const char msg[] = "FAIL test_runtime: backend seam: the host touched device memory "
                              "outside an op (SIGSEGV)\n";
    if (write(2, msg, sizeof msg - 1) < 0) _exit(1);
    _exit(1);
}

static void guard_signal(int on) {
    static struct sigaction old;
    struct sigaction sa = {.sa_handler = on_fault};
    sigemptyset(&sa.sa_mask);
    if (on) sigaction(SIGSEGV, &sa, &old);
    else sigaction(SIGSEGV, &old, NULL);
}

/* 1 when reading *p faults (the guard between ops is on) */
static int faults(const volatile float *p) {
    int faulted = 1;
    probing = 1;
    if (!sigsetjmp(fault_jmp, 1)) {
        (void)*p;
        faulted = 0;
    }
    probing = 0;
    return faulted;
}

/* the same forwards on the CPU backend and the tracked one: logits bit-identical, every pointer
 * the backend's, every buffer given back at kv_state_free */
static void seam_check(const char *what, const char *dir, kv_dtype cache, int unified) {
    static tracker t;
    t = (tracker){.cpu = cpu.ops};
    t.pool = mmap(NULL, TR_POOL, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (t.pool == MAP_FAILED) {
        CHECK(0, "%s: cannot map the tracked pool", what);
        return;
    }
    kv_backend tb = {.ops = &tracked_ops,
                     .device = KV_DEVICE_CPU,
                     .unified = unified,
                     .threads = cpu.threads,
                     .name = "tracked",
                     .impl = &t};
    kv_error err = {0};
    const char *mode = unified ? "unified" : "discrete";
    runner r;
    if (runner_open_cache(&r, dir, 128, 16, cache)) { /* 16-token passes: SEQ in chunks */
        munmap(t.pool, TR_POOL);
        return;
    }
    runner tr = {0}; /* the same model on the tracked backend */
    int rc = kv_state_init(&tr.s, &tb, &r.m, 128, 16, cache, &err);
    CHECK(rc == 0, "%s: tracked state: %s", what, err.msg);
    if (rc) {
        runner_close(&r);
        munmap(t.pool, TR_POOL);
        return;
    }
    const long maps = t.calls[TR_MAP];
    CHECK(maps > 0 && t.calls[TR_UPLOAD] >= 1 + !unified, "%s: %ld maps, %ld uploads", what, maps,
          t.calls[TR_UPLOAD]);
    if (!unified) CHECK(faults(tr.s.x), "%s: the guard is off: the host read device memory", what);
    const size_t bytes = sizeof(float) * SEQ * V;
    float *want = malloc(bytes), *got = malloc(bytes);
    if (unified) {
        const size_t half = sizeof(float) * 128 * (size_t)(r.m.dims.head_dim / 2); /* max_seq */
        tr_lend(&tb, tr.s.rope.cos, half);
        tr_lend(&tb, tr.s.rope.sin, half);
        tr_lend(&tb, got, bytes);
    }
    /* all positions in 16-token passes; a prefill in such passes then 8 decode steps. The
     * guard costs two mprotect calls an op (about 70 us here), so the discrete run is shorter:
     * iterative:2 (the same ops as :9, fewer times), no sequential prefill (its ops are the
     * decode steps') */
    const kv_prefill pfs[2] = {
        unified ? ITER9 : (kv_prefill){.mode = KV_PREFILL_ITERATIVE, .passes = 2}, SEQUENTIAL};
    const int T = unified ? SEQ : 32, P = T - 8;
    for (int k = 0; k < (r.s.has_upward && unified ? 2 : 1); k++) {
        const char *how = k ? "sequential" : unified ? "iterative:9" : "iterative:2";
        full_logits(&r, golden_tokens + SEQ, T, pfs[k], 0, want);
        full_logits(&tr, golden_tokens + SEQ, T, pfs[k], 0, got);
        CHECK(memcmp(want, got, sizeof(float) * T * V) == 0,
              "%s (%s, %s): all-position logits differ by %g", what, mode, how,
              max_abs_diff(want, got, (size_t)T * V));
        prefill_decode_logits(&r, golden_tokens + SEQ, T, P, pfs[k], want);
        prefill_decode_logits(&tr, golden_tokens + SEQ, T, P, pfs[k], got);
        CHECK(memcmp(want, got, sizeof(float) * (T - P + 1) * V) == 0,
              "%s (%s, %s): prefill+decode logits differ", what, mode, how);
    }
    /* no output buffer: the state's host logits */
    kv_forward_opts last = {.logits = KV_LOGITS_LAST, .prefill = pfs[0]};
    kv_state_reset(&r.s);
    kv_state_reset(&tr.s);
    CHECK(kv_forward(&r.s, golden_tokens, 20, &last, NULL, &err) == 0 &&
              kv_forward(&tr.s, golden_tokens, 20, &last, NULL, &err) == 0,
          "%s", err.msg);
    CHECK(memcmp(r.s.logits, tr.s.logits, sizeof(float) * V) == 0, "%s: s->logits differ", what);
    /* one 16-token pass, all logits: the ops a layer is made of, counted */
    memset(t.calls, 0, sizeof t.calls);
    kv_forward_opts all = {.logits = KV_LOGITS_ALL, .prefill = pfs[0]};
    kv_state_reset(&tr.s);
    CHECK(kv_forward(&tr.s, golden_tokens, 16, &all, got, &err) == 0, "%s", err.msg);
    printf("seam %s (%s): one pass:", what, mode);
    for (int i = 0; i < TR_N; i++)
        if (t.calls[i]) printf(" %s %ld", tr_names[i], t.calls[i]);
    printf("\n");
    if (!strcmp(what, "original")) {
        CHECK(t.calls[TR_MATMUL] == 7 * L + 1 && t.calls[TR_RMSNORM] == 2 * L + 1 &&
                  t.calls[TR_ROPE] == 2 * L && t.calls[TR_ATTENTION] == L &&
                  t.calls[TR_SWIGLU] == L && t.calls[TR_EMBEDDING] == 1 &&
                  t.calls[TR_DOWNLOAD] == !unified && t.calls[TR_ALLOC] == 0,
              "original: op counts of one pass");
    }
    CHECK(t.outside == 0, "%s (%s): %ld pointers from outside the backend; first: %s", what, mode,
          t.outside, t.first);
    kv_state_free(&tr.s);
    CHECK(t.n == 0, "%s: %d regions left after kv_state_free", what, t.n);
    CHECK(t.calls[TR_UNMAP] == maps, "%s: %ld maps, %ld unmaps", what, maps, t.calls[TR_UNMAP]);
    free(want);
    free(got);
    runner_close(&r);
    munmap(t.pool, TR_POOL);
}

static void test_backend_seam(void) {
    kv_map m;
    for (int unified = 1; unified >= 0; unified--) {
        if (!unified) guard_signal(1);
        seam_check("original", MODEL_DIR, KV_F32, unified);
        seam_check("original, BF16 cache", MODEL_DIR, KV_BF16, unified);
        seam_check("pizza-top:3", make_cross("pizza-top:3", &m), KV_F32, unified);
        seam_check("lasagna-top:2, BF16 cache", make_cross("lasagna-top:2", &m), KV_BF16, unified);
        seam_check("swiftkv l=3 g=2", make_swiftkv(3, 2, 0), KV_F32, unified);
    }
    guard_signal(0);
}

/* Weights copied into the arena 4 MiB of the file at a time (runtime/model.c, copy_tensor): an
 * embedding of several chunks, not a whole number of them, as stored (F32, BF16) and widened
 * (BF16 -> F32), holds the values the file's mapping holds, at every element. */
static void test_chunked_copy(void) {
    for (int k = 0; k < 2; k++) {
        synth_spec s;
        synth_preset(&s, "tiny");
        s.vocab = 70001; /* embedding 70001 x 64: 17.9 MB of F32, 9.0 MB of BF16 */
        s.tied = 0;
        s.dtype = k ? KV_BF16 : KV_F32;
        char dir[300];
        snprintf(dir, sizeof dir, "%s/chunked-%s", tmp_root, kv_dtype_name(s.dtype));
        kv_error err = {0};
        if (synth_write(dir, &s, &err)) {
            CHECK(0, "synth %s: %s", dir, err.msg);
            continue;
        }
        const kv_model_opts mapped_opts = {.map_file = 1}, widen_opts = {.widen_f32 = 1};
        kv_model mapped, copied, widened;
        if (kv_model_load(&mapped, dir, &mapped_opts, &err)) {
            CHECK(0, "load %s mapped: %s", dir, err.msg);
            continue;
        }
        const size_t n = (size_t)s.vocab * (size_t)s.hidden, es = kv_dtype_size(s.dtype);
        if (kv_model_load(&copied, dir, NULL, &err) == 0) {
            CHECK(copied.embed != mapped.embed && copied.lm_head != mapped.lm_head &&
                      !memcmp(copied.embed, mapped.embed, n * es) &&
                      !memcmp(copied.lm_head, mapped.lm_head, n * es),
                  "%s: copied embedding and head = the file's", kv_dtype_name(s.dtype));
            kv_model_free(&copied);
        } else CHECK(0, "load %s: %s", dir, err.msg);
        if (k && kv_model_load(&widened, dir, &widen_opts, &err) == 0) {
            float *want = malloc(n * sizeof *want);
            CHECK(want && widened.mat_type == KV_F32 &&
                      !kv_dtype_cast(want, KV_F32, mapped.embed, KV_BF16, n) &&
                      !memcmp(widened.embed, want, n * sizeof *want) &&
                      !kv_dtype_cast(want, KV_F32, mapped.lm_head, KV_BF16, n) &&
                      !memcmp(widened.lm_head, want, n * sizeof *want),
                  "BF16 widened in chunks = the file's values widened");
            free(want);
            kv_model_free(&widened);
        } else if (k) CHECK(0, "load %s widened: %s", dir, err.msg);
        kv_model_free(&mapped);
    }
}

int main(void) {
    kv_error err = {0};
    kv_backend_cpu_init(&cpu, 2, &err);
    snprintf(tmp_root, sizeof tmp_root, "/tmp/kvforge-test-runtime-XXXXXX");
    if (!mkdtemp(tmp_root)) {
        CHECK(0, "mkdtemp");
        return check_done("test_runtime");
    }
    if (st_checkpoint_open(&orig, MODEL_DIR, &err) || st_open(&golden, GOLDEN_LOGITS, &err)) {
        CHECK(0, "fixtures: %s", err.msg);
        return check_done("test_runtime");
    }
    golden_tokens = st_find(&golden, "tokens")->data;
    golden_logits = st_find(&golden, "logits")->data;

    test_golden_logits();
    test_golden_greedy();
    test_prefill_flops();
    test_identity_map();
    test_cross_maps();
    test_swiftkv();
    test_table_source();
    test_iterative_close();
    test_group_plan();
    test_dtypes_and_layouts();
    test_chunked_copy();
    test_argmax();
    test_perplexity();
    test_bf16_cache();
    test_errors();
    test_backend_seam();

    st_close(&golden);
    st_checkpoint_close(&orig);
    kv_backend_free(&cpu);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp_root);
    return check_done("test_runtime");
}
