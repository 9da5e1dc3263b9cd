/* Hostile inputs built here, each parsed in a child process under a time and memory cap
 * (tests/bounded.h): the parsers must answer with a clear error (or succeed) in time and space
 * proportional to the input. Regression tests for the resource bugs of the hardening issue and
 * for the inputs the fuzz targets (tests/fuzz/) found. */
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>

#include "base/fileio.h"
#include "formats/bundle.h"
#include "formats/hfconfig.h"
#include "formats/llama_view.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "transform/synth/synth.h"
#include "transform/train/distill_chat.h"
#include "transform/train/distill_state.h"
#include "tests/bounded.h"
#include "tests/check.h"
#include "tests/fuzz/tok_variants.h"

static char tmpdir[] = "/tmp/kvhostile-XXXXXX";

/* in a child: prints why and fails the child */
#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL(child) %s:%d: %s: ", __FILE__, __LINE__, #cond);                 \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

/* runs fn under the caps and counts one CHECK for it */
static void bounded(const char *what, int (*fn)(void *), void *arg, size_t mem_mb, int max_secs) {
    char why[256];
    double secs = 0;
    int rc = bounded_run(fn, arg, mem_mb, max_secs, &secs, why, sizeof why);
    CHECK(rc == 0, "%s: %s after %.2f s (caps %zu MB, %d s)", what, why, secs, mem_mb, max_secs);
    printf("  %-52s %.3f s\n", what, secs);
}

/* growable string */
typedef struct {
    char *s;
    size_t n, cap;
} sbuf;

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->n : NULL, b->s ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) abort();
        if (b->s && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap : 256;
        while (cap <= b->n + (size_t)k) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) abort();
        b->s = p;
        b->cap = cap;
    }
}

/* ---- tokenizer: normalizer and decoder chains that double the text ---- */

/* {"model": BPE over vocab a=0 b=1} with `steps` Replace a->aa steps in the normalizer or the
 * decoder, and optionally a normalized added token "ab" */
static char *doubling_tokenizer(int steps, int in_decoder, int added) {
    sbuf b = {0};
    sb_printf(&b, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[]}");
    if (added)
        sb_printf(&b, ",\"added_tokens\":[{\"id\":2,\"content\":\"ab\",\"normalized\":true}]");
    sb_printf(&b, in_decoder ? ",\"decoder\":{\"type\":\"Sequence\",\"decoders\":["
                             : ",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[");
    for (int i = 0; i < steps; i++)
        sb_printf(&b, "%s{\"type\":\"Replace\",\"pattern\":{\"String\":\"a\"},\"content\":\"aa\"}",
                  i ? "," : "");
    sb_printf(&b, "]}}");
    return b.s;
}

static int normalizer_growth(void *arg) {
    (void)arg;
    kv_error err = {0};
    kv_tokenizer *t = NULL;
    int *ids = NULL, n = 0;
    /* 40 doublings: 2^40 bytes from one 'a' before the cap */
    char *json = doubling_tokenizer(40, 0, 0);
    int rc = kv_tokenizer_load_json(&t, json, strlen(json), "double.json", &err);
    free(json);
    EXPECT(rc == 0, "a doubling normalizer with no normalized added token loads: %s", err.msg);
    rc = kv_tokenizer_encode(t, "ba", 2, 0, &ids, &n, &err);
    EXPECT(rc == KV_EUNSUPPORTED && ids == NULL && strstr(err.msg, "normalizer") &&
               strstr(err.msg, "16 x"),
           "encode through 40 doublings: rc %d '%s'", rc, err.msg);
    /* text the chain does not grow still encodes */
    static char bs[1 << 16];
    memset(bs, 'b', sizeof bs);
    rc = kv_tokenizer_encode(t, bs, sizeof bs, 0, &ids, &n, &err);
    EXPECT(rc == 0 && n == (int)sizeof bs, "64 KiB of 'b': rc %d, %d ids '%s'", rc, n, err.msg);
    free(ids);
    kv_tokenizer_free(t);

    /* the same chain over a normalized added token fails at load, naming the token */
    json = doubling_tokenizer(40, 0, 1);
    rc = kv_tokenizer_load_json(&t, json, strlen(json), "double.json", &err);
    free(json);
    EXPECT(rc == KV_EUNSUPPORTED && !t && strstr(err.msg, "double.json") &&
               strstr(err.msg, "added_tokens[0]"),
           "normalized added token through 40 doublings: rc %d '%s'", rc, err.msg);

    /* within the cap (16 x + 4096 bytes) a growing chain works as before: 3 doublings */
    json = doubling_tokenizer(3, 0, 1);
    rc = kv_tokenizer_load_json(&t, json, strlen(json), "double3.json", &err);
    free(json);
    EXPECT(rc == 0, "3 doublings load: %s", err.msg);
    rc = kv_tokenizer_encode(t, "abb", 3, 0, &ids, &n,
                             &err); /* "aaaaaaaab" "b": the added token, then b */
    EXPECT(rc == 0 && n == 2 && ids[0] == 2 && ids[1] == 1,
           "3 doublings: 'abb' -> [2 1], rc %d n %d '%s'", rc, n, err.msg);
    free(ids);
    kv_tokenizer_free(t);

    /* more steps than any real pipeline: refused at load */
    json = doubling_tokenizer(300, 0, 0);
    rc = kv_tokenizer_load_json(&t, json, strlen(json), "long.json", &err);
    free(json);
    EXPECT(rc == KV_EUNSUPPORTED && !t && strstr(err.msg, "'normalizer'") &&
               strstr(err.msg, "steps"),
           "300 normalizer steps: rc %d '%s'", rc, err.msg);
    return 0;
}

