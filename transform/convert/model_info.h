/* What `kvforge info` reports about a bound model: shapes from config.json, parameter count and
 * bytes from the actual tensors, the KV map and the KV-cache cost per token. */
#ifndef KV_MODEL_INFO_H
#define KV_MODEL_INFO_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"
#include "formats/hfconfig.h"
#include "formats/llama_view.h"

typedef enum { MODEL_KV_IDENTITY, MODEL_KV_CROSS, MODEL_KV_SWIFTKV } model_kv_kind;

typedef struct {
    char architecture[64];
    char model_type[32];
    const char *schema; /* hf_config_schema: "llama", "lckv-llama", ... */
    const char *swiftkv_layout; /* SwiftKV: "deploy" or "hf-swiftkv" (teacher's q/k/v
                                              kept on layers >= l); NULL otherwise */
    int n_layers, n_heads, n_kv_heads, head_dim;
    int hidden_size, ffn_size, vocab_size, max_position;
    int tied;
    char biases[32]; /* "q/k/v", "q/k/v/o", "q/k/v/o, mlp", "mlp" or "" (no bias) */
    kv_dtype dtype; /* config torch_dtype: the KV-cache element type */
    int64_t n_params; /* elements of every tensor in the checkpoint */
    int64_t n_params_config; /* hf_config_param_count (deploy layout) */
    int n_tensors, n_files;
    size_t bytes_by_dtype[KV_DTYPE_COUNT]; /* tensor data bytes per dtype */
    size_t bytes_total;
    model_kv_kind kv_kind;
    int kv_slots; /* L, KV layers, or l + (L - l)/g */
    int swiftkv_layers, swiftkv_group; /* SwiftKV l, g (0 otherwise) */
    size_t kv_bytes_per_token; /* 2 * kv_slots * nkv * hd * sizeof(dtype) */
    size_t kv_bytes_per_token_full; /* the same with L slots */
    char kv_map[HF_MAX_LAYERS * 5 + 32]; /* "0_0_2_2_4"; identity "0_1_2_3_4"; SwiftKV "l=2,g=3" */
    double prefill_saving; /* SwiftKV: model_swiftkv_prefill_saving; else 0 */
    kv_rope_config rope; /* rope_theta, rope_scaling (kind and parameters) */
    /* sliding windows (hf_config.layer_window), all 0 without: window W, how many layers use it,
     * KV-cache slots kept as rings; the cache's bytes at the full context (max_position_
     * embeddings positions, passes of KVMAP_RUN_BATCH tokens: what kvrun holds there) and what
     * it would hold with no ring */
    int sliding_window, window_layers, ring_slots;
    size_t kv_bytes_context, kv_bytes_context_full;
} model_info;

/* SwiftKV (l, g) on the model C describes: the share of a prompt token's layer FLOPs (the weight
 * matmuls: q, k, v, o, MLP; attention scores, which grow with the context, and the LM head,
 * which a prompt token does not run, excluded) that prefill skips: layers l..L-1 run only the
 * K/V projections of the (L - l)/g group leaders. The baseline is the original model as kvrun
 * runs it, whose last layer already computes only K/V for a prompt token, so l = L-1, g = 1
 * saves nothing. 0 when l >= L. */
double model_swiftkv_prefill_saving(const hf_config *c, int l, int g);
/* "saving 40.0%", "growth 0.1%" or "no change" (never "-0.0%") */
const char *model_change_text(double before, double after, char *buf, size_t cap);

/* from a bound view (its config and checkpoint) */
int model_info_fill(model_info *mi, const llama_view *v, kv_error *err);
/* DIR/config.json + checkpoint, bound (every tensor checked), then filled */
int model_info_load_dir(model_info *mi, const char *dir, kv_error *err);

/* The element type every KV-cache count assumes (info, plan, kvconvert's summary, kvrun's
 * default cache): the model's weight type, config.json torch_dtype (F32 when not a float type).
 * The baseline is the original model (every layer its own K/V) in that same type. */
kv_dtype model_info_cache_dtype(const model_info *mi);
const char *model_kv_kind_name(model_kv_kind k); /* "identity", "cross-layer", "swiftkv" */

/* malloc'd text: a heading line with LABEL (may be NULL), then "  key   value" lines */
int model_info_text(const model_info *mi, const char *label, char **out, kv_error *err);
/* who loads a checkpoint of SCHEMA (docs/INTEROP.md), one line */
const char *model_info_schema_note(const char *schema);

/* malloc'd JSON object, one line (cJSON_PrintUnformatted); keys: architecture, model_type,
 * schema, schema_note (+ swiftkv_layout for SwiftKV), layers, hidden_size, intermediate_size, heads, kv_heads, head_dim, vocab_size,
 * max_position_embeddings, tied (+ biases when the model has any: "q/k/v", "q/k/v/o", ...), dtype, parameters, parameters_config, tensors, files,
 * bytes_total, bytes_per_dtype {DTYPE: bytes}, kv_map_kind, kv_map, kv_slots,
 * kv_cache_dtype, kv_cache_bytes_per_token, kv_cache_bytes_per_token_full, kv_cache_saving,
 * rope_theta, rope_scaling (null or {rope_type, factor, ..., and for yarn / longrope the
 * attention_factor in effect}) (+ swiftkv_layers, swiftkv_group,
 * across_kv_saving, prefill_compute_saving for SwiftKV) (+ sliding_window,
 * sliding_window_layers, kv_ring_slots, kv_cache_bytes_at_context,
 * kv_cache_bytes_at_context_without_rings for a model with sliding windows) */
int model_info_json(const model_info *mi, char **out, kv_error *err);

#endif
