/* Bundle round trips: stories260K and synthetic F32/F16/BF16 models (one file and sharded)
 * HF -> bundle -> HF byte-identical; determinism across runs, thread counts and sharding;
 * archive layout (order, fixed owners and times); loading into a caller buffer; the
 * checkpoint view; the embedded files. */
#include <archive.h>
#include <archive_entry.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/bundle.h"
#include "formats/bundle_internal.h"
#include "base/dtype.h"
#include "base/fileio.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "tests/check.h"
#include "formats/kvmap.h"

static char tmp_root[] = "/tmp/kv_test_bundle_XXXXXX";

static uint64_t rng = 0x853C49E6748FEA9BULL;
static double uniform01(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}
static float gaussian(float std) {
    double u1 = uniform01(), u2 = uniform01();
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(std * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static char *tmp_path(const char *name) {
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", tmp_root, name);
    return p;
}

static int read_all(const char *path, char **out, size_t *n) {
    kv_error err;
    return kv_read_file(path, out, n, (size_t)1 << 30, &err);
}

static int files_equal(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int ok =
        read_all(a, &x, &nx) == 0 && read_all(b, &y, &ny) == 0 && nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return ok;
}

static int write_text(const char *dir, const char *name, const char *text) {
    char path[1024];
    kv_error err;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return kv_write_file_atomic(path, text, strlen(text), &err);
}

/* ---- a synthetic model: 4 layers, lasagna map 0_0_2_2, Gaussian weights ---- */

typedef struct {
    st_spec specs[64];
    void *data[64];
    char names[64][96];
    int n;
} synth;

static void synth_add(synth *s, kv_dtype t, const char *name, int n_dims, const int64_t *shape) {
    st_spec *sp = &s->specs[s->n];
    snprintf(s->names[s->n], sizeof s->names[0], "%s", name);
    sp->name = s->names[s->n];
    sp->dtype = t;
    sp->n_dims = n_dims;
    size_t n = 1;
    for (int d = 0; d < n_dims; d++) {
        sp->shape[d] = shape[d];
        n *= (size_t)shape[d];
    }
    uint8_t *b = malloc(n * kv_dtype_size(t) + 1);
    for (size_t i = 0; i < n; i++) {
        float v = gaussian(0.02f);
        if (t == KV_F32) memcpy(b + 4 * i, &v, 4);
        else if (t == KV_F16) {
            uint16_t h = kv_f32_to_f16(v);
            memcpy(b + 2 * i, &h, 2);
        } else {
            uint16_t h = kv_f32_to_bf16(v);
            memcpy(b + 2 * i, &h, 2);
        }
    }
    s->data[s->n++] = b;
}

static int synth_fill(void *ctx, int index, st_writer *w, kv_error *err) {
    synth *s = ctx;
    return st_writer_put(w, s->data[index], st_spec_bytes(&s->specs[index]), err);
}

static void synth_free(synth *s) {
    for (int i = 0; i < s->n; i++) free(s->data[i]);
}

static int make_model(const char *dir, kv_dtype t, size_t shard_bytes, uint64_t seed) {
    kv_error err = {0};
    rng = seed;
    if (kv_mkdir_p(dir, &err)) return -1;
    const char *dtype_name = t == KV_F32 ? "float32" : t == KV_F16 ? "float16" : "bfloat16";
    char config[1024];
    snprintf(config, sizeof config,
             "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
             "  \"hidden_size\": 32,\n  \"intermediate_size\": 48,\n  \"num_hidden_layers\": 4,\n"
             "  \"num_attention_heads\": 4,\n  \"num_key_value_heads\": 2,\n  \"vocab_size\": 96,\n"
             "  \"rms_norm_eps\": 1e-05,\n  \"layer_types\": \"0_0_2_2\",\n  \"torch_dtype\": "
             "\"%s\"\n}\n",
             dtype_name);
    if (write_text(dir, "config.json", config)) return -1;
    if (write_text(dir, "kvforge.json",
                   "{\"recipe\": {\"method\": \"lasagna-bottom\", \"kv_layers\": 2},\n"
                   " \"provenance\": {\"source\": \"synthetic test model\", \"tool\": "
                   "\"test_bundle\"}}\n"))
        return -1;
    if (write_text(dir, "tokenizer.json",
                   "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, "
                   "\"b\": 1}}}\n"))
        return -1;
    if (write_text(dir, "generation_config.json", "{\"bos_token_id\": 1, \"eos_token_id\": 2}\n"))
        return -1;

    synth s = {0};
    int64_t emb[2] = {96, 32}, norm[1] = {32}, q[2] = {32, 32}, kv[2] = {16, 32}, up[2] = {48, 32},
            down[2] = {32, 48};
    int64_t odd[3] = {3, 7, 5}, one[1] = {1}, big[2] = {300, 100};
    synth_add(&s, t, "model.embed_tokens.weight", 2, emb);
    synth_add(&s, t, "model.norm.weight", 1, norm);
    synth_add(&s, t, "extra.odd_shape", 3, odd);
    synth_add(&s, t, "extra.one_element", 1, one);
    synth_add(&s, t, "extra.spans_chunks", 2, big);
    for (int l = 0; l < 4; l++) {
        char name[96];
        const char *parts[] = {"input_layernorm", "post_attention_layernorm"};
        for (int k = 0; k < 2; k++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, parts[k]);
            synth_add(&s, t, name, 1, norm);
        }
        snprintf(name, sizeof name, "model.layers.%d.self_attn.q_proj.weight", l);
        synth_add(&s, t, name, 2, q);
        snprintf(name, sizeof name, "model.layers.%d.self_attn.o_proj.weight", l);
        synth_add(&s, t, name, 2, q);
        if (l % 2 == 0) { /* KV layers only */
            snprintf(name, sizeof name, "model.layers.%d.self_attn.k_proj.weight", l);
            synth_add(&s, t, name, 2, kv);
            snprintf(name, sizeof name, "model.layers.%d.self_attn.v_proj.weight", l);
            synth_add(&s, t, name, 2, kv);
        }
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", l);
        synth_add(&s, t, name, 2, up);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate_proj.weight", l);
        synth_add(&s, t, name, 2, up);
        snprintf(name, sizeof name, "model.layers.%d.mlp.down_proj.weight", l);
        synth_add(&s, t, name, 2, down);
    }
    const char *meta[] = {"format", "pt"};
    int rc = st_write_checkpoint(dir, s.specs, s.n, shard_bytes, meta, 1, synth_fill, &s, &err);
    if (rc) fprintf(stderr, "make_model: %s\n", err.msg);
    synth_free(&s);
    return rc;
}

/* every tensor of a equals the same-named tensor of b, bytes, dtype and shape */
static int same_tensors(const st_checkpoint *a, const st_checkpoint *b, const char *what) {
    int ok = a->n_tensors == b->n_tensors;
    CHECK(ok, "%s: %d tensors vs %d", what, a->n_tensors, b->n_tensors);
    for (int i = 0; ok && i < a->n_tensors; i++) {
        const st_tensor *x = a->tensors[i], *y = st_checkpoint_find(b, x->name);
        int same = y && x->dtype == y->dtype && x->n_dims == y->n_dims &&
                   memcmp(x->shape, y->shape, sizeof x->shape[0] * (size_t)x->n_dims) == 0 &&
                   x->n_bytes == y->n_bytes && y->data && memcmp(x->data, y->data, x->n_bytes) == 0;
        CHECK(same, "%s: tensor '%s' differs", what, x->name);
        ok &= same;
    }
    return ok;
}

/* bundle -> load: tensors equal the source checkpoint's; files equal the source's */
static void check_bundle_matches(const char *bundle, const char *src_dir, int threads,
                                 const char *what) {
    kv_error err = {0};
    st_checkpoint src;
    CHECK(st_checkpoint_open(&src, src_dir, &err) == 0, "%s: %s", what, err.msg);
    kv_bundle *b = NULL;
    int rc = kv_bundle_open(&b, bundle, &err);
    CHECK(rc == 0, "%s: open: %s", what, err.msg);
    if (rc) {
        st_checkpoint_close(&src);
        return;
    }
    const st_checkpoint *view = kv_bundle_checkpoint(b);
    CHECK(view->n_tensors == src.n_tensors && view->n_files == 1, "%s: view before load", what);
    CHECK(view->n_tensors == 0 || view->tensors[0]->data == NULL, "%s: data before load", what);
    rc = kv_bundle_load_tensors(b, NULL, 0, threads, &err);
    CHECK(rc == 0, "%s: load: %s", what, err.msg);
    if (!rc) {
        same_tensors(&src, view, what);
        for (int i = 0; i < view->n_tensors; i++)
            CHECK(((uintptr_t)view->tensors[i]->data & 63) == 0,
                  "%s: tensor %d not 64-byte aligned", what, i);
        const st_tensor *t = kv_bundle_find(b, src.tensors[0]->name);
        CHECK(t && t->data && memcmp(t->data, src.tensors[0]->data, t->n_bytes) == 0, "%s: find",
              what);
        CHECK(kv_bundle_find(b, "no.such.tensor") == NULL, "%s: find missing", what);
        CHECK(kv_bundle_load_tensors(b, NULL, 0, threads, &err) == KV_EINVAL, "%s: second load",
              what);
    }
    const char *names[] = {"config.json", "tokenizer.json", "kvforge.json",
                           "generation_config.json"};
    for (int i = 0; i < 4; i++) {
        char path[1024], *text = NULL;
        size_t n = 0, got = 0;
        snprintf(path, sizeof path, "%s/%s", src_dir, names[i]);
        const char *inside = kv_bundle_file(b, names[i], &got);
        if (read_all(path, &text, &n) == 0)
            CHECK(inside && got == n && memcmp(inside, text, n) == 0 && inside[n] == 0,
                  "%s: file %s", what, names[i]);
        else CHECK(inside == NULL, "%s: file %s should be absent", what, names[i]);
        free(text);
    }
    CHECK(strcmp(kv_bundle_architecture(b), "LlamaForCausalLM") == 0, "%s: architecture", what);
    kv_bundle_close(b);
    st_checkpoint_close(&src);
}

static void check_unbundle(const char *bundle, const char *src_dir, const char *out_dir,
                           const char *what) {
    kv_error err = {0};
    int rc = kv_bundle_unbundle(bundle, out_dir, &err);
    CHECK(rc == 0, "%s: unbundle: %s", what, err.msg);
    if (rc) return;
    st_checkpoint a, b;
    CHECK(st_checkpoint_open(&a, src_dir, &err) == 0, "%s", err.msg);
    CHECK(st_checkpoint_open(&b, out_dir, &err) == 0, "%s: unbundled checkpoint: %s", what,
          err.msg);
    same_tensors(&a, &b, what);
    CHECK(b.n_files == 1 && b.files[0].n_meta == a.files[0].n_meta, "%s: metadata", what);
    st_checkpoint_close(&a);
    st_checkpoint_close(&b);
    const char *names[] = {"config.json", "tokenizer.json", "kvforge.json",
                           "generation_config.json", "tokenizer.model"};
    for (int i = 0; i < 5; i++) {
        char x[1024], y[1024];
        snprintf(x, sizeof x, "%s/%s", src_dir, names[i]);
        snprintf(y, sizeof y, "%s/%s", out_dir, names[i]);
        if (kv_path_exists(x))
            CHECK(files_equal(x, y), "%s: %s not byte-identical", what, names[i]);
        else CHECK(!kv_path_exists(y), "%s: %s appeared", what, names[i]);
    }
    /* a second unbundle into the now non-empty directory is refused */
    CHECK(kv_bundle_unbundle(bundle, out_dir, &err) == KV_EINVAL, "%s: non-empty target accepted",
          what);
}

/* entries in order, regular, owner 0, mtime 0, mode 0644 */
static void check_layout(const char *bundle, const char *const *want, int n_want) {
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    int ok = archive_read_open_filename(a, bundle, 1 << 16) == ARCHIVE_OK;
    CHECK(ok, "libarchive opens %s", bundle);
    struct archive_entry *e;
    int i = 0;
    while (ok && archive_read_next_header(a, &e) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        CHECK(i < n_want && strcmp(name, want[i]) == 0, "entry %d is %s, want %s", i, name,
              i < n_want ? want[i] : "(none)");
        CHECK(archive_entry_mtime(e) == 0 && archive_entry_uid(e) == 0 &&
                  archive_entry_gid(e) == 0 && archive_entry_filetype(e) == AE_IFREG &&
                  (archive_entry_perm(e) & 0777) == 0644 &&
                  (!archive_entry_uname(e) || !archive_entry_uname(e)[0]),
              "entry %s: owner/time/mode not fixed", name);
        i++;
    }
    CHECK(i == n_want, "%d entries, want %d", i, n_want);
    CHECK(archive_format(a) == ARCHIVE_FORMAT_TAR_USTAR ||
              archive_format(a) == ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE,
          "format %s", archive_format_name(a));
    archive_read_free(a);
}

static void check_manifest_fields(const char *bundle) {
    kv_bundle *b;
    kv_error err = {0};
    if (kv_bundle_open(&b, bundle, &err)) {
        CHECK(0, "%s", err.msg);
        return;
    }
    const char *m = kv_bundle_manifest(b);
    CHECK(strstr(m, "\"format\":\"kvforge-bundle\"") && strstr(m, "\"format_version\":1"),
          "format fields");
    CHECK(strstr(m, "\"kv_map\":[0,0,2,2]") != NULL, "kv_map from layer_types");
    CHECK(strstr(m, "\"recipe\":{\"method\":\"lasagna-bottom\"") != NULL,
          "recipe from kvforge.json");
    CHECK(strstr(m, "\"provenance\":{") != NULL, "provenance from kvforge.json");
    CHECK(strstr(m, "\"layer_types\":\"0_0_2_2\"") != NULL, "config embedded");
    kv_bundle_close(b);
}

static void check_synthetic(kv_dtype t) {
    char what[64], src[64], src_sh[64], out[64], kvb[64], kvb2[64], kvb_sh[64];
    const char *dn = kv_dtype_name(t);
    snprintf(what, sizeof what, "synthetic %s", dn);
    snprintf(src, sizeof src, "src_%s", dn);
    snprintf(src_sh, sizeof src_sh, "src_sharded_%s", dn);
    snprintf(out, sizeof out, "out_%s", dn);
    snprintf(kvb, sizeof kvb, "%s.kvb", dn);
    snprintf(kvb2, sizeof kvb2, "%s_again.kvb", dn);
    snprintf(kvb_sh, sizeof kvb_sh, "%s_sharded.kvb", dn);
    char src_p[512], src_sh_p[512], out_p[512], kvb_p[512], kvb2_p[512], kvb_sh_p[512];
    snprintf(src_p, sizeof src_p, "%s", tmp_path(src));
    snprintf(src_sh_p, sizeof src_sh_p, "%s", tmp_path(src_sh));
    snprintf(out_p, sizeof out_p, "%s", tmp_path(out));
    snprintf(kvb_p, sizeof kvb_p, "%s", tmp_path(kvb));
    snprintf(kvb2_p, sizeof kvb2_p, "%s", tmp_path(kvb2));
    snprintf(kvb_sh_p, sizeof kvb_sh_p, "%s", tmp_path(kvb_sh));

    CHECK(make_model(src_p, t, 0, 42) == 0, "%s: make model", what);
    CHECK(make_model(src_sh_p, t, 20000, 42) == 0, "%s: make sharded model", what);
    CHECK(kv_path_exists(tmp_path("")) && kv_path_exists(src_sh_p), "dirs");
    char index[600];
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", src_sh_p);
    CHECK(kv_path_exists(index), "%s: sharded source has an index", what);

    kv_error err = {0};
    kv_bundle_opts o1 = {.chunk_size = 8192, .threads = 1};
    kv_bundle_opts o3 = {.chunk_size = 8192, .threads = 3};
    CHECK(kv_bundle_write(src_p, kvb_p, &o1, &err) == 0, "%s: write: %s", what, err.msg);
    CHECK(kv_bundle_write(src_p, kvb2_p, &o3, &err) == 0, "%s: write again: %s", what, err.msg);
    CHECK(kv_bundle_write(src_sh_p, kvb_sh_p, &o3, &err) == 0, "%s: write sharded: %s", what,
          err.msg);
    CHECK(files_equal(kvb_p, kvb2_p), "%s: two runs (1 and 3 threads) differ", what);
    CHECK(files_equal(kvb_p, kvb_sh_p),
          "%s: sharded and single-file sources give different bundles", what);

    kv_bundle_report r;
    CHECK(kv_bundle_verify(kvb_p, &r, &err) == 0, "%s: verify: %s", what, err.msg);
    CHECK(r.n_tensors == 37 && r.n_files == 4 && r.n_chunks > r.n_tensors && r.n_zstd_chunks > 0,
          "%s: report %d tensors %d chunks %d files", what, r.n_tensors, r.n_chunks, r.n_files);
    struct stat st;
    CHECK(stat(kvb_p, &st) == 0 && (uint64_t)st.st_size == r.file_bytes &&
              r.stored_bytes < r.raw_bytes,
          "%s: sizes in the report", what);

    check_bundle_matches(kvb_p, src_p, 2, what);
    check_unbundle(kvb_p, src_p, out_p, what);
    if (t == KV_BF16) {
        const char *want[] = {"manifest.json",   "manifest.json.sha256",   "tensors.bin",
                              "config.json.zst", "generation_config.json", "kvforge.json.zst",
                              "tokenizer.json"};
        check_layout(kvb_p, want, 7);
        check_manifest_fields(kvb_p);
    }
}

static void check_stories(void) {
    const char *src = SHARED_DIR "/models/stories260K";
    if (!kv_path_exists(src)) { /* tests/run.sh reports this suite as skipped without fixtures */
        CHECK(0, "fixture %s not found", src);
        return;
    }
    char kvb[512], kvb2[512], out[512];
    snprintf(kvb, sizeof kvb, "%s", tmp_path("stories.kvb"));
    snprintf(kvb2, sizeof kvb2, "%s", tmp_path("stories_again.kvb"));
    snprintf(out, sizeof out, "%s", tmp_path("stories_out/nested"));
    kv_error err = {0};
    CHECK(kv_bundle_write(src, kvb, NULL, &err) == 0, "stories: write: %s", err.msg);
    kv_bundle_opts o = {.threads = 1};
    CHECK(kv_bundle_write(src, kvb2, &o, &err) == 0, "stories: write again: %s", err.msg);
    CHECK(files_equal(kvb, kvb2), "stories: two runs differ");
    check_bundle_matches(kvb, src, 0, "stories260K");
    check_unbundle(kvb, src, out, "stories260K");
    kv_bundle_report r;
    CHECK(kv_bundle_verify(kvb, &r, &err) == 0 && r.n_tensors == 47 && r.raw_bytes == 1040128,
          "stories: verify: %s", err.msg);

    /* load into a caller buffer: too small refused, exact size works */
    kv_bundle *b;
    CHECK(kv_bundle_open(&b, kvb, &err) == 0, "%s", err.msg);
    size_t need = kv_bundle_raw_size(b);
    uint8_t *buf = aligned_alloc(64, (need + 63) / 64 * 64);
    CHECK(kv_bundle_load_tensors(b, buf, need - 1, 2, &err) == KV_EINVAL, "small buffer accepted");
    CHECK(kv_bundle_load_tensors(b, buf, need, 2, &err) == 0, "caller buffer: %s", err.msg);
    const st_tensor *t = kv_bundle_find(b, "model.embed_tokens.weight");
    CHECK(t && t->data == buf && t->n_dims == 2 && t->shape[0] == 512 && t->shape[1] == 64 &&
              t->dtype == KV_F32,
          "embed tensor in the caller buffer");
    kv_bundle_close(b);
    free(buf);

    /* embedded files extracted to a directory */
    char files_dir[512], x[600], y[600];
    snprintf(files_dir, sizeof files_dir, "%s", tmp_path("stories_files"));
    CHECK(kv_mkdir_p(files_dir, &err) == 0, "%s", err.msg);
    CHECK(kv_bundle_open(&b, kvb, &err) == 0, "%s", err.msg);
    CHECK(kv_bundle_extract_files(b, files_dir, &err) == 0, "extract: %s", err.msg);
    kv_bundle_close(b);
    snprintf(x, sizeof x, "%s/tokenizer.json", src);
    snprintf(y, sizeof y, "%s/tokenizer.json", files_dir);
    CHECK(files_equal(x, y), "extracted tokenizer.json");
}

/* KV maps from config.json; expected maps derived by hand from METHODS.md */
static void check_kv_maps(void) {
    struct {
        const char *config;
        int n;
        int want[8];
    } ok[] = {
        {"{\"num_hidden_layers\":4}", 4, {0, 1, 2, 3}},
        {"{\"num_hidden_layers\":5,\"layer_types\":\"0_0_2_2_4\"}", 5, {0, 0, 2, 2, 4}},
        {"{\"num_hidden_layers\":4,\"layer_types\":[1,1,3,3]}", 4, {1, 1, 3, 3}},
        {"{\"num_hidden_layers\":3,\"layer_types\":[\"full_attention\",\"full_attention\",\"full_"
         "attention\"]}",
         3,
         {0, 1, 2}},
        {"{\"num_hidden_layers\":8,\"swiftkv\":true,\"num_key_value_layers\":4,\"key_value_group_"
         "size\":2}",
         8,
         {0, 1, 2, 3, 4, 4, 6, 6}},
    };
    static kv_map map; /* ~4 KB: keep off the stack */
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        cJSON *c = cJSON_Parse(ok[i].config);
        kv_error err = {0};
        int rc = kvb_kv_map(c, &map, "config.json", &err);
        CHECK(rc == 0 && map.n_layers == ok[i].n &&
                  memcmp(map.kv_layer_of, ok[i].want, (size_t)ok[i].n * sizeof(int)) == 0,
              "kv map %zu: %s", i, err.msg);
        cJSON_Delete(c);
    }
    /* SwiftKV beside an integer layer_types: refused, as config.json's reader refuses it */
    cJSON *both = cJSON_Parse("{\"num_hidden_layers\":4,\"swiftkv\":true,\"num_key_value_layers\":"
                              "2,\"layer_types\":\"0_0_2_2\"}");
    kv_error err = {0};
    CHECK(kvb_kv_map(both, &map, "config.json", &err) == KV_EUNSUPPORTED &&
              strstr(err.msg, "config.json") && strstr(err.msg, "layer_types"),
          "swiftkv + layer_types: %s", err.msg);
    cJSON_Delete(both);
    const char *bad[] = {
        "{}",
        "{\"num_hidden_layers\":4,\"layer_types\":\"0_1_1\"}",
        "{\"num_hidden_layers\":3,\"layer_types\":\"0_2_1\"}",
        "{\"num_hidden_layers\":3,\"layer_types\":\"0_0_\"}",
        "{\"num_hidden_layers\":3,\"layer_types\":[0,0,7]}",
        "{\"num_hidden_layers\":6,\"swiftkv\":true,\"num_key_value_layers\":2,\"key_value_group_"
        "size\":3}",
        "{\"num_hidden_layers\":4,\"swiftkv\":true,\"num_key_value_layers\":4}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cJSON *c = cJSON_Parse(bad[i]);
        kv_error e = {0};
        CHECK(kvb_kv_map(c, &map, "config.json", &e) == KV_EFORMAT && strstr(e.msg, "config.json"),
              "bad kv map %zu accepted", i);
        cJSON_Delete(c);
    }
}

