/* safetensors reader/writer: the real stories260K checkpoint, byte-exact round trip, sharded
 * copies, and a catalogue of corrupt files that must each fail cleanly with a message */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/safetensors.h"
#include "tests/check.h"

#define MODEL_DIR  SHARED_DIR "/models/stories260K"
#define MODEL_FILE MODEL_DIR "/model.safetensors"

static char tmpdir[256];

/* builds "u64 len | header | data" in memory */
static size_t make_file(uint8_t *out, uint64_t declared_len, const char *header, const void *data,
                        size_t n_data) {
    size_t h = strlen(header);
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)(declared_len >> (8 * i));
    memcpy(out + 8, header, h);
    if (n_data) memcpy(out + 8 + h, data, n_data);
    return 8 + h + n_data;
}

static int parse_case(const char *header, size_t n_data, kv_error *err) {
    static uint8_t buf[1 << 16];
    uint8_t data[4096] = {0};
    size_t n = make_file(buf, strlen(header), header, data, n_data);
    st_file f;
    int rc = st_parse(&f, buf, n, "case.safetensors", err);
    if (rc == 0) st_close(&f);
    return rc;
}

static void expect_bad(const char *header, size_t n_data, const char *needle) {
    kv_error err = {0};
    int rc = parse_case(header, n_data, &err);
    CHECK(rc != 0, "accepted: %s", header);
    CHECK(rc != 0 && strstr(err.msg, needle) != NULL, "message '%s' lacks '%s' for %s", err.msg,
          needle, header);
}

static int files_equal(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    kv_error err;
    if (kv_read_file(a, &x, &nx, 1u << 30, &err) || kv_read_file(b, &y, &ny, 1u << 30, &err))
        return 0;
    int eq = nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return eq;
}

typedef struct {
    const st_checkpoint *src;
    const st_spec *specs;
} copy_ctx;
static int fill_from_src(void *ctx, int index, st_writer *w, kv_error *err) {
    copy_ctx *c = ctx;
    const st_tensor *t = st_checkpoint_find(c->src, c->specs[index].name);
    return st_writer_put(w, t->data, t->n_bytes, err);
}

