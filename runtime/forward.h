/* The Llama forward pass, for original, cross-layer and SwiftKV models, written once against the
 * backend table (kernels/backend.h): CPU or CUDA, the same code.
 *
 * A kv_state holds a model's KV cache, RoPE table, device views of its weights and every
 * activation, all from its backend (the activations one allocation, sized at init for max_batch
 * tokens per pass). Every op on them is a b->ops call; the host only fills op arguments, uploads
 * the positions table once and downloads logits (on a non-unified backend). kv_forward runs T
 * tokens at positions n_past .. n_past+T-1, writes their K/V into the cache and advances n_past;
 * decoding is kv_forward with T = 1.
 *
 * One layer i, on the rows x[T, H] (the residual stream):
 *   attention block   xb = rmsnorm(x, input_layernorm_i)
 *                     KV layer:   K, V of slot(i) at these positions = RoPE(xb Wk^T), xb Wv^T
 *                     q = RoPE(xb Wq^T);  src = kv(i)
 *                     att = attention(q, K/V of slot(src)), causal when src <= i, diagonal
 *                           masked when src > i ("upward": zero output at position 0);
 *                           layer i's sliding window (cfg.layer_window[i] = W > 0): only
 *                           keys s > p - W (the slot a ring when only windowed layers
 *                           read it: runtime/kvcache.h)
 *                     x += att Wo^T
 *   MLP block         xb = rmsnorm(x, post_attention_layernorm_i)
 *                     x += (silu(xb Wgate^T) * xb Wup^T) Wdown^T
 * SwiftKV (l, g): after layer l-1, s = rmsnorm(h_l, norm_swiftkv) and every group leader j >= l
 * writes K_j = RoPE(s Wk_swiftkv_j^T), V_j = s Wv_swiftkv_j^T; layers >= l then only read.
 * Head: logits = rmsnorm(x, norm) lm_head^T.
 *
 * Multi-token passes over a map with upward layers (prefill), METHODS.md s1:
 *   sequential    one token at a time through all layers (exact, = decoding the prompt);
 *   iterative:N   LCKV's plan: in layer order, layers outside the cyclic groups once, each
 *                 cyclic group [lo, hi] (kvmap_cyclic_group) N times over all T tokens, after
 *                 the groups below it: each pass from the same hidden states entering the group
 *                 and reading the target K/V of the previous pass (zeros before the first).
 *                 iterative-block:N iterates the one block from the lowest upward layer to the
 *                 highest target instead (the same with a single group).
 * SwiftKV prefill: every token runs layers < l (and so all K/V); only tokens whose logits are
 * wanted run layers >= l (the last, or none) unless no_swiftkv_skip. Other maps, likewise
 * exact: above the highest layer that writes K/V (its K/V still for every token) only the tokens
 * whose logits are wanted run (original: the last layer's attention output and MLP; pizza-
 * bottom/YOCO: every layer above the last KV layer), unless no_tail_skip. */
#ifndef KV_FORWARD_H
#define KV_FORWARD_H

#include <stdint.h>

#include "kernels/backend.h"
#include "runtime/kvcache.h"
#include "runtime/model.h"

typedef enum { KV_PREFILL_ITERATIVE = 0, KV_PREFILL_SEQUENTIAL = 1 } kv_prefill_mode;
#define KV_PREFILL_DEFAULT_PASSES KVMAP_DEFAULT_PASSES /* m + b = 7 + 2 in LCKV */

typedef struct {
    kv_prefill_mode mode;
    int passes; /* iterative: N (0 means KV_PREFILL_DEFAULT_PASSES) */
    int block; /* iterative: 1 = the single cyclic block instead of one cyclic group at
                            a time (the plan before LCKV's; kept for comparison) */
} kv_prefill;

/* "sequential", "iterative" (N = 9), "iterative:N" (1 <= N <= 1000000), or "iterative-block"
 * / "iterative-block:N" (the single-block plan) */
int kv_prefill_parse(kv_prefill *p, const char *spec, kv_error *err);

typedef enum { KV_LOGITS_LAST = 0, KV_LOGITS_ALL = 1, KV_LOGITS_NONE = 2 } kv_logits_want;

typedef struct { /* all-zero = last-token logits, both skips on, iterative:9 */
    kv_logits_want logits;
    int no_swiftkv_skip; /* SwiftKV: run layers >= l for every token */
    int no_tail_skip; /* other maps: run the layers above the highest K/V-writing layer for
                             every token, not only those whose logits are wanted */
    kv_prefill prefill; /* multi-token passes over maps with upward layers */
} kv_forward_opts;

/* Device views of a kv_model's weights (b->ops->map of each host tensor, once at init; the CPU
 * backend's map returns the host pointers themselves): the model's fields, shapes and NULLs. */
typedef struct {
    const void *embed; /* [V, H] as the model's mat_type */
    const float *final_norm; /* [H] */
    const void *lm_head; /* [V, H] as mat_type (the embed view when tied) */
    const float *norm_swiftkv; /* [H] SwiftKV only, else NULL */
    kv_layer_weights *layers; /* [L] (host array of device pointers) */
} kv_weight_views;

typedef struct { /* one b->ops->map, unmapped at kv_state_free */
    const void *host, *dev;
    size_t bytes;
} kv_weight_map;