static int decoder_growth(void *arg) {
    (void)arg;
    kv_error err = {0};
    kv_tokenizer *t = NULL;
    char *json = doubling_tokenizer(40, 1, 0), *text = NULL;
    int rc = kv_tokenizer_load_json(&t, json, strlen(json), "ddouble.json", &err);
    free(json);
    EXPECT(rc == 0, "doubling decoder loads: %s", err.msg);
    int ids[] = {1, 0, 1};
    rc = kv_tokenizer_decode(t, ids, 3, &text, &err);
    EXPECT(rc == KV_EUNSUPPORTED && !text && strstr(err.msg, "decoder"),
           "decode through 40 doublings: rc %d '%s'", rc, err.msg);
    rc = kv_tokenizer_decode(t, ids, 1, &text, &err);
    EXPECT(rc == 0 && text && !strcmp(text, "b"), "decode of 'b': rc %d '%s'", rc, err.msg);
    free(text);
    kv_tokenizer_free(t);

    json = doubling_tokenizer(300, 1, 0);
    rc = kv_tokenizer_load_json(&t, json, strlen(json), "long.json", &err);
    free(json);
    EXPECT(rc == KV_EUNSUPPORTED && !t && strstr(err.msg, "'decoder'") && strstr(err.msg, "steps"),
           "300 decoder steps: rc %d '%s'", rc, err.msg);
    return 0;
}

/* ---- tokenizer: tables sized by the largest id / by the vocab's bytes ---- */

static int sparse_ids(void *arg) {
    (void)arg;
    kv_error err = {0};
    kv_tokenizer *t = NULL;
    /* 66 bytes that used to allocate tables for 2^24 ids (262 MB) before finding the gap */
    static const char json[] =
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":16777215},\"merges\":[]}}";
    int rc = kv_tokenizer_load_json(&t, json, strlen(json), "sparse.json", &err);
    EXPECT(rc == KV_EFORMAT && !t && strstr(err.msg, "no token has id 0"),
           "one huge id: rc %d '%s'", rc, err.msg);
    /* the largest id in an added token */
    static const char json2[] =
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[]},"
        "\"added_tokens\":[{\"id\":16000000,\"content\":\"x\"}]}";
    rc = kv_tokenizer_load_json(&t, json2, strlen(json2), "sparse2.json", &err);
    EXPECT(rc == KV_EFORMAT && !t && strstr(err.msg, "no token has id 2"),
           "huge added id: rc %d '%s'", rc, err.msg);
    return 0;
}

/* 4000 tokens "a", "aa", ... (8 MB of token bytes, one distinct character pair): the pair table
 * used to be sized by the bytes (16 M slots, 256 MB) */
