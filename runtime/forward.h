/* The Llama forward pass on CPU, for original, cross-layer and SwiftKV models.
 *
 * A kv_state holds a model's KV cache, RoPE table and every activation (one arena, sized at
 * init for max_batch tokens per pass). kv_forward runs T tokens at positions n_past .. n_past+T-1,
 * writes their K/V into the cache and advances n_past; decoding is kv_forward with T = 1.
 *
 * One layer i, on the rows x[T, H] (the residual stream):
 *   attention block   xb = rmsnorm(x, input_layernorm_i)
 *                     KV layer:   K, V of slot(i) at these positions = RoPE(xb Wk^T), xb Wv^T
 *                     q = RoPE(xb Wq^T);  src = kv(i)
 *                     att = attention(q, K/V of slot(src)), causal when src <= i, diagonal
 *                           masked when src > i ("upward": zero output at position 0)
 *                     x += att Wo^T
 *   MLP block         xb = rmsnorm(x, post_attention_layernorm_i)
 *                     x += (silu(xb Wgate^T) * xb Wup^T) Wdown^T
 * SwiftKV (l, g): after layer l-1, s = rmsnorm(h_l, norm_swiftkv) and every group leader j >= l
 * writes K_j = RoPE(s Wk_swiftkv_j^T), V_j = s Wv_swiftkv_j^T; layers >= l then only read.
 * Head: logits = rmsnorm(x, norm) lm_head^T.
 *
 * Multi-token passes over a map with upward layers (prefill), METHODS.md s1:
 *   sequential    one token at a time through all layers (exact, = decoding the prompt);
 *   iterative:N   layers below the cyclic block [lo, hi] once; the block N times over all T
 *                 tokens, each pass from the same hidden states entering it and reading the
 *                 target K/V of the previous pass (zeros before the first); layers above once.
 * SwiftKV prefill: every token runs layers < l (and so all K/V); only tokens whose logits are
 * wanted run layers >= l (the last, or none) unless no_swiftkv_skip. Other maps, likewise
 * exact: above the highest layer that writes K/V (its K/V still for every token) only the tokens
 * whose logits are wanted run (original: the last layer's attention output and MLP; pizza-
 * bottom/YOCO: every layer above the last KV layer), unless no_tail_skip. */
#ifndef KV_FORWARD_H
#define KV_FORWARD_H

#include <stdint.h>

#include "runtime/kvcache.h"
#include "runtime/model.h"

typedef enum { KV_PREFILL_ITERATIVE = 0, KV_PREFILL_SEQUENTIAL = 1 } kv_prefill_mode;
#define KV_PREFILL_DEFAULT_PASSES 9 /* m + b = 7 + 2 in LCKV */

typedef struct {
    kv_prefill_mode mode;
    int passes;          /* iterative: N (0 means KV_PREFILL_DEFAULT_PASSES) */
} kv_prefill;

/* "sequential", "iterative" (N = 9) or "iterative:N" (1 <= N <= 1000000) */
int kv_prefill_parse(kv_prefill *p, const char *spec, kv_error *err);

typedef enum { KV_LOGITS_LAST = 0, KV_LOGITS_ALL = 1, KV_LOGITS_NONE = 2 } kv_logits_want;

typedef struct {          /* all-zero = last-token logits, both skips on, iterative:9 */
    kv_logits_want logits;
    int no_swiftkv_skip;  /* SwiftKV: run layers >= l for every token */
    int no_tail_skip;     /* other maps: run the layers above the highest K/V-writing layer for
                             every token, not only those whose logits are wanted */
    kv_prefill prefill;   /* multi-token passes over maps with upward layers */
} kv_forward_opts;

typedef struct {
    const kv_model *model;
    kv_cache cache;
    kv_rope_table rope;   /* positions 0 .. max_seq-1 */
    int max_seq;          /* positions the cache holds */
    int max_batch;        /* tokens per internal pass (longer inputs run in chunks) */
    int n_past;           /* positions already in the cache */
    int has_upward;       /* the map has layers with kv(i) > i */
    int top_kv_writer;    /* highest layer writing K/V from its own input (-1: none) */
    int block_lo, block_hi; /* their cyclic block */
    kv_arena arena;       /* every buffer below */
    float *x;             /* [B, H] residual stream */
    float *xb;            /* [B, H] normed input of the current block */
    float *q;             /* [B, nh*hd] queries */
    float *att;           /* [B, nh*hd] attention output */
    float *gate, *up;     /* [B, FFN] MLP hidden */
    float *x_block;       /* [B, H] hidden entering the cyclic block (upward maps only) */
    int32_t *pos;         /* [B] positions of the rows in flight */
    float *logits;        /* [V] last-token logits when kv_forward gets no output buffer */
    float *kv_rows;       /* [2 * B * kv_dim]: K [T, kv_dim] then V [T, kv_dim] of the rows in
                             flight before rounding (BF16 cache only, else NULL) */
} kv_state;

/* max_seq <= max_position_embeddings; max_batch >= 1 (capped at max_seq); cache_dtype KV_F32
 * (the reference) or KV_BF16 (half the KV bytes; K/V rounded to nearest even as they are cached,
 * all arithmetic still F32) */
int kv_state_init(kv_state *s, const kv_model *m, int max_seq, int max_batch, kv_dtype cache_dtype,
                  kv_error *err);
void kv_state_free(kv_state *s);
void kv_state_reset(kv_state *s);  /* forget the context (n_past = 0) */
/* bytes of activations + KV cache + RoPE table */
size_t kv_state_bytes(const kv_state *s);

/* Runs tokens[T] at positions n_past.. and advances n_past. logits (may be NULL: s->logits is
 * used for LAST): [T, V] for KV_LOGITS_ALL, [V] for KV_LOGITS_LAST. o may be NULL (defaults).
 * On error the context is undefined: kv_state_reset before reuse. */
int kv_forward(kv_state *s, const int32_t *tokens, int T, const kv_forward_opts *o,
               float *logits, kv_error *err);

/* ---- the steps kv_forward is made of (also used by the distillation trainer) ----
 * x [T, H] are rows at positions pos0 .. pos0+T-1 (pos0 + T <= max_seq, T <= max_batch); the
 * attention reads cache positions 0 .. pos0+T-1. */

/* attention block of `layer`: writes its K/V when it is a KV layer (not SwiftKV j >= l) */
int kv_layer_attention(kv_state *s, int layer, float *x, int T, int pos0);
/* MLP block of `layer` */
void kv_layer_mlp(kv_state *s, int layer, float *x, int T);
/* layers [from, to) in order, each attention then MLP */
int kv_layers_run(kv_state *s, int from, int to, float *x, int T, int pos0);
/* SwiftKV: x = h_l; writes K/V of every group leader j >= l from norm_swiftkv(x) */
void kv_swiftkv_write_kv(kv_state *s, const float *x, int T, int pos0);
/* logits[T, V] = rmsnorm(x, norm) lm_head^T (x is not modified) */
void kv_lm_head(kv_state *s, const float *x, int T, float *logits);

#endif