/* the bundle's KV map agrees with hf_config_parse's reading of the same config.json */
static void check_kv_maps_agree(void) {
    char *text = NULL;
    size_t n = 0;
    if (read_all(SHARED_DIR "/models/stories260K/config.json", &text, &n)) {
        CHECK(0, "fixture " SHARED_DIR "/models/stories260K/config.json not found");
        return;
    }
    const char *extra[] = {"", "\"layer_types\":\"0_2_2_2_4\"", "\"layer_types\":[0,0,0,3,3]",
                           "\"swiftkv\":true,\"num_key_value_layers\":2,\"key_value_group_size\":3",
                           "\"swiftkv\":true,\"num_key_value_layers\":3"};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) {
        char *config = malloc(n + 256);
        const char *brace = strrchr(text, '}');
        int head = (int)(brace - text);
        snprintf(config, n + 256, "%.*s%s%s}", head, text, extra[i][0] ? "," : "", extra[i]);
        kv_error err = {0};
        static hf_config hc;
        static kv_map mine;
        cJSON *c = cJSON_Parse(config);
        int rc = hf_config_parse(&hc, config, "config.json", &err);
        if (!rc) rc = kvb_kv_map(c, &mine, "config.json", &err);
        CHECK(rc == 0 && kvmap_equal(&mine, &hc.map),
              "config %zu: bundle and config.json disagree (%s)", i, err.msg);
        cJSON_Delete(c);
        free(config);
    }
    free(text);
}

static void remove_tree(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup of %s failed\n", dir);
}

int main(void) {
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    check_kv_maps();
    check_kv_maps_agree();
    check_stories();
    check_synthetic(KV_F32);
    check_synthetic(KV_F16);
    check_synthetic(KV_BF16);
    remove_tree(tmp_root);
    return check_done("test_bundle");
}
