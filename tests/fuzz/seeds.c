/* Writes the generated seed corpora of the fuzz targets into DIR/<target>/ (make fuzz-build
 * runs it): everything is made here by the project's own writers (synthetic model and tokenizer,
 * bundle writer, safetensors writer), nothing is copied from fixtures. The committed seeds in
 * tests/fuzz/corpus/ are tiny hand-written files beside these. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/bundle.h"
#include "formats/safetensors.h"
#include "tests/fuzz/tok_variants.h"
#include "transform/synth/synth.h"
#include "transform/train/distill_state.h"

static const char *out_dir;

static void die(const char *what, const kv_error *err) {
    fprintf(stderr, "fuzz seeds: %s: %s\n", what, err ? err->msg : strerror(errno));
    exit(1);
}

static void put(const char *target, const char *name, const void *bytes, size_t n) {
    char path[4096];
    kv_error err = {0};
    snprintf(path, sizeof path, "%s/%s", out_dir, target);
    if (kv_mkdir_p(path, &err)) die(path, &err);
    snprintf(path, sizeof path, "%s/%s/%s", out_dir, target, name);
    if (kv_write_file_atomic_ex(path, bytes, n, 0, &err)) die(path, &err);
}

static void put_file(const char *target, const char *name, const char *src) {
    char *bytes;
    size_t n;
    kv_error err = {0};
    if (kv_read_file(src, &bytes, &n, 1 << 24, &err)) die(src, &err);
    put(target, name, bytes, n);
    free(bytes);
}

/* a small model: 2 layers, hidden 16, vocab 300 (about 40 KB of BF16 weights) */
static void small_model(const char *dir, size_t shard_bytes) {
    synth_spec s;
    kv_error err = {0};
    synth_preset(&s, "tiny");
    s.n_layers = 2, s.hidden = 16, s.n_heads = 2, s.n_kv_heads = 1, s.head_dim = 8, s.ffn = 32,
    s.vocab = 300;
    s.max_pos = 64, s.tied = 1, s.dtype = KV_BF16, s.shard_bytes = shard_bytes;
    if (synth_write(dir, &s, &err)) die(dir, &err);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_seeds DIR\n");
        return 2;
    }
    out_dir = argv[1];
    kv_error err = {0};
    if (kv_mkdir_p(out_dir, &err)) die(out_dir, &err);
    char work[4096], path[4096], model[4096], sharded[4096];
    snprintf(work, sizeof work, "%s/.work", out_dir);
    snprintf(model, sizeof model, "%s/model", work);
    snprintf(sharded, sizeof sharded, "%s/sharded", work);
    if (kv_mkdir_p(model, &err) || kv_mkdir_p(sharded, &err)) die(work, &err);

    /* tokenizers: the four kinds */
    char *tok[TOK_N_VARIANTS];
    if (tok_variants(tok)) die("tokenizer variants", NULL);
    for (int v = 0; v < TOK_N_VARIANTS; v++) {
        snprintf(path, sizeof path, "%s.json", tok_variant_names[v]);
        put("tokenizer_load", path, tok[v], strlen(tok[v]));
        free(tok[v]);
    }

    /* model: config.json, model.safetensors; sharded: the index */
    small_model(model, 0);
    small_model(sharded, 8192);
    snprintf(path, sizeof path, "%s/config.json", model);
    put_file("hfconfig", "synth_config.json", path);
    snprintf(path, sizeof path, "%s/model.safetensors", model);
    put_file("safetensors", "synth.safetensors", path);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", sharded);
    put_file("index", "synth.index.json", path);

    /* bundle (with a kvforge.json, small chunks so tensors have several) and its manifest */
    static const char kvforge[] =
        "{\"tool\":\"kvconvert\",\"kvforge_version\":\"0\",\"recipe\":{\"method\":\"identity\"},"
        "\"source\":{\"sha256\":\"00\"}}";
    snprintf(path, sizeof path, "%s/kvforge.json", model);
    if (kv_write_file_atomic_ex(path, kvforge, strlen(kvforge), 0, &err)) die(path, &err);
    put("kvforge_json", "kvconvert.json", kvforge, strlen(kvforge));
    char kvb[4096];
    snprintf(kvb, sizeof kvb, "%s/tiny.kvb", work);
    kv_bundle_opts bo = {.chunk_size = 4096, .level = 1, .threads = 1};
    if (kv_bundle_write(model, kvb, &bo, &err)) die("bundle", &err);
    put_file("bundle", "tiny.kvb", kvb);
    kv_bundle *b;
    if (kv_bundle_open(&b, kvb, &err)) die("bundle open", &err);
    const char *manifest = kv_bundle_manifest(b);
    put("bundle_manifest", "tiny.manifest.json", manifest, strlen(manifest));
    kv_bundle_close(b);

    /* a distillation state: two tensors, the metadata kvdistill writes; and a log */
    static const float w[4] = {1, 2, 3, 4};
    st_spec specs[2] = {{.name = "param.w", .dtype = KV_F32, .n_dims = 1, .shape = {2}},
                        {.name = "adam_m.w", .dtype = KV_F32, .n_dims = 1, .shape = {2}}};
    const void *data[2] = {w, w + 2};
    const char *meta[] = {
        "format",         DISTILL_STATE_FORMAT,
        "step",           "3",
        "tokens_trained", "96",
        "seconds",        "1.5",
        "fingerprint",    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"};
    snprintf(path, sizeof path, "%s/state.safetensors", work);
    if (st_write_file(path, specs, data, 2, meta, 5, &err)) die(path, &err);
    put_file("distill_state", "state.safetensors", path);

    /* leave only the seeds */
    snprintf(path, sizeof path, "rm -rf '%s'", work);
    if (system(path) != 0) die("rm", NULL);
    return 0;
}