static int char_pairs(void *arg) {
    (void)arg;
    enum { N = 4000 };
    sbuf b = {0};
    char *tok = malloc(N + 1);
    EXPECT(tok != NULL, "malloc");
    sb_printf(&b, "{\"model\":{\"type\":\"BPE\",\"vocab\":{");
    for (int i = 0; i < N; i++) {
        memset(tok, 'a', (size_t)i + 1);
        tok[i + 1] = 0;
        sb_printf(&b, "%s\"%s\":%d", i ? "," : "", tok, i);
    }
    sb_printf(&b, "},\"merges\":[]}}");
    free(tok);
    kv_error err = {0};
    kv_tokenizer *t = NULL;
    int rc = kv_tokenizer_load_json(&t, b.s, b.n, "long_tokens.json", &err);
    free(b.s);
    EXPECT(rc == 0 && t, "long tokens load: rc %d '%s'", rc, err.msg);
    int *ids = NULL, n = 0;
    rc = kv_tokenizer_encode(t, "aaaa", 4, 0, &ids, &n, &err);
    EXPECT(rc == 0 && n == 4, "encode 'aaaa' (no merges: 4 ids): rc %d n %d", rc, n);
    free(ids);
    kv_tokenizer_free(t);
    return 0;
}

/* 100k added tokens all starting with 'e' ("eqqqq".."e" + 4 of q-z): each 'e' of the text was
 * compared with every one of them (seconds for 200 KB of prose); the trie walks one or two bytes */
static int added_prefix(void *arg) {
    (void)arg;
    enum { N = 100000 };
    sbuf b = {0};
    sb_printf(&b, "{\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{");
    for (int i = 0; i < 256; i++) sb_printf(&b, "%s\"<0x%02X>\":%d", i ? "," : "", i, i);
    sb_printf(&b, "},\"merges\":[]},\"added_tokens\":[");
    for (int i = 0; i < N; i++) {
        int v = i;
        char tok[8] = "e";
        for (int k = 1; k <= 5; k++, v /= 10) tok[k] = (char)('q' + v % 10);
        sb_printf(&b, "%s{\"id\":%d,\"content\":\"%s\"}", i ? "," : "", 256 + i, tok);
    }
    sb_printf(&b, "]}");
    kv_error err = {0};
    kv_tokenizer *t = NULL;
    int rc = kv_tokenizer_load_json(&t, b.s, b.n, "added.json", &err);
    free(b.s);
    EXPECT(rc == 0, "load: %s", err.msg);
    static const char line[] = "the seven sleepy elephants needed seventeen green trees ";
    size_t n = 200000, k = sizeof line - 1;
    char *text = malloc(n);
    EXPECT(text != NULL, "malloc");
    for (size_t i = 0; i < n; i++) text[i] = line[i % k];
    int *ids = NULL, n_ids = 0;
    rc = kv_tokenizer_encode(t, text, n, 0, &ids, &n_ids, &err);
    EXPECT(rc == 0 && n_ids == (int)n, "encode: rc %d, %d ids for %zu bytes (byte fallback) '%s'",
           rc, n_ids, n, err.msg);
    free(ids);
    /* an added token that is there still matches: "eqqqqq" is token 256 */
    rc = kv_tokenizer_encode(t, "xeqqqqqx", 8, 0, &ids, &n_ids, &err);
    EXPECT(rc == 0 && n_ids == 3 && ids[1] == 256, "match: rc %d n %d", rc, n_ids);
    free(ids);
    free(text);
    kv_tokenizer_free(t);
    /* an added token longer than 1024 bytes is refused at load */
    sbuf c = {0};
    sb_printf(&c, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"added_"
                  "tokens\":[{\"id\":1,"
                  "\"content\":\"");
    for (int i = 0; i < 1025; i++) sb_printf(&c, "x");
    sb_printf(&c, "\"}]}");
    rc = kv_tokenizer_load_json(&t, c.s, c.n, "long_added.json", &err);
    free(c.s);
    EXPECT(rc == KV_EUNSUPPORTED && !t && strstr(err.msg, "added_tokens[0]") &&
               strstr(err.msg, "1024"),
           "1025-byte added token: rc %d '%s'", rc, err.msg);
    return 0;
}

/* ---- sharded index ---- */

static char idx_dir[300];

/* 40k entries, each in a shard of its own, in reverse name order, none of the shards there:
 * used to take 43 s in a pairwise duplicate scan and an insertion sort */
