/* Checkpoint rewriting for a KV map (METHODS.md 1-2): streams tensors from the mmapped source
 * to a new HF directory, dropping the K/V projections that no longer serve and adding SwiftKV's
 * projections. Peak memory: one chunk buffer per tensor stream, not the model. */
#ifndef KV_CONVERT_H
#define KV_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "formats/dtype.h"
#include "formats/error.h"
#include "transform/kvmap.h"

typedef enum { KV_INIT_MEAN = 0, KV_INIT_TARGET = 1 } kv_init_mode;
typedef enum { KV_LAYOUT_DEPLOY = 0, KV_LAYOUT_HF_SWIFTKV = 1 } kv_swiftkv_layout;

typedef struct {
    kv_map map;                /* the transform (identity allowed) */
    kv_init_mode kv_init;      /* served K/V: mean over readers (default) or the target's own */
    kv_swiftkv_layout layout;  /* SwiftKV: drop replaced q/k/v (deploy) or keep them (interop) */
    int out_dtype;             /* -1: keep each tensor's dtype; else a kv_dtype (F32/F16/BF16) */
    size_t shard_bytes;        /* 0: one model.safetensors */
    int force;                 /* allow a non-empty destination */
} kv_convert_opts;

typedef struct {
    int64_t params_before, params_after;
    size_t kv_bytes_before, kv_bytes_after; /* KV cache bytes per token, model dtype */
    int n_tensors_in, n_tensors_out, n_dropped, n_added, n_averaged;
    size_t bytes_written;
} kv_convert_report;

/* progress: called after each output tensor with (bytes done, bytes total) */
typedef void (*kv_convert_progress_fn)(void *ctx, size_t done, size_t total);

/* what a conversion would do (report only; nothing written) */
int kv_convert_plan(const char *src_dir, const kv_convert_opts *o, kv_convert_report *rep, kv_error *err);

int kv_convert_run(const char *src_dir, const char *dst_dir, const kv_convert_opts *o,
                   kv_convert_report *rep, kv_convert_progress_fn progress, void *progress_ctx,
                   kv_error *err);

#endif
