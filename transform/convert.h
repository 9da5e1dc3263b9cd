/* kvconvert's library: HF Llama checkpoint -> cross-layer-KV or SwiftKV checkpoint
 * (METHODS.md s1 "Converting a pretrained model", s2 "Tensors", "Initialisation").
 *
 * Three steps: open the source (config.json + safetensors, mmap'd), build a plan (the list of
 * output tensors, each a copy or an element-wise mean of source tensors, plus what is dropped),
 * run the plan into a destination folder. Running streams: one chunk of one tensor in memory at
 * a time; mapped source pages are released as they are consumed.
 *
 * Mean initialisation: every element is summed in double over the reading layers in ascending
 * layer order (each source value first widened to F32), divided by their count, rounded to F32,
 * then rounded (nearest even) to the output dtype. */
#ifndef KV_CONVERT_H
#define KV_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "formats/error.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "transform/kvmap.h"

typedef enum { CONVERT_INIT_MEAN, CONVERT_INIT_TARGET } convert_kv_init;
typedef enum { CONVERT_LAYOUT_DEPLOY, CONVERT_LAYOUT_HF_SWIFTKV } convert_layout;

#define CONVERT_KEEP_DTYPE (-1)
#define CONVERT_DEFAULT_SHARD ((size_t)5000000000u) /* 5 GB, as HF save_pretrained */

typedef void (*convert_progress_fn)(void *ctx, uint64_t done_bytes, uint64_t total_bytes);

typedef struct {
    kv_map map;             /* n_layers must equal the source's num_hidden_layers */
    convert_kv_init kv_init; /* served KV layers: mean of their readers (default) or their own */
    convert_layout layout;  /* SwiftKV only: drop (deploy) or keep (hf-swiftkv) q/k/v of j >= l */
    int out_dtype;          /* KV_F32/KV_F16/KV_BF16, or CONVERT_KEEP_DTYPE (each tensor's own) */
    size_t shard_bytes;     /* 0: one model.safetensors */
    int force;              /* write into a non-empty destination */
    const char *tool, *version; /* recorded in kvforge.json */
    convert_progress_fn progress;
    void *progress_ctx;
} convert_options;

void convert_options_init(convert_options *o); /* mean, deploy, keep dtype, 5 GB shards */

/* the source checkpoint: config.json parsed (and its text kept), tensors mmap'd */
typedef struct {
    char *dir;
    char *config_text;
    hf_config cfg;
    st_checkpoint ckpt;
} convert_source;

int convert_source_open(convert_source *s, const char *dir, kv_error *err);
void convert_source_close(convert_source *s);

typedef enum {
    CONVERT_COPY,  /* one source tensor, converted to the output dtype */
    CONVERT_MEAN,  /* element-wise mean of n_src source tensors of one shape */
} convert_op;

typedef struct {
    char *name;                 /* output tensor name */
    st_spec spec;               /* output dtype and shape; spec.name == name */
    convert_op op;
    int n_src;
    const st_tensor **src;      /* [n_src], pointing into the source checkpoint */
    int added;                  /* a tensor the source does not have (SwiftKV) */
} convert_tensor;

typedef struct {
    const convert_source *source;
    convert_options opt;
    hf_config out_cfg;          /* the source config with the KV fields and dtype of the output */
    int n_out;
    convert_tensor *out;        /* sorted by name */
    int n_dropped;
    const st_tensor **dropped;  /* source tensors with no place in the output, sorted by name */
    uint64_t src_params, out_params, src_bytes, out_bytes; /* elements and bytes of all tensors */
    kv_dtype cache_dtype;       /* element type the KV-cache figures assume (the output's) */
    size_t kv_bytes_src, kv_bytes_out; /* KV-cache bytes per token */
    int slots_src, slots_out;
} convert_plan;

/* Checks the map against the config, the tensors against the config (names, shapes, float
 * types of the projections it touches), and lists the output. Refuses an already transformed
 * source (swiftkv config, integer layer_types map or *_swiftkv tensors). */
int convert_plan_build(convert_plan *p, const convert_source *s, const convert_options *o,
                       kv_error *err);
void convert_plan_free(convert_plan *p);

/* the kvmap diagram, then parameter, KV-cache and tensor savings; malloc'd, NULL if no memory */
char *convert_plan_text(const convert_plan *p);

typedef struct {
    char name[256];   /* file name inside the source folder */
    uint64_t bytes;
    char sha256[65];
} convert_file_hash;

/* the plan as JSON (kvforge.json layout): tool, recipe, source files (with sha256 when hashes
 * are given), tensors dropped/added/mean-initialised, parameter and KV-cache savings.
 * malloc'd, NULL if no memory. */
char *convert_plan_json(const convert_plan *p, const convert_file_hash *hashes, int n_hashes);

/* Writes DST: the output tensors (model.safetensors or shards + index), config.json with the KV
 * fields, the tokenizer/generation files of the source, and kvforge.json (whose text is
 * returned in *manifest_out when non-NULL; free it). Built in a sibling folder DST.tmp-XXXXXX and
 * renamed into place; with opt.force and a non-empty DST the files are moved in one by one and
 * stale checkpoint files (*.safetensors, the index) removed. Refuses DST = the source, DST inside
 * the source or the source inside DST, and a non-empty DST without force. */
int convert_run(const convert_plan *p, const char *dst, char **manifest_out, kv_error *err);

/* source file names copied beside the weights when present */
extern const char *const convert_side_files[];

#endif