static int index_many_shards(void *arg) {
    (void)arg;
    enum { N = 40000 };
    sbuf b = {0};
    sb_printf(&b, "{\"metadata\":{},\"weight_map\":{");
    for (int i = N - 1; i >= 0; i--)
        sb_printf(&b, "\"t.%06d\":\"model-%06d.safetensors\"%s", i, i, i ? "," : "");
    sb_printf(&b, "}}");
    st_index ix;
    kv_error err = {0};
    int rc = st_index_parse(&ix, b.s, b.n, "many.json", &err);
    EXPECT(rc == 0 && ix.n_entries == N && ix.n_shards == N, "parse: rc %d '%s'", rc, err.msg);
    EXPECT(!strcmp(ix.shards[0], "model-000000.safetensors") &&
               !strcmp(ix.entries[N - 1].tensor, "t.039999") && ix.entries[N - 1].shard == N - 1,
           "sorted");
    st_index_free(&ix);
    char path[400];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", idx_dir);
    EXPECT(kv_write_file_atomic(path, b.s, b.n, &err) == 0, "%s", err.msg);
    free(b.s);
    st_checkpoint c;
    rc = st_checkpoint_open(&c, idx_dir, &err);
    EXPECT(rc == KV_EIO && strstr(err.msg, "model-000000.safetensors") &&
               strstr(err.msg, "cannot open"),
           "missing first shard: rc %d '%s'", rc, err.msg);
    /* the same tensor listed twice (cJSON keeps both) */
    static const char dup[] = "{\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"a.safetensors\","
                              "\"x\":\"b.safetensors\"}}";
    rc = st_index_parse(&ix, dup, strlen(dup), "dup.json", &err);
    EXPECT(rc == KV_EFORMAT && strstr(err.msg, "dup.json") && strstr(err.msg, "twice") &&
               strstr(err.msg, "'x'"),
           "duplicate: rc %d '%s'", rc, err.msg);
    unlink(path);
    return 0;
}

static int fill_zero(void *ctx, int index, st_writer *w, kv_error *err) {
    (void)ctx, (void)index;
    static const float z = 0;
    return st_writer_put(w, &z, sizeof z, err);
}

/* one shard holding N + 1 tensors, the index listing N of them: finding the unlisted one used
 * to cost a linear weight_map lookup per tensor */
static int index_unlisted(void *arg) {
    (void)arg;
    enum { N = 100000 };
    st_spec *specs = calloc(N + 1, sizeof *specs);
    char(*names)[16] = calloc(N + 1, sizeof *names);
    EXPECT(specs && names, "calloc");
    for (int i = 0; i <= N; i++) {
        snprintf(names[i], sizeof names[i], "t.%06d", i);
        specs[i] = (st_spec){.name = names[i], .dtype = KV_F32, .n_dims = 1, .shape = {1}};
    }
    kv_error err = {0};
    char path[400];
    snprintf(path, sizeof path, "%s/model-1.safetensors", idx_dir);
    st_writer *w;
    int rc = st_writer_open(&w, path, specs, N + 1, NULL, 0, &err);
    for (int i = 0; i <= N && !rc; i++) rc = fill_zero(NULL, i, w, &err);
    if (!rc) rc = st_writer_finish(w, &err);
    EXPECT(rc == 0, "shard: %s", err.msg);
    sbuf b = {0};
    sb_printf(&b, "{\"weight_map\":{");
    for (int i = 0; i < N; i++)
        sb_printf(&b, "%s\"t.%06d\":\"model-1.safetensors\"", i ? "," : "", i);
    sb_printf(&b, "}}");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", idx_dir);
    EXPECT(kv_write_file_atomic(path, b.s, b.n, &err) == 0, "%s", err.msg);
    free(b.s);
    st_checkpoint c;
    rc = st_checkpoint_open(&c, idx_dir, &err);
    EXPECT(rc == KV_EFORMAT && strstr(err.msg, "'t.100000'") && strstr(err.msg, "not listed"),
           "unlisted tensor: rc %d '%s'", rc, err.msg);
    unlink(path);
    snprintf(path, sizeof path, "%s/model-1.safetensors", idx_dir);
    unlink(path);
    free(specs);
    free(names);
    return 0;
}

/* ---- safetensors ---- */

/* "u64 len | header | data" */
static uint8_t *st_bytes(const char *header, size_t n_data, size_t *size) {
    size_t h = strlen(header);
    uint8_t *buf = calloc(8 + h + n_data + 1, 1);
    if (!buf) abort();
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, header, h);
    *size = 8 + h + n_data;
    return buf;
}

/* 200k __metadata__ keys in reverse order: used to be a pairwise duplicate scan and an
 * insertion sort */
