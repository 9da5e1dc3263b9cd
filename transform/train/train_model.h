/* A Llama model held for training: every tensor of the checkpoint by HF name, the ones the
 * forward pass uses as F32, a trainable flag and a gradient buffer per tensor.
 *
 * The tensors come from a llama_view of the params (formats/llama_view.h), as METHODS.md binds
 * them: original and cross-layer layers use q/o always and k/v on KV layers (a k/v left on a
 * non-KV layer is kept in the file but unused); SwiftKV layers j >= l use q_proj_swiftkv and, on
 * group leaders, k/v_proj_swiftkv (the teacher's q/k/v of those layers, interop layout, are kept
 * in the file but unused).
 * Frozen F32 tensors point into the checkpoint's mapping (or into another model, for a student
 * built in memory); trainable ones are always private copies. */
#ifndef KV_TRAIN_MODEL_H
#define KV_TRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"
#include "formats/hfconfig.h"
#include "formats/llama_view.h"
#include "formats/safetensors.h"
#include "kernels/kernels.h"
#include "formats/kvmap.h"

#define KVT_NAME_MAX 96

typedef struct {
    char name[KVT_NAME_MAX]; /* HF name */
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    size_t n; /* elements */
    kv_dtype file_dtype; /* dtype written on save */
    const st_tensor *src; /* bytes in the source checkpoint, or NULL */
    float *w; /* [n] F32 values; NULL when unused by the forward */
    int owned; /* w is a private allocation */
    int used; /* bound to the forward pass */
    int trainable;
    float *g; /* [n] gradient when trainable, else NULL */
} kvt_param;

typedef struct {
    kvt_param *attn_norm; /* [H] input_layernorm */
    kvt_param *q, *q_b; /* [nh*hd, H] (SwiftKV j >= l: q_proj_swiftkv) */
    kvt_param *k, *k_b, *v, *v_b; /* [nkv*hd, H]: on layers that compute K/V */
    kvt_param *o, *o_b; /* [H, nh*hd] */
    kvt_param *mlp_norm; /* [H] post_attention_layernorm */
    kvt_param *gate, *gate_b, *up, *up_b; /* [FFN, H] */
    kvt_param *down, *down_b; /* [H, FFN] */
} kvt_layer; /* biases NULL unless attention_bias / mlp_bias */

typedef struct {
    hf_config cfg; /* cfg.map: the KV map */
    llama_dims dims; /* L, H, nh, nkv, hd, F, V, RoPE (formats/llama_view.h) */
    int n_params;
    kvt_param *params; /* sorted by name */
    kvt_param *embed; /* [V, H] frozen always */
    kvt_param *final_norm; /* [H] */
    kvt_param *lm_head; /* [V, H]; the embedding when tied */
    kvt_param *norm_swiftkv; /* [H], SwiftKV only */
    kvt_layer *layers; /* [L] */
    char *config_json; /* config.json text written on save */
    char *dir; /* source directory (tokenizer files are copied from it) */
    st_checkpoint *ckpt; /* owned when loaded from a directory */
    uint64_t mem_weights, mem_grads; /* bytes held in the memory budget (base/membudget.h):
                                         widened or copied weights; gradients */
} kvt_model;

/* HF directory: config.json + safetensors, every tensor checked against the config. */
int kvt_model_load(kvt_model *m, const char *dir, kv_error *err);
void kvt_model_free(kvt_model *m);
kvt_param *kvt_model_find(const kvt_model *m, const char *name);

/* layer i computes K/V from its own input (KV layer that is not a SwiftKV layer j >= l) */
int kvt_layer_writes_own_kv(const kvt_model *m, int layer);
/* SwiftKV layer j >= l */
int kvt_layer_is_swiftkv(const kvt_model *m, int layer);

/* Marks the tensors METHODS.md s3 trains (SwiftKV: q/k/v_proj_swiftkv, norm_swiftkv; cross
 * layer: q_proj (+bias) of layers with kv(i) != i, k/v_proj (+bias) of KV layers read by another
 * layer) and gives them a private copy and a zeroed gradient. Returns the count of trainable
 * elements, or KV_ENOMEM / KV_EINVAL (identity map: nothing to train). */
long kvt_model_set_trainable_distill(kvt_model *m, kv_error *err);
/* every bound tensor but the embedding (tests: checks every backward) */
long kvt_model_set_trainable_all(kvt_model *m, kv_error *err);

/* Writes DIR/config.json and DIR/model.safetensors (every tensor of the model, in its file
 * dtype, trained values where trainable), and copies tokenizer.json, tokenizer.model,
 * tokenizer_config.json, special_tokens_map.json and generation_config.json from m->dir (or
 * aux_dir when given) when present. Atomic per file; DIR is created. */
int kvt_model_save(const kvt_model *m, const char *dir, const char *aux_dir, kv_error *err);

/* internal to the transform/ files: fills the derived sizes from cfg (checks cfg.map's layers) */
int kvt_model_dims(kvt_model *m, kv_error *err);
/* binds the per-layer pointers (after params are filled) from a llama_view of the params:
 * names, shapes and dtypes checked there, every param accounted for; LABEL names the model in
 * errors */
int kvt_model_bind(kvt_model *m, const char *label, kv_error *err);

#endif