static void test_real_model(void) {
    kv_error err = {0};
    st_file f;
    int rc = st_open(&f, MODEL_FILE, &err);
    CHECK(rc == 0, "open stories260K: %s", err.msg);
    if (rc) return;
    CHECK(f.n_tensors == 47, "47 tensors, got %d", f.n_tensors);
    const st_tensor *emb = st_find(&f, "model.embed_tokens.weight");
    CHECK(emb && emb->dtype == KV_F32 && emb->n_dims == 2 && emb->shape[0] == 512 &&
              emb->shape[1] == 64,
          "embedding shape");
    const st_tensor *k = st_find(&f, "model.layers.4.self_attn.k_proj.weight");
    CHECK(k && k->shape[0] == 32 && k->shape[1] == 64, "k_proj shape");
    CHECK(st_find(&f, "lm_head.weight") == NULL, "no lm_head (tied)");
    CHECK(st_meta(&f, "format") && strcmp(st_meta(&f, "format"), "pt") == 0, "metadata format=pt");

    /* round trip: read -> write -> byte-identical file */
    st_spec specs[64];
    const void *data[64];
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[f.n_tensors - 1 - i]; /* reversed: the writer must sort */
        specs[i] = (st_spec){.name = t->name, .dtype = t->dtype, .n_dims = t->n_dims};
        memcpy(specs[i].shape, t->shape, sizeof t->shape);
        data[i] = t->data;
    }
    const char *meta[] = {"format", "pt"};
    char out[512];
    snprintf(out, sizeof out, "%s/copy.safetensors", tmpdir);
    rc = st_write_file(out, specs, data, f.n_tensors, meta, 1, &err);
    CHECK(rc == 0, "write copy: %s", err.msg);
    CHECK(files_equal(out, MODEL_FILE), "re-written file is byte-identical to the source");
    st_file g;
    rc = st_open(&g, out, &err);
    CHECK(rc == 0 && g.n_tensors == f.n_tensors, "copy reopens: %s", err.msg);
    if (rc == 0) {
        int same = 1;
        for (int i = 0; i < f.n_tensors; i++)
            same &= strcmp(f.tensors[i].name, g.tensors[i].name) == 0 &&
                    f.tensors[i].n_bytes == g.tensors[i].n_bytes &&
                    memcmp(f.tensors[i].data, g.tensors[i].data, f.tensors[i].n_bytes) == 0;
        CHECK(same, "every tensor identical after round trip");
        st_close(&g);
    }
    /* no temp files left behind */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s | grep -q tmp-", tmpdir);
    CHECK(system(cmd) != 0, "no temporary files left");

    /* sharded copy, 200 KB per shard -> several shards + index; loads the same */
    st_checkpoint src;
    rc = st_checkpoint_open(&src, MODEL_DIR, &err);
    CHECK(rc == 0 && !src.sharded && src.n_tensors == 47, "checkpoint open: %s", err.msg);
    if (rc == 0) {
        char sharded[512];
        snprintf(sharded, sizeof sharded, "%s/sharded", tmpdir);
        kv_mkdir_p(sharded, &err);
        copy_ctx ctx = {&src, specs};
        rc = st_write_checkpoint(sharded, specs, f.n_tensors, 200000, meta, 1, fill_from_src, &ctx,
                                 &err);
        CHECK(rc == 0, "sharded write: %s", err.msg);
        st_checkpoint sh;
        rc = st_checkpoint_open(&sh, sharded, &err);
        CHECK(rc == 0, "sharded open: %s", err.msg);
        if (rc == 0) {
            CHECK(sh.sharded && sh.n_files >= 5, "several shards (%d)", sh.n_files);
            int same = sh.n_tensors == src.n_tensors;
            for (int i = 0; same && i < sh.n_tensors; i++)
                same =
                    strcmp(sh.tensors[i]->name, src.tensors[i]->name) == 0 &&
                    memcmp(sh.tensors[i]->data, src.tensors[i]->data, src.tensors[i]->n_bytes) == 0;
            CHECK(same, "sharded copy holds the same tensors");
            st_checkpoint_close(&sh);
        }
        /* bad index files */
        char idx[600];
        snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", sharded);
        char *orig;
        size_t n_orig;
        kv_read_file(idx, &orig, &n_orig, 1 << 20, &err);
        const char *bad_indexes[][2] = {
            {"[1,2]", "not a JSON object"},
            {"{\"metadata\":{}}", "weight_map"},
            {"{\"weight_map\":{\"model.norm.weight\":\"../x.safetensors\"}}", "plain"},
            {"{\"weight_map\":{\"model.norm.weight\":\"model-00001-of-00009.safetensors\"}}",
             "cannot open"},
            {"{\"weight_map\":{\"model.embed_tokens.weight\":\"model-00001-of-00006.safetensors\"}"
             "}",
             "not listed"},
        };
        for (size_t i = 0; i < sizeof bad_indexes / sizeof *bad_indexes; i++) {
            kv_write_file_atomic(idx, bad_indexes[i][0], strlen(bad_indexes[i][0]), &err);
            rc = st_checkpoint_open(&sh, sharded, &err);
            CHECK(rc != 0 && strstr(err.msg, bad_indexes[i][1]), "bad index %zu: rc %d msg '%s'", i,
                  rc, err.msg);
            if (rc == 0) st_checkpoint_close(&sh);
        }
        /* missing tensor: index names one more tensor than the shards hold */
        char *extra = malloc(n_orig + 128);
        char *brace = strstr(orig, "\"weight_map\"");
        if (brace) brace = strchr(brace, '{');
        if (brace) {
            size_t head = (size_t)(brace - orig) + 1;
            memcpy(extra, orig, head);
            sprintf(extra + head, "\"model.ghost.weight\": \"model-00001-of-00006.safetensors\",%s",
                    orig + head);
            kv_write_file_atomic(idx, extra, strlen(extra), &err);
            rc = st_checkpoint_open(&sh, sharded, &err);
            CHECK(rc != 0 && strstr(err.msg, "ghost") && strstr(err.msg, "missing"),
                  "missing tensor named: %s", err.msg);
        } else {
            CHECK(0, "index format unexpected: %.80s", orig);
        }
        free(extra);
        free(orig);
        st_checkpoint_close(&src);
    }
    st_close(&f);
}