static int st_many_meta(void *arg) {
    (void)arg;
    enum { N = 200000 };
    sbuf b = {0};
    sb_printf(&b, "{\"__metadata__\":{");
    for (int i = N - 1; i >= 0; i--) sb_printf(&b, "\"k%06d\":\"v\"%s", i, i ? "," : "");
    sb_printf(&b, "},\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}");
    size_t size;
    uint8_t *buf = st_bytes(b.s, 4, &size);
    st_file f;
    kv_error err = {0};
    int rc = st_parse(&f, buf, size, "meta.safetensors", &err);
    EXPECT(rc == 0 && f.n_meta == N && !strcmp(f.meta_keys[0], "k000000") && st_meta(&f, "k199999"),
           "many keys: rc %d '%s'", rc, err.msg);
    st_close(&f);
    /* a repeated key among them */
    char *dup = strstr(b.s, "\"k000001\"");
    EXPECT(dup != NULL, "k000001 in the header");
    dup[7] = '2'; /* k000001 -> k000002, now there twice */
    free(buf);
    buf = st_bytes(b.s, 4, &size);
    rc = st_parse(&f, buf, size, "meta.safetensors", &err);
    EXPECT(rc == KV_EFORMAT && strstr(err.msg, "'k000002' appears twice"),
           "repeated key: rc %d '%s'", rc, err.msg);
    free(buf);
    free(b.s);
    return 0;
}

/* config.json with 200k keys: the duplicate-key check sorts once instead of comparing pairs */
static int config_many_keys(void *arg) {
    (void)arg;
    enum { N = 200000 };
    sbuf b = {0};
    sb_printf(
        &b, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":8,\"intermediate_size\":16,"
            "\"num_hidden_layers\":2,\"num_attention_heads\":2,\"vocab_size\":32");
    for (int i = 0; i < N; i++) sb_printf(&b, ",\"x%06d\":0", i);
    sb_printf(&b, "}");
    hf_config c;
    kv_error err = {0};
    int rc = hf_config_parse(&c, b.s, "config.json", &err);
    EXPECT(rc == 0 && c.n_layers == 2, "many keys: rc %d '%s'", rc, err.msg);
    char *dup = strstr(b.s, "\"x100001\"");
    EXPECT(dup != NULL, "x100001 in the text");
    dup[7] = '2'; /* x100001 -> x100002, now there twice */
    rc = hf_config_parse(&c, b.s, "config.json", &err);
    EXPECT(rc == KV_EFORMAT && strstr(err.msg, "'x100002' appears twice"),
           "repeated key: rc %d '%s'", rc, err.msg);
    free(b.s);
    return 0;
}

/* a file parsed from memory carries its label as path; llama_view reads it when it names the
 * file in an error (it used to read a NULL path: a crash) */
static int st_parse_label(void *arg) {
    (void)arg;
    static const char header[] =
        "{\"junk\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t size;
    uint8_t *buf = st_bytes(header, 4, &size);
    st_file f;
    kv_error err = {0};
    EXPECT(st_parse(&f, buf, size, "mem.safetensors", &err) == 0 && f.path &&
               !strcmp(f.path, "mem.safetensors"),
           "labelled parse: path '%s' (%s)", f.path ? f.path : "(null)", err.msg);
    st_close(&f);
    EXPECT(st_parse(&f, buf, size, NULL, &err) == 0 && f.path && !strcmp(f.path, ST_MEMORY_LABEL),
           "unlabelled parse: path '%s' (%s)", f.path ? f.path : "(null)", err.msg);
    /* bound to a config: every tensor is missing and 'junk' is extra; the error names the file */
    hf_config cfg;
    static const char config[] =
        "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":8,\"intermediate_size\":16,"
        "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"vocab_size\":4}";
    EXPECT(hf_config_parse(&cfg, config, "config.json", &err) == 0, "config: %s", err.msg);
    const st_tensor *sorted[1] = {&f.tensors[0]};
    st_checkpoint ck = {.dir = NULL, .n_files = 1, .files = &f, .n_tensors = 1, .tensors = sorted};
    llama_view v;
    int rc = llama_view_bind(&v, &cfg, &ck, &err);
    EXPECT(rc != 0 && strstr(err.msg, ST_MEMORY_LABEL), "bind names the memory file: rc %d '%s'",
           rc, err.msg);
    st_close(&f);
    /* a failed parse leaves nothing behind */
    EXPECT(st_parse(&f, buf, size - 1, "short.safetensors", &err) == KV_EFORMAT && f.path == NULL &&
               f.tensors == NULL,
           "failed parse: %s", err.msg);
    free(buf);
    return 0;
}