/* Unless noted, every pointer below is device memory of `backend` ("B" = max_batch rows). */
typedef struct {
    kv_backend *backend; /* runs every op; the buffers below are its memory (the backend is not
                             the state's: it must outlive it) */
    const kv_model *model;
    kv_weight_views w; /* the weights the ops read */
    kv_weight_map *maps; /* [n_maps] host array: the distinct tensors mapped */
    int n_maps;
    kv_cache cache;
    kv_rope_table rope; /* device table (kv_backend_rope_table), positions 0 .. max_seq-1 */
    kv_rope_table rope_host; /* HOST: the table it was made from */
    int max_seq; /* positions the cache holds */
    int max_batch; /* tokens per internal pass (longer inputs run in chunks) */
    int mlp_rows; /* tokens per MLP pass within one (max_batch, or on the CPU with 16-bit
                     weights about half of a long batch, a multiple of KV_GEMM_ROW_ALIGN: half
                     the MLP's buffers, the same bits) */
    int n_past; /* positions already in the cache */
    int has_upward; /* the map has layers with kv(i) > i */
    int top_kv_writer; /* highest layer writing K/V from its own input (-1: none) */
    int block_lo, block_hi; /* their cyclic block (the span of all cyclic groups) */
    void *block; /* the one backend allocation the buffers below are carved from */
    size_t block_bytes; /* its size */
    uint64_t mem_act, mem_cache; /* bytes held in the memory budget (base/membudget.h):
                                    activations with the RoPE table and host logits; KV cache */
    float *x; /* [B, H] residual stream */
    float *xb; /* [B, H] normed input of the current block */
    float *q; /* [B, nh*hd] queries; at least nh*hd + 2 kv_dim: one token's q, k, v when they
                 come from one pass (forward.c, decode_qkv) */
    float *att; /* [B, nh*hd] attention output */
    float *gate,
        *up; /* [mlp_rows, FFN] MLP hidden; gate at least 2 FFN: one token's gate then up when
                         they come from one pass (forward.c, decode_gate_up). They share their
                         memory with q, att and kv_rows (an attention block's buffers are dead
                         in the MLP and the other way round) */
    float *x_block; /* [B, H] hidden entering the cyclic group (upward maps only) */
    int32_t *pos; /* [max_seq] 0, 1, .., max_seq-1 (uploaded at init): the rows at
                             pos0.. read pos + pos0 */
    float *kv_rows; /* [2 * B * kv_dim]: K [T, kv_dim] then V [T, kv_dim] of the rows in
                             flight, before they are stored head by head in the cache */
    float *dev_logits; /* [B, V] the LM head's output before download (non-unified backends
                             only, else NULL: logits go straight to the caller's buffer) */
    float *logits; /* HOST [V]: last-token logits when kv_forward gets no output buffer
                             (on a unified backend carved from the block, else malloc'd) */
} kv_state;

/* b runs the forward (kernels/backend.h; it must outlive s). max_seq <= max_position_embeddings;
 * max_batch >= 1 (capped at max_seq); cache_dtype KV_F32 (the reference) or KV_BF16 (half the
 * KV bytes; K/V rounded to nearest even as they are cached, all arithmetic still F32) */
int kv_state_init(kv_state *s, kv_backend *b, const kv_model *m, int max_seq, int max_batch,
                  kv_dtype cache_dtype, kv_error *err);
void kv_state_free(kv_state *s);
void kv_state_reset(kv_state *s); /* forget the context (n_past = 0) */
/* bytes of activations + KV cache + RoPE table (the backend's memory, not the weights) */
size_t kv_state_bytes(const kv_state *s);

/* Runs tokens[T] (host ids) at positions n_past.. and advances n_past. logits: HOST memory (may
 * be NULL: s->logits is used for LAST): [T, V] for KV_LOGITS_ALL, [V] for KV_LOGITS_LAST.
 * o may be NULL (defaults). On error the context is undefined: kv_state_reset before reuse. */
int kv_forward(kv_state *s, const int32_t *tokens, int T, const kv_forward_opts *o, float *logits,
               kv_error *err);

/* ---- the steps kv_forward is made of ----
 * x [T, H] are device rows at positions pos0 .. pos0+T-1 (pos0 + T <= max_seq, T <= max_batch);
 * the attention reads cache positions 0 .. pos0+T-1. Each returns 0 or the failing op's code
 * with err filled by the backend. */

/* attention block of `layer`: writes its K/V when it is a KV layer (not SwiftKV j >= l) */
int kv_layer_attention(kv_state *s, int layer, float *x, int T, int pos0, kv_error *err);
/* MLP block of `layer` */
int kv_layer_mlp(kv_state *s, int layer, float *x, int T, kv_error *err);
/* layers [from, to) in order, each attention then MLP */
int kv_layers_run(kv_state *s, int from, int to, float *x, int T, int pos0, kv_error *err);
/* SwiftKV: x = h_l; writes K/V of every group leader j >= l from norm_swiftkv(x) */
int kv_swiftkv_write_kv(kv_state *s, const float *x, int T, int pos0, kv_error *err);
/* logits[T, V] (device) = rmsnorm(x, norm) lm_head^T (x is not modified) */
int kv_lm_head(kv_state *s, const float *x, int T, float *logits, kv_error *err);

#endif
