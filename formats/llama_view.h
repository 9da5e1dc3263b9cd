/* A Llama checkpoint seen through its config.json: every tensor the config implies, bound by HF
 * name to a slot, shape- and dtype-checked, and every tensor of the checkpoint accounted for.
 * The one place that knows HF tensor names and shapes: the runtime model and the trainer take
 * their tensors from a bound view, over a checkpoint, a bundle or tensors in memory
 * (formats/tensor_source.h).
 *
 * Shapes (H hidden, F intermediate, V vocab, nh/nkv heads, hd head_dim):
 *   model.embed_tokens.weight [V, H]; model.norm.weight [H]; lm_head.weight [V, H] unless tied
 *   model.layers.{i}.input_layernorm.weight, post_attention_layernorm.weight [H]
 *   model.layers.{i}.self_attn.q_proj.weight [nh*hd, H], k_proj/v_proj.weight [nkv*hd, H],
 *     o_proj.weight [H, nh*hd]; with attention_bias a .bias of the row count on each
 *   model.layers.{i}.mlp.gate_proj/up_proj.weight [F, H], down_proj.weight [H, F]; with
 *     mlp_bias a .bias of the row count on each
 *   SwiftKV: model.norm_swiftkv.weight [H]; layers j >= l: self_attn.q_proj_swiftkv.weight
 *     [nh*hd, H]; group leaders ((j-l) % g == 0): self_attn.{k,v}_proj_swiftkv.weight
 *     [nkv*hd, H] (+ .bias with attention_bias)
 *
 * Optional tensors (present or not, always shape- and dtype-checked):
 *   - cross-layer map: k/v projections of a non-KV layer (kv(i) != i) are IGNORED: their slots
 *     stay NULL, they count in n_ignored (METHODS.md s2: a runtime ignores them). A mis-shaped
 *     one is still an error: it means the config does not describe the checkpoint.
 *   - SwiftKV: the original q/k/v projections of layers >= l (the "hf-swiftkv" interop layout
 *     keeps the teacher's) are BOUND when present, so a distiller can use them; a runtime uses
 *     the *_swiftkv slots for those layers.
 *   - tied embeddings: a stored lm_head.weight is IGNORED (HF ties it to embed_tokens).
 * Any other tensor in the checkpoint is an error naming it. Every tensor must be F32, F16 or
 * BF16. Messages name the file holding the tensor (kv_tensor_source.where). */
#ifndef KV_LLAMA_VIEW_H
#define KV_LLAMA_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "formats/tensor_source.h"
#include "base/rope_config.h"

/* The sizes every stage derives from config.json, derived once (llama_dims_init). */
typedef struct {
    int n_layers, hidden, n_heads, n_kv_heads, head_dim, ffn, vocab; /* L, H, nh, nkv, hd, F, V */
    int q_dim, kv_dim; /* nh*hd, nkv*hd */
    int max_pos; /* max_position_embeddings */
    float eps; /* rms_norm_eps */
    kv_rope_config rope; /* rope_theta, rope_scaling */
} llama_dims;

/* from a parsed (validated) config */
void llama_dims_init(llama_dims *d, const hf_config *c);

typedef struct {
    const st_tensor *input_norm; /* [H] */
    const st_tensor *q, *k, *v, *o; /* [nh*hd, H], [nkv*hd, H] x2, [H, nh*hd] */
    const st_tensor *q_bias, *k_bias, *v_bias, *o_bias; /* [nh*hd], [nkv*hd] x2, [H] */
    const st_tensor *post_norm; /* [H] */
    const st_tensor *gate, *up, *down; /* [F, H] x2, [H, F] */
    const st_tensor *gate_bias, *up_bias, *down_bias; /* [F] x2, [H] */
    /* SwiftKV, layers >= l; k/v only on group leaders */
    const st_tensor *q_swiftkv, *k_swiftkv, *v_swiftkv; /* [nh*hd, H], [nkv*hd, H] x2 */
    const st_tensor *q_swiftkv_bias, *k_swiftkv_bias, *v_swiftkv_bias;
} llama_layer_view;

typedef struct {
    const hf_config *cfg; /* borrowed: must outlive the view */
    const st_checkpoint *ckpt; /* borrowed, llama_view_bind only (NULL for another source) */
    const st_tensor *embed; /* [V, H] */
    const st_tensor *norm; /* [H] */
    const st_tensor *lm_head; /* [V, H]; NULL when tied: use llama_view_output() */
    const st_tensor *norm_swiftkv; /* [H]; SwiftKV only */
    int n_layers;
    llama_layer_view *layers; /* [n_layers] */
    int n_bound; /* tensors bound to a slot */
    int n_ignored; /* tensors present, checked, left unbound */
    int64_t n_params; /* elements of every tensor in the checkpoint */
    int64_t n_params_bound; /* elements of the bound tensors */
    size_t bytes_by_dtype[KV_DTYPE_COUNT]; /* data bytes of every tensor, per dtype */
} llama_view;

/* Binds every tensor of src (which must outlive the view); on failure the message names the
 * first problem (file and tensor, the shape the config implies and the config fields behind it)
 * and how many more there are, and the view is left empty. */
int llama_view_bind_source(llama_view *v, const hf_config *c, const kv_tensor_source *src,
                           kv_error *err);
/* llama_view_bind_source over the checkpoint's tensors; sets v->ckpt */
int llama_view_bind(llama_view *v, const hf_config *c, const st_checkpoint *ck, kv_error *err);
void llama_view_free(llama_view *v);
/* the output projection: lm_head, or embed_tokens when tied */
const st_tensor *llama_view_output(const llama_view *v);

/* A layer's tensors as a forward pass uses them, in this order. */
typedef enum {
    LLAMA_ATTN_NORM,
    LLAMA_Q,
    LLAMA_Q_BIAS,
    LLAMA_K,
    LLAMA_K_BIAS,
    LLAMA_V,
    LLAMA_V_BIAS,
    LLAMA_O,
    LLAMA_O_BIAS,
    LLAMA_MLP_NORM,
    LLAMA_GATE,
    LLAMA_GATE_BIAS,
    LLAMA_UP,
    LLAMA_UP_BIAS,
    LLAMA_DOWN,
    LLAMA_DOWN_BIAS,
    LLAMA_N_ROLES
} llama_role;
/* the tensor layer `layer` runs with in `role`: q/k/v (and biases) are the *_swiftkv ones on
 * SwiftKV layers j >= l, the plain ones elsewhere; NULL when the layer has none (k/v of a
 * non-KV layer or a SwiftKV non-leader, a bias without attention_bias / mlp_bias) */
const st_tensor *llama_view_used(const llama_view *v, int layer, llama_role role);

/* DIR/config.json + the checkpoint in DIR, bound. The struct holds the config the view points
 * to: do not copy or move it while open. */
typedef struct {
    hf_config config;
    st_checkpoint ckpt;
    llama_view view;
} llama_model_dir;

int llama_view_open_dir(llama_model_dir *m, const char *dir, kv_error *err);
void llama_view_close_dir(llama_model_dir *m);

#endif
