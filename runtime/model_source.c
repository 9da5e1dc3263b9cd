#include "runtime/model_source.h"

#include <stdlib.h>
#include <sys/stat.h>

#include "base/fileio.h"

int kv_path_is_bundle(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int kv_model_open_path(kv_model *m, kv_bundle **bundle, const char *path, int threads, kv_error *err) {
    *bundle = NULL;
    if (!kv_path_is_bundle(path)) return kv_model_load(m, path, NULL, err);
    kv_bundle *b;
    int rc = kv_bundle_open(&b, path, err);
    if (rc) return rc;
    size_t n_config = 0;
    const char *config = kv_bundle_file(b, "config.json", &n_config);
    hf_config cfg;
    kv_tensor_source src;
    if (!config) rc = kv_fail(err, KV_EFORMAT, "%s: bundle holds no config.json", path);
    if (!rc) rc = kv_bundle_load_tensors(b, NULL, 0, threads, err);
    if (!rc) rc = hf_config_parse(&cfg, config, path, err);
    if (!rc) {
        kv_tensor_source_checkpoint(&src, kv_bundle_checkpoint(b));
        rc = kv_model_from_source(m, &cfg, &src, NULL, err);
    }
    if (rc) { kv_bundle_close(b); return rc; }
    *bundle = b;
    return 0;
}

int kv_tokenizer_open_path(kv_tokenizer **tk, const kv_bundle *bundle, const char *path, kv_error *err) {
    if (bundle) {
        size_t n = 0;
        const char *json = kv_bundle_file(bundle, "tokenizer.json", &n);
        if (!json) return kv_fail(err, KV_EFORMAT, "%s: bundle holds no tokenizer.json", path);
        return kv_tokenizer_load_json(tk, json, n, path, err);
    }
    char file[4096];
    int rc = kv_join(file, sizeof file, path, "tokenizer.json", err);
    return rc ? rc : kv_tokenizer_load(tk, file, err);
}
