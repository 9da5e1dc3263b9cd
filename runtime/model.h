/* A Llama model ready to run: the config, its KV map and every weight as F32, taken from a
 * llama_view bound over a tensor source (formats/llama_view.h, formats/tensor_source.h).
 * F16/BF16 tensors are converted to F32 once, into one arena; F32 tensors are used in place
 * (zero-copy from the checkpoint's mapping) unless asked.
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
    const float *wq, *bq; /* [nh*hd, H], [nh*hd] (SwiftKV j >= l: q_proj_swiftkv) */
    const float *wk, *bk, *wv, *bv; /* [nkv*hd, H], [nkv*hd]; NULL unless the layer computes
                                        K/V (KV layer; SwiftKV leader: k/v_proj_swiftkv) */
    const float *wo, *bo; /* [H, nh*hd], [H] */
    const float *mlp_norm; /* [H] post_attention_layernorm */
    const float *w_gate, *b_gate; /* [FFN, H], [FFN] */
    const float *w_up, *b_up; /* [FFN, H], [FFN] */
    const float *w_down, *b_down; /* [H, FFN], [H] */
} kv_layer_weights; /* biases NULL unless attention_bias / mlp_bias */

typedef struct {
    hf_config cfg; /* cfg.map: the KV map */
    llama_dims dims; /* L, H, nh, nkv, hd, F, V, RoPE (formats/llama_view.h) */
    const float *embed; /* [V, H] model.embed_tokens */
    const float *final_norm; /* [H] model.norm */
    const float *lm_head; /* [V, H] lm_head, or embed when tied */
    const float *norm_swiftkv; /* [H] SwiftKV only */
    kv_layer_weights *layers; /* [L] */
    size_t n_params; /* elements of all bound weights (tied counted once) */
    size_t step_bytes; /* F32 weight bytes one decode step reads: every matrix and
                                        norm, the LM head, one embedding row */
    kv_arena store; /* converted (or copied) weights */
    uint64_t mem_reserved; /* bytes of store in the memory budget (base/membudget.h) */
    st_checkpoint *ckpt; /* owned when loaded from a directory */
} kv_model;

typedef struct {
    int copy_f32; /* copy F32 weights into the arena too (default: zero-copy) */
} kv_model_opts;

/* HF directory: config.json + model.safetensors (or shards). o may be NULL. */
int kv_model_load(kv_model *m, const char *dir, const kv_model_opts *o, kv_error *err);
/* from a parsed config and any tensor source, checked whole by llama_view (every tensor
 * accounted for); the source must outlive m unless copy_f32 */
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