static void test_corrupt(void) {
    kv_error err = {0};
    static uint8_t buf[1 << 12];
    const char *good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    CHECK(parse_case(good, 8, &err) == 0, "the good case parses: %s", err.msg);
    CHECK(parse_case("{}", 0, &err) == 0, "an empty header parses");
    CHECK(parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},\"b\":{"
                     "\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}",
                     4, &err) == 0,
          "zero-size and scalar tensors: %s", err.msg);

    st_file f;
    /* 1: shorter than 8 bytes */
    CHECK(st_parse(&f, "abc", 3, "t", &err) != 0 && strstr(err.msg, "too short"),
          "truncated length: %s", err.msg);
    /* 2: header length beyond the file */
    size_t n = make_file(buf, 1000, good, NULL, 0);
    CHECK(st_parse(&f, buf, n, "t", &err) != 0 && strstr(err.msg, "past the end"),
          "length past end: %s", err.msg);
    /* 3: header > 100 MB */
    n = make_file(buf, 200000000ull, good, NULL, 0);
    CHECK(st_parse(&f, buf, n, "t", &err) != 0 && strstr(err.msg, "100 MB"), "header too big: %s",
          err.msg);
    /* 4: huge length (overflow) */
    n = make_file(buf, UINT64_MAX, good, NULL, 0);
    CHECK(st_parse(&f, buf, n, "t", &err) != 0, "u64 max length");
    /* 5: truncated data (header fine, data short) */
    CHECK(parse_case(good, 4, &err) != 0 && strstr(err.msg, "truncated"), "truncated data: %s",
          err.msg);
    /* 6: truncated header (cut mid-JSON) */
    n = make_file(buf, 20, good, NULL, 0);
    CHECK(st_parse(&f, buf, 28, "t", &err) != 0, "header cut mid-JSON");

    expect_bad("[1,2,3]", 0, "not a JSON object"); /* 7 */
    expect_bad("\"str\"  ", 0, "not a JSON object"); /* 8 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]", 8,
               "not valid JSON"); /* 9 */
    expect_bad("{\"a\":{\"dtype\":\"F31\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
               "unknown dtype"); /* 10 */
    expect_bad("{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"); /* 11 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8,
               "non-negative"); /* 12 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0.5,8.5]}}", 8,
               "non-negative integers"); /* 13 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
               "before begin"); /* 14 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":"
               "\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, "overlap"); /* 15 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":"
               "\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
               20, "hole"); /* 16 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
               "needs 12"); /* 17 size mismatch */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":"
               "\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
               16, "appears twice"); /* 18 */
    expect_bad(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}",
        8, "overflows"); /* 19 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8,
               "shape[0]"); /* 20 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
               "shape[0]"); /* 21 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8,
               "shape"); /* 22 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
               "two integers"); /* 23 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "data_offsets"); /* 24 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8,
               "unexpected"); /* 25 */
    expect_bad("{\"a\":[1,2]}", 0, "not an object"); /* 26 */
    expect_bad("{\"__metadata__\":{\"k\":1}}", 0, "not a string"); /* 27 */
    expect_bad("{\"__metadata__\":[\"k\"]}", 0, "__metadata__"); /* 28 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x", 8,
               "trailing"); /* 29 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
               "trailing bytes"); /* 30 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
               4, "dimensions"); /* 31 */
    expect_bad("{\"\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
               "empty name"); /* 32 */
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1e300,8]}}", 8,
               "integers"); /* 33 */

    /* files on disk: a directory that is not a checkpoint, a missing file */
    CHECK(st_open(&f, "/nonexistent/x.safetensors", &err) != 0 &&
              strstr(err.msg, "/nonexistent/x.safetensors"),
          "missing file named: %s", err.msg);
    st_checkpoint c;
    char empty[512];
    snprintf(empty, sizeof empty, "%s/empty", tmpdir);
    kv_mkdir_p(empty, &err);
    CHECK(st_checkpoint_open(&c, empty, &err) != 0 && strstr(err.msg, "no model.safetensors"),
          "dir without a checkpoint: %s", err.msg);

    /* writer: incomplete data leaves nothing behind; extra data refused */
    char path[512];
    snprintf(path, sizeof path, "%s/partial.safetensors", tmpdir);
    st_spec s = {.name = "w", .dtype = KV_F32, .n_dims = 1, .shape = {4}};
    st_writer *w;
    CHECK(st_writer_open(&w, path, &s, 1, NULL, 0, &err) == 0, "writer open: %s", err.msg);
    float vals[8] = {0};
    CHECK(st_writer_put(w, vals, 8, &err) == 0, "partial put");
    CHECK(st_writer_put(w, vals, 32, &err) != 0, "put beyond declared size refused");
    CHECK(st_writer_finish(w, &err) != 0 && strstr(err.msg, "'w' incomplete"),
          "finish with missing bytes fails: %s", err.msg);
    CHECK(!kv_path_exists(path), "no partial file left");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s | grep -q partial", tmpdir);
    CHECK(system(cmd) != 0, "no temporary file left");
    st_spec dup[2] = {s, s};
    CHECK(st_writer_open(&w, path, dup, 2, NULL, 0, &err) != 0 && strstr(err.msg, "twice"),
          "duplicate names refused");
    /* writer output is deterministic and readable, with a header padded to 8 */
    float v4[4] = {1, 2, 3, 4};
    const void *d1[1] = {v4};
    CHECK(st_write_file(path, &s, d1, 1, NULL, 0, &err) == 0, "small write");
    CHECK(st_open(&f, path, &err) == 0 && (8 + f.header_len) % 8 == 0 &&
              ((const float *)st_find(&f, "w")->data)[3] == 4.0f,
          "readback");
    st_close(&f);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kvtest-st-XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    test_real_model();
    test_corrupt();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    return check_done("test_safetensors");
}
