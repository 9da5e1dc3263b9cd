/* Opening a model wherever it lives: an HF directory or a kvforge bundle (.kvb). A bundle's
 * tensors are decompressed (in parallel, sha256-checked) into memory the bundle owns, so the
 * bundle must stay open as long as the model. */
#ifndef KV_MODEL_SOURCE_H
#define KV_MODEL_SOURCE_H

#include "formats/bundle.h"
#include "formats/tokenizer.h"
#include "runtime/model.h"

int kv_path_is_bundle(const char *path); /* a regular file (not a directory) */
/* What a model path names, as every tool accepts it: a model directory (dir = path), a kvforge
 * bundle (*is_bundle = 1, dir = path), or a file of a model directory (model.safetensors, a
 * shard, its index, config.json: dir = that folder). Anything else fails with one message:
 * "PATH: not a model (...): give a model directory, a .kvb bundle or its model.safetensors". */
int kv_model_path_resolve(const char *path, char *dir, size_t cap, int *is_bundle, kv_error *err);
/* *bundle is set (and must be closed after kv_model_free) when path is a bundle, else NULL */
int kv_model_open_path(kv_model *m, kv_bundle **bundle, const char *path, int threads,
                       kv_error *err);
/* tokenizer.json from the directory or the bundle (bundle may be NULL for a directory) */
int kv_tokenizer_open_path(kv_tokenizer **tk, const kv_bundle *bundle, const char *path,
                           kv_error *err);

#endif
