/* A Llama model ready to run: the config, its KV map and every weight, taken from a llama_view
 * bound over a tensor source (formats/llama_view.h, formats/tensor_source.h).
 *
 * Weight matrices (the embedding, the LM head and every projection) stay in their stored dtype
 * when they are all BF16 or all F16; otherwise (F32, or a mix) every matrix is held as F32,
 * F16/BF16 ones widened once. mat_type says which. Norms and biases are always F32 (widened when
 * stored narrower; they are small).
 *
 * Where they live: kv_model_from_source uses each tensor in place when it is held as stored
 * (zero-copy: the bundle's decoded tensors, a caller's table) and converts or copies the rest
 * into one arena (64-byte aligned, huge pages advised). kv_model_load copies every weight of the
 * checkpoint's files into that arena and drops the file's pages from the resident set as it
 * goes (peak: the weights once, plus one tensor): streaming weights from a file mapping ran
 * 10-20x slower than from anonymous memory on the VMs here (docs/RESULTS.md); map_file keeps
 * them in the mapping instead. A tensor whose data is not aligned to its element size is always
 * copied.
 *
 * Which projections a layer has depends on the map (METHODS.md):
 *  - original / cross-layer: q, o on every layer; k, v only on KV layers (kv(i) = i). A k/v left
 *    on a non-KV layer is ignored.
 *  - SwiftKV (l, g): layers < l as the original; layers j >= l use q_proj_swiftkv, group leaders
 *    ((j-l) % g == 0) own k/v_proj_swiftkv, applied to norm_swiftkv(h_l). The teacher's q/k/v
 *    of layers >= l (interop layout) are ignored. */
#ifndef KV_MODEL_H
#define KV_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "formats/hfconfig.h"
#include "formats/llama_view.h"
#include "kernels/kernels.h"
#include "base/arena.h"
#include "formats/kvmap.h"

typedef struct {
    const float *attn_norm; /* [H] input_layernorm */
    const void *wq; /* [nh*hd, H] as mat_type (SwiftKV j >= l: q_proj_swiftkv) */
    const float *bq; /* [nh*hd] */
    const void *wk, *wv; /* [nkv*hd, H] as mat_type; NULL unless the layer computes K/V (KV
                            layer; SwiftKV leader: k/v_proj_swiftkv) */
    const float *bk, *bv; /* [nkv*hd] */
    const void *wo; /* [H, nh*hd] as mat_type */
    const float *bo; /* [H] */
    const float *mlp_norm; /* [H] post_attention_layernorm */
    const void *w_gate, *w_up; /* [FFN, H] as mat_type */
    const float *b_gate, *b_up; /* [FFN] */
    const void *w_down; /* [H, FFN] as mat_type */
    const float *b_down; /* [H] */
} kv_layer_weights; /* biases NULL unless attention_bias / mlp_bias */

typedef struct {
    hf_config cfg; /* cfg.map: the KV map */
    llama_dims dims; /* L, H, nh, nkv, hd, F, V, RoPE (formats/llama_view.h) */
    kv_dtype mat_type; /* every weight matrix: KV_F32, KV_BF16 or KV_F16 */
    const void *embed; /* [V, H] model.embed_tokens as mat_type */
    const float *final_norm; /* [H] model.norm */
    const void *lm_head; /* [V, H] lm_head as mat_type, or embed when tied */
    const float *norm_swiftkv; /* [H] SwiftKV only */
    kv_layer_weights *layers; /* [L] */
    size_t n_params; /* elements of all bound weights (tied counted once) */
    size_t step_bytes; /* weight bytes one decode step reads, as held: every matrix and
                                        norm, the LM head, one embedding row */
    size_t weight_bytes; /* bytes of every distinct weight as held (tied counted once) */
    kv_arena store; /* converted (or copied) weights */
    uint64_t mem_reserved; /* bytes of store in the memory budget (base/membudget.h) */
    st_checkpoint *ckpt; /* owned when loaded from a directory */
} kv_model;

typedef struct {
    int copy_weights; /* kv_model_from_source: copy every weight into the arena (default:
                         zero-copy where the stored dtype is the one held) */
    int map_file; /* kv_model_load: > 0 uses the file's mapping in place (default 0: copy).
                     < 0 (kv_model_load passes it on with copy_weights): the source is a
                     read-only file mapping whose pages may be dropped once copied */
    int widen_f32; /* hold BF16 / F16 matrices as F32 too (mat_type KV_F32; tests, benches) */
} kv_model_opts;

/* HF directory: config.json + model.safetensors (or shards). o may be NULL. */
int kv_model_load(kv_model *m, const char *dir, const kv_model_opts *o, kv_error *err);
/* from a parsed config and any tensor source, checked whole by llama_view (every tensor
 * accounted for); the source must outlive m unless copy_weights */
/* Model FLOPs of a T-token prefill: every token through every layer (2 per weight of the Q, O,
 * MLP and the K/V projections the map keeps; SwiftKV's K/V from norm_swiftkv for each group
 * leader), causal attention (4 nh hd per visible position), and the head for the last token.
 * The skips kv_forward takes (SwiftKV's prefill skip, tail layers) do less work than this. */
double kv_model_prefill_flops(const kv_model *m, int T);

int kv_model_from_source(kv_model *m, const hf_config *cfg, const kv_tensor_source *src,
                         const kv_model_opts *o, kv_error *err);
void kv_model_free(kv_model *m);

/* SwiftKV: layer j runs on K/V computed from norm_swiftkv(h_l) rather than its own input */
int kv_model_swiftkv_layer(const kv_model *m, int layer);
/* the layer computes K/V from its own input_layernorm output (KV layer, not a SwiftKV j >= l) */
int kv_model_writes_own_kv(const kv_model *m, int layer);

#endif