/* ---- bundle writer ---- */

/* A kvforge.json (or config.json) nested 999 levels is a JSON object the writer accepted, but
 * manifest.json holds it one level deeper, past cJSON's 1000-level limit: the bundle it wrote
 * could not be opened (found by tests/fuzz/fuzz_kvforge_json). Refused when bundling now. */
static void test_bundle_deep_json(void) {
    char dir[400], path[500], out[500];
    snprintf(dir, sizeof dir, "%s/deep", tmpdir);
    synth_spec s;
    kv_error err = {0};
    synth_preset(&s, "tiny");
    s.n_layers = 1, s.hidden = 16, s.n_heads = 2, s.n_kv_heads = 1, s.head_dim = 8, s.ffn = 32,
    s.vocab = 300;
    CHECK(kv_mkdir_p(dir, &err) == 0 && synth_write(dir, &s, &err) == 0, "synthetic model: %s",
          err.msg);
    enum { DEPTH = 999 };
    sbuf b = {0};
    sb_printf(&b, "{\"recipe\":");
    for (int i = 0; i < DEPTH; i++) sb_printf(&b, "[");
    for (int i = 0; i < DEPTH; i++) sb_printf(&b, "]");
    sb_printf(&b, "}");
    snprintf(path, sizeof path, "%s/kvforge.json", dir);
    snprintf(out, sizeof out, "%s/deep.kvb", tmpdir);
    CHECK(kv_write_file_atomic(path, b.s, b.n, &err) == 0, "%s", err.msg);
    int rc = kv_bundle_write(dir, out, NULL, &err);
    CHECK(rc == KV_EFORMAT && strstr(err.msg, "kvforge.json") && strstr(err.msg, "nested"),
          "deep kvforge.json: rc %d '%s'", rc, err.msg);
    kv_bundle *bundle = NULL;
    if (rc == 0) { /* what used to happen: written, then unreadable */
        CHECK(kv_bundle_open(&bundle, out, &err) == 0, "the bundle written opens: %s", err.msg);
        kv_bundle_close(bundle);
    }
    /* a kvforge.json a few levels deep still bundles, and the bundle opens */
    static const char ok[] = "{\"recipe\":{\"method\":\"identity\",\"a\":[[[1]]]}}";
    CHECK(kv_write_file_atomic(path, ok, strlen(ok), &err) == 0, "%s", err.msg);
    CHECK(kv_bundle_write(dir, out, NULL, &err) == 0 && kv_bundle_open(&bundle, out, &err) == 0,
          "shallow: %s", err.msg);
    kv_bundle_close(bundle);
    free(b.s);
    unlink(out);
    static const char *const names[] = {"config.json", "model.safetensors", "tokenizer.json",
                                        "kvforge.json"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* ---- distillation resume state ---- */

/* a 400k-line train_log.jsonl: trimming it used sscanf per line, which takes the strlen of the
 * rest of the text each time (quadratic: 40k lines 0.25 s, 400k about 25 s) */
static int distill_log(void *arg) {
    (void)arg;
    enum { N = 400000 };
    sbuf b = {0};
    for (int i = 1; i <= N; i++) sb_printf(&b, "{\"step\": %d, \"loss\": 1.5}\n", i);
    size_t keep = distill_log_keep(b.s, N);
    EXPECT(keep == b.n, "all %d lines kept: %zu of %zu bytes", N, keep, b.n);
    keep = distill_log_keep(b.s, N / 2);
    EXPECT(keep > 0 && keep < b.n && b.s[keep - 1] == '\n' &&
               !strncmp(b.s + keep, "{\"step\": 200001,", 16),
           "cut after step %d: at %zu", N / 2, keep);
    free(b.s);
    static const char torn[] = "{\"step\": 1}\n{\"step\":2}\n{\"step\": 3";
    EXPECT(distill_log_keep(torn, 10) == 23, "torn last line dropped: %zu",
           distill_log_keep(torn, 10));
    EXPECT(distill_log_keep("{\"step\": x}\n", 10) == 0 &&
               distill_log_keep("{\"step\":\n", 10) == 0,
           "no number");
    return 0;
}

/* one JSONL line: a conversation of n_messages alternating user/assistant turns of content_len
 * bytes each */
static void chat_line(sbuf *b, int n_messages, int content_len) {
    char *content = malloc((size_t)content_len + 1);
    if (!content) abort();
    for (int c = 0; c < content_len; c++) content[c] = c % 5 == 4 ? ' ' : (char)('a' + c % 7);
    content[content_len] = 0;
    sb_printf(b, "{\"messages\": [");
    for (int m = 0; m < n_messages; m++)
        sb_printf(b, "%s{\"role\": \"%s\", \"content\": \"%s\"}", m ? ", " : "",
                  m % 2 ? "assistant" : "user", content);
    sb_printf(b, "]}\n");
    free(content);
}

static kv_tokenizer *chat_tokenizer(void) {
    char *json[TOK_N_VARIANTS];
    kv_tokenizer *tok = NULL;
    kv_error err = {0};
    if (tok_variants(json)) return NULL;
    if (kv_tokenizer_load_json(&tok, json[TOK_SP], strlen(json[TOK_SP]), "sp", &err)) tok = NULL;
    for (int v = 0; v < TOK_N_VARIANTS; v++) free(json[v]);
    return tok;
}

/* 8 lines of 1 MB (4096 turns of ~250 bytes): parsed, rendered (fallback and a ChatML template)
 * and tokenized in time and memory proportional to the 8 MB */
static int chat_data_big(void *arg) {
    (void)arg;
    kv_tokenizer *tok = chat_tokenizer();
    EXPECT(tok, "tokenizer");
    sbuf b = {0};
    for (int line = 0; line < 8; line++) chat_line(&b, DISTILL_CHAT_MAX_MESSAGES, 220);
    EXPECT(b.n > ((size_t)7 << 20), "%zu bytes", b.n);
    static const char chatml[] = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + "
                                 "m['content'] + '<|im_end|>\\n' }}{% endfor %}";
    distill_chat_format fmt[2];
    kv_error err = {0};
    EXPECT(!distill_chat_format_load(&fmt[0], "fallback", NULL, 0, tok, &err), "%s", err.msg);
    fmt[1] = fmt[0];
    EXPECT(!kv_chat_template_parse(&fmt[1].tpl, chatml, strlen(chatml), "chatml", &err), "%s",
           err.msg);
    for (int f = 0; f < 2; f++) {
        distill_tokens d = {0};
        int rc = distill_tokens_from_chat(&d, b.s, b.n, tok, &fmt[f], "big.jsonl", &err);
        EXPECT(rc == 0 && d.n > (long)(b.n / 8), "format %d: rc %d, %ld tokens: %s", f, rc, d.n,
               err.msg);
        distill_tokens_free(&d);
    }
    /* one line over the cap is refused by its length, naming the line */
    sbuf over = {0};
    chat_line(&over, 2, (int)DISTILL_CHAT_MAX_LINE);
    distill_tokens d = {0};
    int rc = distill_tokens_from_chat(&d, over.s, over.n, tok, &fmt[0], "over.jsonl", &err);
    EXPECT(rc && strstr(err.msg, "over.jsonl:1") && strstr(err.msg, "bytes"), "rc %d: %s", rc,
           err.msg);
    distill_tokens_free(&d);
    kv_chat_template_free(fmt[1].tpl);
    distill_chat_format_free(&fmt[0]);
    kv_tokenizer_free(tok);
    free(over.s);
    free(b.s);
    return 0;
}

/* a template whose loops nest three deep over a 4096-turn conversation (6.9e10 iterations) stops
 * at the evaluation-step cap with a message, in time independent of the iterations asked for */
static int chat_template_runaway(void *arg) {
    (void)arg;
    sbuf b = {0};
    chat_line(&b, DISTILL_CHAT_MAX_MESSAGES, 8);
    cJSON *conv = cJSON_Parse(b.s);
    EXPECT(conv, "conversation parses");
    static const char loops[] = "{% for a in messages %}{% for b in messages %}{% for c in "
                                "messages %}{{ c['content'] }}{% endfor %}{% endfor %}{% endfor %}";
    kv_chat_template *t = NULL;
    kv_error err = {0};
    EXPECT(!kv_chat_template_parse(&t, loops, strlen(loops), "loops", &err), "%s", err.msg);
    kv_chat_vars vars = {0};
    char *text = NULL;
    unsigned char *asst = NULL;
    size_t len = 0;
    int rc = kv_chat_template_render(t, cJSON_GetObjectItem(conv, "messages"), &vars, &text, &asst,
                                     &len, &err);
    EXPECT(rc && strstr(err.msg, "loops") && strstr(err.msg, "steps"), "rc %d: %s", rc, err.msg);
    free(text);
    free(asst);
    kv_chat_template_free(t);
    cJSON_Delete(conv);
    free(b.s);
    return 0;
}

static void test_distill_state(void) {
    static const char *const cases[][2] = {
        {"{\"__metadata__\":{\"format\":\"kvforge-distill-state-1\",\"fingerprint\":\"ab\","
         "\"step\":\"3\","
         "\"tokens_trained\":\"96\",\"seconds\":\"1.5\"},\"param.w\":{\"dtype\":\"F32\",\"shape\":["
         "1],"
         "\"data_offsets\":[0,4]}}",
         ""},
        {"{\"__metadata__\":{\"format\":\"x\"}}", "not a kvdistill checkpoint"},
        {"{\"__metadata__\":{\"format\":\"kvforge-distill-state-1\",\"fingerprint\":\"cd\"}}",
         "other options"},
        {"{\"__metadata__\":{\"format\":\"kvforge-distill-state-1\",\"fingerprint\":\"ab\","
         "\"step\":\"3x\"}}",
         "'step' missing or bad"},
        {"{\"__metadata__\":{\"format\":\"kvforge-distill-state-1\",\"fingerprint\":\"ab\","
         "\"step\":\"3\","
         "\"tokens_trained\":\"-1\"}}",
         "'tokens_trained' missing or bad"},
        {"{\"__metadata__\":{\"format\":\"kvforge-distill-state-1\",\"fingerprint\":\"ab\","
         "\"step\":\"11\","
         "\"tokens_trained\":\"1\"}}",
         "beyond 10"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int with_data = strstr(cases[i][0], "param.w") != NULL;
        size_t size;
        uint8_t *buf = st_bytes(cases[i][0], with_data ? 4 : 0, &size);
        st_file f;
        kv_error err = {0};
        distill_state st;
        int rc = st_parse(&f, buf, size, "state.safetensors", &err);
        CHECK(rc == 0, "case %zu parses: %s", i, err.msg);
        if (rc) {
            free(buf);
            continue;
        }
        rc = distill_state_read(&f, "ab", 10, &st, &err);
        if (!*cases[i][1]) {
            CHECK(rc == 0 && st.step == 3 && st.tokens_trained == 96 && st.seconds == 1.5,
                  "case %zu: %s", i, err.msg);
            CHECK(distill_state_tensor(&f, "param.", "w", 1) &&
                      !distill_state_tensor(&f, "param.", "w", 2) &&
                      !distill_state_tensor(&f, "adam_m.", "w", 1),
                  "case %zu: tensors", i);
        } else {
            CHECK(rc != 0 && strstr(err.msg, cases[i][1]) && strstr(err.msg, "state.safetensors"),
                  "case %zu: rc %d '%s' lacks '%s'", i, rc, err.msg, cases[i][1]);
        }
        st_close(&f);
        free(buf);
    }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

int main(void) {
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(idx_dir, sizeof idx_dir, "%s/index", tmpdir);
    mkdir(idx_dir, 0700);
    bounded("tokenizer: doubling normalizer chain", normalizer_growth, NULL, 256, 20);
    bounded("tokenizer: doubling decoder chain", decoder_growth, NULL, 256, 20);
    bounded("tokenizer: one huge id (66 bytes)", sparse_ids, NULL, 64, 20);
    bounded("tokenizer: 8 MB of token bytes, one char pair", char_pairs, NULL, 160, 20);
    bounded("tokenizer: 100k added tokens sharing a first byte", added_prefix, NULL, 256, 5);
    bounded("index: 40k entries in 40k missing shards", index_many_shards, NULL, 256, 8);
    bounded("index: 100k tensors, one not listed", index_unlisted, NULL, 256, 10);
    bounded("safetensors: 200k metadata keys", st_many_meta, NULL, 256, 10);
    bounded("safetensors: parsed from memory, bound to a config", st_parse_label, NULL, 64, 20);
    bounded("config.json: 200k keys", config_many_keys, NULL, 256, 5);
    bounded("distill: 400k-line train log trimmed", distill_log, NULL, 256, 5);
    bounded("chat data: 8 MB of JSONL, 4096-turn lines", chat_data_big, NULL, 512, 60);
    bounded("chat template: loops 3 deep over 4096 turns", chat_template_runaway, NULL, 128, 20);
    test_distill_state();
    test_bundle_deep_json();
    /* whatever a child killed at its cap left behind goes too */
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return check_done("test_hostile");
}
