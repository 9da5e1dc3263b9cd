/* kvconvert's library: HF Llama checkpoint -> cross-layer-KV or SwiftKV checkpoint
 * (METHODS.md s1 "Converting a pretrained model", s2 "Tensors", "Initialisation").
 *
 * Three steps: open the source (config.json parsed, safetensors validated and mmap'd), build a
 * plan (the output tensors, each a copy or an element-wise mean of source tensors, and the
 * dropped ones), run the plan into a destination folder. kv_convert_plan / kv_convert_run do
 * all three in one call.
 *
 * Running streams: one chunk of one tensor in memory at a time (about 20 MB of buffers whatever
 * the model size); the source files are hashed on a second thread meanwhile. Output is
 * deterministic. The source is never written. DST is built in a sibling folder DST.tmp-XXXXXX
 * (every file fsync'd) and renamed into place.
 *
 * Mean initialisation: every element is summed in double over the reading layers in ascending
 * layer order (each source value first widened to F32), divided by their count, rounded to F32,
 * then rounded (nearest even) to the output dtype. */
#ifndef KV_CONVERT_H
#define KV_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "formats/kvmap.h"

typedef enum { KV_INIT_MEAN = 0, KV_INIT_TARGET = 1 } kv_init_mode;

#define KV_CONVERT_KEEP_DTYPE    (-1)
#define KV_CONVERT_DEFAULT_SHARD ((size_t)5000000000u) /* kvconvert's default: 5 GB, as HF */

typedef struct {
    kv_map map; /* the transform (identity allowed); n_layers = the model's */
    kv_init_mode kv_init; /* served K/V: mean over readers (default) or the target's own */
    kv_swiftkv_layout layout; /* SwiftKV: keep the teacher's q/k/v of layers >= l (hf-swiftkv,
                                the default) or drop them (deploy); formats/kvmap.h */
    int out_dtype; /* KV_CONVERT_KEEP_DTYPE (each tensor's own) or KV_F32/F16/BF16 */
    size_t shard_bytes; /* 0: one model.safetensors */
    int force; /* allow a non-empty destination */
    int no_sync; /* skip the fsyncs: scratch output, atomic but not crash-durable */
    int no_hash_cache; /* hash every source file, ignoring formats/hashcache entries */
} kv_convert_opts;

typedef struct {
    int64_t params_before, params_after; /* elements of all tensors */
    size_t kv_bytes_before, kv_bytes_after; /* KV-cache bytes per token, both in the output's
                                               element type (torch_dtype after conversion) */
    int n_tensors_in, n_tensors_out, n_dropped, n_added, n_averaged;
    size_t bytes_written; /* tensor bytes of the output */
} kv_convert_report;

/* called after every chunk with (output tensor bytes done, total) */
typedef void (*kv_convert_progress_fn)(void *ctx, size_t done, size_t total);

/* what a conversion would do (nothing written); rep may be NULL */
int kv_convert_plan(const char *src_dir, const kv_convert_opts *o, kv_convert_report *rep,
                    kv_error *err);
/* converts SRC_DIR into DST_DIR; rep and progress may be NULL */
int kv_convert_run(const char *src_dir, const char *dst_dir, const kv_convert_opts *o,
                   kv_convert_report *rep, kv_convert_progress_fn progress, void *progress_ctx,
                   kv_error *err);

/* ---- step by step ---- */

typedef struct {
    char *dir;
    char *config_text; /* config.json as read */
    hf_config cfg;
    st_checkpoint ckpt;
} convert_source;

int convert_source_open(convert_source *s, const char *dir, kv_error *err);
void convert_source_close(convert_source *s);

typedef enum {
    CONVERT_COPY, /* one source tensor, rounded to the output dtype */
    CONVERT_MEAN, /* element-wise mean of n_src source tensors of one shape */
} convert_op;

typedef struct {
    char *name; /* output tensor name */
    st_spec spec; /* output dtype and shape; spec.name == name */
    convert_op op;
    int n_src;
    const st_tensor **src; /* [n_src], pointing into the source checkpoint */
    int added; /* a tensor the source does not have (SwiftKV) */
} convert_tensor;

typedef struct {
    const convert_source *source;
    kv_convert_opts opt;
    hf_config out_cfg; /* the source config with the output's KV fields and dtype */
    int n_out;
    convert_tensor *out; /* sorted by name */
    int n_dropped;
    const st_tensor **dropped; /* source tensors left out, sorted by name */
    uint64_t src_params, out_params, src_bytes, out_bytes; /* elements and bytes of all tensors */
    kv_dtype cache_dtype; /* element type of the KV-cache figures (the output's) */
    size_t kv_bytes_src, kv_bytes_out; /* KV-cache bytes per token */
    int slots_src, slots_out;
    /* sliding windows (source hf_config.layer_window; 0 without): bytes the KV cache holds at
     * max_position_embeddings positions in passes of KVMAP_RUN_BATCH tokens (rings included) */
    size_t kv_ctx_src, kv_ctx_out;
} convert_plan;

/* Checks the map against the config and the tensors against the config (names, shapes, float
 * types of every q/k/v projection and bias), then lists the output. Refuses a source that is
 * transformed already (swiftkv config, integer layer_types map, *_swiftkv tensors). */
int convert_plan_build(convert_plan *p, const convert_source *s, const kv_convert_opts *o,
                       kv_error *err);
void convert_plan_free(convert_plan *p);
void convert_plan_report(const convert_plan *p, kv_convert_report *rep);

/* the kvmap diagram, then KV-cache, parameter and tensor savings; malloc'd, NULL if no memory */
char *convert_plan_text(const convert_plan *p);

typedef struct {
    char name[256]; /* file name inside the source folder */
    uint64_t bytes;
    char sha256[65];
} convert_file_hash;

/* The plan as JSON, the layout of kvforge.json: tool, kvforge_version, recipe (kind, map,
 * layer_types, SwiftKV fields, kv_init, dtype, shard_size), source (dir, architecture, files
 * with sha256 when hashes are given), tensors (dropped, added, mean_of), parameters, weight
 * bytes, kv_cache. malloc'd, NULL if no memory. */
char *convert_plan_json(const convert_plan *p, const convert_file_hash *hashes, int n_hashes);

/* Writes DST: the output tensors (model.safetensors, or shards + index), config.json with the KV
 * fields, the side files of the source (convert_side_files) and kvforge.json (its text returned
 * in *manifest_out when non-NULL; free it). Built in a sibling folder DST.tmp-XXXXXX and renamed
 * over an absent or empty DST; with force and a non-empty DST the files are moved in one by one
 * and stale *.safetensors / index files removed, other files left alone. Refuses DST = the
 * source, DST inside the source or containing it, and a non-empty DST without force. */
int convert_run(const convert_plan *p, const char *dst, kv_convert_progress_fn progress,
                void *progress_ctx, char **manifest_out, kv_error *err);

/* source file names copied beside the weights when present, NULL-terminated */
extern const char *const convert_side_files[];

#endif
