#include "runtime/model_source.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/fileio.h"

int kv_path_is_bundle(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int ends_with(const char *s, const char *suffix) {
    const size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

#define KV_MODEL_PATH_HINT "give a model directory, a .kvb bundle or its model.safetensors"

int kv_model_path_resolve(const char *path, char *dir, size_t cap, int *is_bundle, kv_error *err) {
    struct stat st;
    *is_bundle = 0;
    if (!path || !*path) return kv_fail(err, KV_EINVAL, "empty model path: " KV_MODEL_PATH_HINT);
    if (stat(path, &st) != 0)
        return kv_fail(err, KV_EIO, "%s: not a model (%s): " KV_MODEL_PATH_HINT, path,
                       strerror(errno));
    if (strlen(path) >= cap) return kv_fail(err, KV_EINVAL, "%s: path too long", path);
    if (S_ISDIR(st.st_mode)) {
        strcpy(dir, path);
        return 0;
    }
    if (!S_ISREG(st.st_mode))
        return kv_fail(err, KV_EINVAL,
                       "%s: not a model (not a file or directory): " KV_MODEL_PATH_HINT, path);
    if (ends_with(path, ".safetensors") || ends_with(path, ".safetensors.index.json") ||
        ends_with(path, "/config.json") || strcmp(path, "config.json") == 0) {
        const char *slash = strrchr(path, '/');
        if (!slash) strcpy(dir, ".");
        else if (slash == path) strcpy(dir, "/");
        else {
            memcpy(dir, path, (size_t)(slash - path));
            dir[slash - path] = 0;
        }
        return 0;
    }
    /* a bundle is a pax archive: "ustar" at offset 257 of its first header */
    char magic[6] = {0};
    FILE *f = fopen(path, "rb");
    const int ok = f && fseek(f, 257, SEEK_SET) == 0 && fread(magic, 1, 5, f) == 5 &&
                   !memcmp(magic, "ustar", 5);
    if (f) fclose(f);
    if (!ok)
        return kv_fail(err, KV_EFORMAT,
                       "%s: not a model (a file that is neither a .kvb bundle nor a "
                       "safetensors file): " KV_MODEL_PATH_HINT,
                       path);
    strcpy(dir, path);
    *is_bundle = 1;
    return 0;
}

int kv_model_open_path(kv_model *m, kv_bundle **bundle, const char *path, int threads,
                       kv_error *err) {
    *bundle = NULL;
    char dir[4096];
    int is_bundle = 0;
    int rc0 = kv_model_path_resolve(path, dir, sizeof dir, &is_bundle, err);
    if (rc0) return rc0;
    if (!is_bundle) return kv_model_load(m, dir, NULL, err);
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
    if (rc) {
        kv_bundle_close(b);
        return rc;
    }
    *bundle = b;
    return 0;
}

int kv_tokenizer_open_path(kv_tokenizer **tk, const kv_bundle *bundle, const char *path,
                           kv_error *err) {
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
