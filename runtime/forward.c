/* Llama forward pass; the KV map decides which slot each layer writes and reads (forward.h). */
#include "runtime/forward.h"

#include <stdlib.h>
#include <string.h>

#include "base/membudget.h"
#include "formats/hfwindow.h"

/* ---- setup ------------------------------------------------------------------------------ */

int kv_prefill_parse(kv_prefill *p, const char *spec, kv_error *err) {
    if (!spec) return kv_fail(err, KV_EINVAL, "prefill: no mode given");
    if (strcmp(spec, "sequential") == 0) {
        *p = (kv_prefill){.mode = KV_PREFILL_SEQUENTIAL};
        return 0;
    }
    const int block = strncmp(spec, "iterative-block", 15) == 0;
    const char *rest = block ? spec + 15 : strncmp(spec, "iterative", 9) == 0 ? spec + 9 : NULL;
    if (rest && !*rest) {
        *p = (kv_prefill){
            .mode = KV_PREFILL_ITERATIVE, .passes = KV_PREFILL_DEFAULT_PASSES, .block = block};
        return 0;
    }
    if (rest && *rest == ':') {
        const char *s = rest + 1;
        long n = 0;
        int digits = 0;
        for (; *s >= '0' && *s <= '9' && n <= 1000000; s++, digits++) n = n * 10 + (*s - '0');
        if (digits && !*s && n >= 1 && n <= 1000000) {
            *p = (kv_prefill){.mode = KV_PREFILL_ITERATIVE, .passes = (int)n, .block = block};
            return 0;
        }
    }
    return kv_fail(err, KV_EINVAL,
                   "prefill mode '%s': expected 'sequential', 'iterative', 'iterative:N', "
                   "'iterative-block' or 'iterative-block:N' (1 <= N <= 1000000)",
                   spec);
}

/* A device view of `count` elements of `elem` bytes of host weights (NULL stays NULL). A tensor
 * mapped already (the tied LM head is the embedding) gets its first view. */
static int map_weight(kv_state *s, const void **dev, const void *host, size_t count, size_t elem,
                      const char *what, int layer, kv_error *err) {
    *dev = NULL;
    if (!host) return 0;
    const size_t bytes = elem * count;
    for (int i = 0; i < s->n_maps; i++)
        if (s->maps[i].host == host && s->maps[i].bytes == bytes) {
            *dev = s->maps[i].dev;
            return 0;
        }
    kv_backend *b = s->backend;
    const void *d = NULL;
    int rc = b->ops->map(b, &d, host, bytes, err);
    if (rc)
        return layer < 0 ? kv_wrap(err, "weights: %s", what)
                         : kv_wrap(err, "weights: layer %d %s", layer, what);
    s->maps[s->n_maps++] = (kv_weight_map){.host = host, .dev = d, .bytes = bytes};
    *dev = d;
    return 0;
}

/* s->w: every tensor of m the forward reads */
static int map_weights(kv_state *s, const kv_model *m, kv_error *err) {
    const llama_dims *d = &m->dims;
    const size_t L = (size_t)d->n_layers, H = (size_t)d->hidden, Q = (size_t)d->q_dim,
                 KV = (size_t)d->kv_dim, F = (size_t)d->ffn, V = (size_t)d->vocab;
    enum { PER_LAYER = 16, GLOBAL = 4 };
    s->w.layers = calloc(L ? L : 1, sizeof *s->w.layers);
    s->maps = calloc(L * PER_LAYER + GLOBAL, sizeof *s->maps);
    if (!s->w.layers || !s->maps)
        return kv_fail(err, KV_ENOMEM, "weights: out of memory for %zu layer views", L);
    const size_t me = kv_dtype_size(m->mat_type), fe = sizeof(float);
    int rc = map_weight(s, &s->w.embed, m->embed, V * H, me, "embed_tokens", -1, err);
    if (!rc)
        rc = map_weight(s, (const void **)&s->w.final_norm, m->final_norm, H, fe, "norm", -1, err);
    if (!rc) rc = map_weight(s, &s->w.lm_head, m->lm_head, V * H, me, "lm_head", -1, err);
    if (!rc)
        rc = map_weight(s, (const void **)&s->w.norm_swiftkv, m->norm_swiftkv, H, fe,
                        "norm_swiftkv", -1, err);
    for (int i = 0; !rc && i < (int)L; i++) {
        const kv_layer_weights *h = &m->layers[i];
        kv_layer_weights *v = &s->w.layers[i];
#define VEC(p) (const void **)&(p)
        const struct {
            const void **dev, *host;
            size_t count, elem;
            const char *what;
        } t[PER_LAYER] = {
            {VEC(v->attn_norm), h->attn_norm, H, fe, "input_layernorm"},
            {&v->wq, h->wq, Q * H, me, "q_proj"},
            {VEC(v->bq), h->bq, Q, fe, "q_proj bias"},
            {&v->wk, h->wk, KV * H, me, "k_proj"},
            {VEC(v->bk), h->bk, KV, fe, "k_proj bias"},
            {&v->wv, h->wv, KV * H, me, "v_proj"},
            {VEC(v->bv), h->bv, KV, fe, "v_proj bias"},
            {&v->wo, h->wo, H * Q, me, "o_proj"},
            {VEC(v->bo), h->bo, H, fe, "o_proj bias"},
            {VEC(v->mlp_norm), h->mlp_norm, H, fe, "post_attention_layernorm"},
            {&v->w_gate, h->w_gate, F * H, me, "gate_proj"},
            {VEC(v->b_gate), h->b_gate, F, fe, "gate_proj bias"},
            {&v->w_up, h->w_up, F * H, me, "up_proj"},
            {VEC(v->b_up), h->b_up, F, fe, "up_proj bias"},
            {&v->w_down, h->w_down, H * F, me, "down_proj"},
            {VEC(v->b_down), h->b_down, H, fe, "down_proj bias"},
        };
#undef VEC
        for (int j = 0; !rc && j < PER_LAYER; j++)
            rc = map_weight(s, t[j].dev, t[j].host, t[j].count, t[j].elem, t[j].what, i, err);
    }
    return rc;
}

/* the activations: one backend allocation carved into 64-byte aligned buffers (kv_arena's
 * rules): x, xb, then one region the attention block's buffers (q, att, kv_rows) and the MLP's
 * (gate, up) share, as no buffer of one block lives on into the other (forward.c's layer
 * functions), then x_block, pos and the logits. At 110M and 512 tokens the shared region is
 * 8 MiB where the two apart took 14. */
enum {
    ACT_X,
    ACT_XB,
    ACT_Q,
    ACT_ATT,
    ACT_KV_ROWS,
    ACT_GATE,
    ACT_UP,
    ACT_X_BLOCK,
    ACT_POS,
    ACT_DEV_LOGITS,
    ACT_LOGITS,
    N_ACT
};
enum { ACT_SHARED_FIRST = ACT_Q, ACT_MLP_FIRST = ACT_GATE, ACT_SHARED_END = ACT_X_BLOCK };

/* the bytes of buffers [from, to) carved back to back; -1 on overflow */
static int act_bytes(const size_t *counts, const size_t *elem, int from, int to, size_t *bytes) {
    *bytes = 0;
    for (int i = from; i < to; i++)
        if (kv_arena_reserve(bytes, counts[i], elem[i])) return -1;
    return 0;
}

static int alloc_activations(kv_state *s, kv_dtype cache_dtype, kv_error *err) {
    const kv_model *m = s->model;
    kv_backend *b = s->backend;
    const size_t B = (size_t)s->max_batch, H = (size_t)m->dims.hidden, Q = (size_t)m->dims.q_dim,
                 F = (size_t)m->dims.ffn, V = (size_t)m->dims.vocab, BM = (size_t)s->mlp_rows;
    const int unified = b->unified;
    const size_t KV = (size_t)m->dims.kv_dim;
    const size_t counts[N_ACT] = {[ACT_X] = B * H,
                                  [ACT_XB] = B * H,
                                  [ACT_Q] = B * Q > Q + 2 * KV ? B * Q : Q + 2 * KV,
                                  [ACT_ATT] = B * Q,
                                  [ACT_KV_ROWS] = 2 * B * KV,
                                  [ACT_GATE] = BM > 2 ? BM * F : 2 * F,
                                  [ACT_UP] = BM * F,
                                  [ACT_X_BLOCK] = s->has_upward ? B * H : 0,
                                  [ACT_POS] = (size_t)s->max_seq,
                                  [ACT_DEV_LOGITS] = unified ? 0 : B * V,
                                  [ACT_LOGITS] = unified ? V : 0};
    size_t elem[N_ACT];
    for (int i = 0; i < N_ACT; i++) elem[i] = i == ACT_POS ? sizeof(int32_t) : sizeof(float);
    size_t head, attn, mlp, tail, total = KV_ARENA_ALIGN; /* room to align the start */
    if (act_bytes(counts, elem, 0, ACT_SHARED_FIRST, &head) ||
        act_bytes(counts, elem, ACT_SHARED_FIRST, ACT_MLP_FIRST, &attn) ||
        act_bytes(counts, elem, ACT_MLP_FIRST, ACT_SHARED_END, &mlp) ||
        act_bytes(counts, elem, ACT_SHARED_END, N_ACT, &tail) ||
        __builtin_add_overflow(total, head, &total) ||
        __builtin_add_overflow(total, attn > mlp ? attn : mlp, &total) ||
        __builtin_add_overflow(total, tail, &total))
        return kv_fail(err, KV_ENOMEM, "activations for %d tokens overflow", s->max_batch);
    /* the budget first, for everything kv_state_init allocates: these activations (with the
     * host logits and the RoPE tables), the KV cache */
    uint64_t act = (uint64_t)total + (unified ? 0 : 4 * (uint64_t)V) +
                   2 * 2 * sizeof(float) * (uint64_t)s->max_seq * (uint64_t)(m->dims.head_dim / 2);
    const size_t cache_bytes = kvmap_cache_bytes_windowed(
        &m->cfg.map, m->cfg.layer_window, s->max_batch, m->dims.n_kv_heads, m->dims.head_dim,
        s->max_seq, kv_dtype_size(cache_dtype), NULL);
    const uint64_t cache = cache_bytes ? (uint64_t)cache_bytes : UINT64_MAX;
    const kv_mem_item items[2] = {{"KV cache", cache}, {"activations", act}};
    int rc = kv_mem_reserve("the run", items, 2, err);
    if (rc) return rc;
    s->mem_cache = cache;
    s->mem_act = act;
    rc = b->ops->alloc(b, &s->block, total, err);
    if (rc) return kv_wrap(err, "activations for %d tokens", s->max_batch);
    s->block_bytes = total;
    const uintptr_t start =
        ((uintptr_t)s->block + KV_ARENA_ALIGN - 1) & ~(uintptr_t)(KV_ARENA_ALIGN - 1);
    kv_arena carve = {.base = (unsigned char *)start,
                      .size = total - (size_t)(start - (uintptr_t)s->block)};
    void *slots[N_ACT];
    for (int i = 0; i < N_ACT; i++) {
        if (i == ACT_MLP_FIRST) carve.used -= attn; /* the MLP's buffers over the attention's */
        if (i == ACT_SHARED_END) carve.used += (attn > mlp ? attn : mlp) - mlp;
        slots[i] = kv_arena_take(&carve, counts[i], elem[i]);
    }
    s->x = slots[ACT_X];
    s->xb = slots[ACT_XB];
    s->q = slots[ACT_Q];
    s->att = slots[ACT_ATT];
    s->kv_rows = slots[ACT_KV_ROWS];
    s->gate = slots[ACT_GATE];
    s->up = slots[ACT_UP];
    s->x_block = s->has_upward ? slots[ACT_X_BLOCK] : NULL;
    s->pos = slots[ACT_POS];
    s->dev_logits = unified ? NULL : slots[ACT_DEV_LOGITS];
    s->logits = unified ? slots[ACT_LOGITS] : calloc((size_t)V, sizeof(float));
    if (!s->logits) return kv_fail(err, KV_ENOMEM, "logits: out of memory for %zu floats", V);
    /* the positions table 0 .. max_seq-1, once */
    int32_t *host_pos = malloc(sizeof(int32_t) * (size_t)s->max_seq);
    if (!host_pos) return kv_fail(err, KV_ENOMEM, "positions: out of memory");
    for (int t = 0; t < s->max_seq; t++) host_pos[t] = t;
    rc = b->ops->upload(b, s->pos, host_pos, sizeof(int32_t) * (size_t)s->max_seq, err);
    free(host_pos);
    return rc;
}

int kv_state_init(kv_state *s, kv_backend *b, const kv_model *m, int max_seq, int max_batch,
                  kv_dtype cache_dtype, kv_error *err) {
    *s = (kv_state){0};
    if (max_seq < 1 || max_seq > m->dims.max_pos)
        return kv_fail(err, KV_EINVAL,
                       "context of %d positions: the model allows 1..%d "
                       "(max_position_embeddings)",
                       max_seq, m->dims.max_pos);
    if (max_batch < 1) return kv_fail(err, KV_EINVAL, "batch of %d tokens", max_batch);
    if (max_batch > max_seq) max_batch = max_seq;
    s->backend = b;
    s->model = m;
    s->max_seq = max_seq;
    s->max_batch = max_batch;
    /* With BF16 or F16 weights the CPU runs a long batch's MLP in two passes where its hidden
     * buffers (gate and up, [B, FFN]) would pass 1/64 of the weights: 8 of the 11 MB of
     * activations of stories110M at B = 512, whose peak RSS is the tightest over its weights
     * (docs/RESULTS.md, round 12), against 23 MB of TinyLlama-1.1B's 2.2 GB. The products' rows
     * cut at a multiple of KV_GEMM_ROW_ALIGN keep every output's bits (kernels/cpu/matmul.c).
     * Each pass widens and packs the weights again: prefill 2-6% slower at 110M; F32 weights,
     * packed per worker, lost 2-13% and keep one pass. */
    s->mlp_rows = max_batch;
    const double mlp_bytes = 2.0 * sizeof(float) * max_batch * (double)m->dims.ffn;
    if (b->device == KV_DEVICE_CPU && m->mat_type != KV_F32 && max_batch > 4 * KV_GEMM_ROW_ALIGN &&
        64.0 * mlp_bytes > (double)m->step_bytes) {
        const int half = (max_batch + 1) / 2;
        s->mlp_rows = (half + KV_GEMM_ROW_ALIGN - 1) / KV_GEMM_ROW_ALIGN * KV_GEMM_ROW_ALIGN;
    }
    s->has_upward = kvmap_cyclic_block(&m->cfg.map, &s->block_lo, &s->block_hi) > 0;
    s->top_kv_writer = -1;
    for (int i = 0; i < m->dims.n_layers; i++)
        if (kv_model_writes_own_kv(m, i)) s->top_kv_writer = i;
    int rc;
    if ((rc = alloc_activations(s, cache_dtype, err)) ||
        (rc = kv_cache_init(&s->cache, b, &m->cfg.map, m->cfg.layer_window, max_batch,
                            m->dims.n_kv_heads, m->dims.head_dim, max_seq, cache_dtype, err)) ||
        (rc = kv_rope_table_init(&s->rope_host, m->dims.head_dim, max_seq, &m->dims.rope, err)) ||
        (rc = kv_backend_rope_table(b, &s->rope, &s->rope_host, err)) ||
        (rc = map_weights(s, m, err))) {
        kv_state_free(s);
        return rc;
    }
    return 0;
}

void kv_state_free(kv_state *s) {
    kv_backend *b = s->backend;
    if (b) {
        for (int i = 0; i < s->n_maps; i++) b->ops->unmap(b, s->maps[i].dev);
        kv_cache_free(&s->cache);
        if (s->rope.cos) kv_backend_rope_table_free(b, &s->rope);
        if (!b->unified) free(s->logits);
        b->ops->free(b, s->block);
    }
    const kv_mem_item items[2] = {{"KV cache", s->mem_cache}, {"activations", s->mem_act}};
    kv_mem_release(items, 2);
    kv_rope_table_free(&s->rope_host);
    free(s->maps);
    free(s->w.layers);
    *s = (kv_state){0};
}

void kv_state_reset(kv_state *s) { s->n_past = 0; }

size_t kv_state_bytes(const kv_state *s) {
    return s->block_bytes + s->cache.bytes +
           2 * sizeof(float) * (size_t)s->max_seq * (size_t)(s->model->dims.head_dim / 2);
}

/* ---- the steps of one layer ------------------------------------------------------------- */

/* K [T, kv_dim] (rotated here) and V [T, kv_dim] of the tokens at positions pos0.. into the rows
 * of the slot `layer` reads: stored head by head (kvcache.h), as the cache's dtype (BF16 rounded
 * to nearest even), in one run or, where a ring wraps within the pass, two (the same values a
 * full cache gets, bit for bit) */
static int store_kv(kv_state *s, int layer, float *k, const float *v, int T, int pos0,
                    kv_error *err) {
    kv_backend *b = s->backend;
    const llama_dims *d = &s->model->dims;
    const size_t row = (size_t)d->kv_dim, elem = s->cache.elem, hd = (size_t)d->head_dim;
    const size_t head_pitch = (size_t)kv_cache_head_rows(&s->cache, layer) * hd;
    int first[2], rows[2], count[2];
    const int runs = kv_cache_runs(&s->cache, layer, pos0, T, first, rows, count);
    char *k_cache = kv_cache_k(&s->cache, layer), *v_cache = kv_cache_v(&s->cache, layer);
    int rc = b->ops->rope(b, k, T, d->n_kv_heads, s->pos + pos0, &s->rope, err);
    for (int j = 0; !rc && j < runs; j++) {
        const size_t at = (size_t)rows[j] * hd * elem, from = (size_t)(first[j] - pos0) * row;
        rc = b->ops->store_heads(b, k_cache + at, s->cache.dtype, head_pitch, k + from, count[j],
                                 d->n_kv_heads, d->head_dim, err);
        if (!rc)
            rc = b->ops->store_heads(b, v_cache + at, s->cache.dtype, head_pitch, v + from,
                                     count[j], d->n_kv_heads, d->head_dim, err);
    }
    return rc;
}

/* K/V of T tokens from their normed input xb[T, H], computed for all T rows at once into
 * kv_rows [T, nkv, hd], then stored (store_kv) */
static int write_kv(kv_state *s, int layer, const kv_layer_weights *w, const float *xb, int T,
                    int pos0, kv_error *err) {
    kv_backend *b = s->backend;
    const llama_dims *d = &s->model->dims;
    const kv_dtype wt = s->model->mat_type;
    float *k = s->kv_rows, *v = s->kv_rows + (size_t)T * d->kv_dim;
    int rc = b->ops->matmul(b, k, xb, w->wk, wt, w->bk, T, d->hidden, d->kv_dim, 0, err);
    if (!rc) rc = b->ops->matmul(b, v, xb, w->wv, wt, w->bv, T, d->hidden, d->kv_dim, 0, err);
    return rc ? rc : store_kv(s, layer, k, v, T, pos0, err);
}

/* whether `count` elements of `elem` bytes at a end exactly where b starts, so that the two
 * matrices are the rows of one (the model's arena holds a layer's weights in that order) */
static int back_to_back(const void *a, size_t count, size_t elem, const void *b) {
    return a && b && (const char *)a + count * elem == (const char *)b;
}

/* Decode (one token) runs a layer's q, k and v projections as one matrix-vector pass when wq,
 * wk and wv lie back to back without biases: each output row is the same dot product either
 * way, so the values are the same bits, in one pass over the weights instead of three (on the
 * CPU each pass pays for starting its threads and their memory streams). Unified backends only:
 * there the views are the model's own arena, laid out by the loader in that order; a device's
 * separate copies meet only by chance. */
static int decode_qkv(const kv_state *s, const kv_layer_weights *w, int T) {
    const llama_dims *d = &s->model->dims;
    const size_t H = (size_t)d->hidden, es = kv_dtype_size(s->model->mat_type);
    return T == 1 && s->backend->unified && !w->bq && !w->bk && !w->bv &&
           back_to_back(w->wq, (size_t)d->q_dim * H, es, w->wk) &&
           back_to_back(w->wk, (size_t)d->kv_dim * H, es, w->wv);
}

/* the same for gate_proj and up_proj */
static int decode_gate_up(const kv_state *s, const kv_layer_weights *w, int T) {
    const llama_dims *d = &s->model->dims;
    const size_t es = kv_dtype_size(s->model->mat_type);
    return T == 1 && s->backend->unified && !w->b_gate && !w->b_up &&
           back_to_back(w->w_gate, (size_t)d->ffn * d->hidden, es, w->w_up);
}

/* xb = rmsnorm(x, input_layernorm); K/V of the rows when `layer` writes its own, and with them
 * the queries into s->q when one pass gives all three (*q_done = 1) */
static int attention_input(kv_state *s, int layer, const float *x, int T, int pos0, int write,
                           int *q_done, kv_error *err) {
    kv_backend *b = s->backend;
    const kv_model *m = s->model;
    const llama_dims *d = &m->dims;
    const kv_layer_weights *w = &s->w.layers[layer];
    *q_done = 0;
    int rc = b->ops->rmsnorm(b, s->xb, x, w->attn_norm, T, d->hidden, d->eps, err);
    if (rc || !write || !kv_model_writes_own_kv(m, layer)) return rc;
    if (!decode_qkv(s, w, T)) return write_kv(s, layer, w, s->xb, T, pos0, err);
    /* s->q = [q | k | v] of the token */
    float *k = s->q + d->q_dim, *v = k + d->kv_dim;
    rc = b->ops->matmul(b, s->q, s->xb, w->wq, m->mat_type, NULL, 1, d->hidden,
                        d->q_dim + 2 * d->kv_dim, 0, err);
    if (!rc) rc = store_kv(s, layer, k, v, 1, pos0, err);
    *q_done = !rc;
    return rc;
}

/* the rest of the attention block, from xb: queries (unless q_done), attention over
 * slot(kv(layer)), o_proj */
static int attention_output(kv_state *s, int layer, float *x, int T, int pos0, int q_done,
                            kv_error *err) {
    kv_backend *b = s->backend;
    const kv_model *m = s->model;
    const llama_dims *d = &m->dims;
    const kv_layer_weights *w = &s->w.layers[layer];
    const kv_dtype wt = m->mat_type;
    int rc = q_done
                 ? 0
                 : b->ops->matmul(b, s->q, s->xb, w->wq, wt, w->bq, T, d->hidden, d->q_dim, 0, err);
    if (!rc) rc = b->ops->rope(b, s->q, T, d->n_heads, s->pos + pos0, &s->rope, err);
    const int src = kvmap_target(&m->cfg.map, layer); /* the layer whose K/V these queries read */
    const kv_attn_mask mask = src > layer ? KV_MASK_STRICT : KV_MASK_CAUSAL;
    const void *k = kv_cache_k(&s->cache, layer), *v = kv_cache_v(&s->cache, layer);
    if (!rc)
        rc = b->ops->attention(b, s->att, s->q, k, v, s->cache.dtype,
                               kv_cache_head_rows(&s->cache, layer), T, pos0, pos0 + T, d->n_heads,
                               d->n_kv_heads, d->head_dim, mask, m->cfg.layer_window[layer],
                               kv_cache_ring(&s->cache, layer), err);
    if (!rc) rc = b->ops->matmul(b, x, s->att, w->wo, wt, w->bo, T, d->q_dim, d->hidden, 1, err);
    return rc;
}

int kv_layer_attention(kv_state *s, int layer, float *x, int T, int pos0, kv_error *err) {
    int q_done;
    int rc = attention_input(s, layer, x, T, pos0, 1, &q_done, err);
    return rc ? rc : attention_output(s, layer, x, T, pos0, q_done, err);
}

/* the MLP of tokens t0 .. t0 + n - 1 (their normed rows in s->xb), added into x's rows */
static int mlp_pass(kv_state *s, const kv_layer_weights *w, float *x, int t0, int n, int joint,
                    kv_error *err) {
    kv_backend *b = s->backend;
    const int H = s->model->dims.hidden, F = s->model->dims.ffn;
    const kv_dtype wt = s->model->mat_type;
    const float *xb = s->xb + (size_t)t0 * H;
    float *up = joint ? s->gate + F : s->up;
    int rc = joint ? b->ops->matmul(b, s->gate, xb, w->w_gate, wt, NULL, 1, H, 2 * F, 0, err)
                   : b->ops->matmul(b, s->gate, xb, w->w_gate, wt, w->b_gate, n, H, F, 0, err);
    if (!rc && !joint) rc = b->ops->matmul(b, s->up, xb, w->w_up, wt, w->b_up, n, H, F, 0, err);
    if (!rc) rc = b->ops->swiglu(b, s->gate, s->gate, up, n, F, err);
    if (!rc)
        rc = b->ops->matmul(b, x + (size_t)t0 * H, s->gate, w->w_down, wt, w->b_down, n, F, H, 1,
                            err);
    return rc;
}

int kv_layer_mlp(kv_state *s, int layer, float *x, int T, kv_error *err) {
    const kv_model *m = s->model;
    const kv_layer_weights *w = &s->w.layers[layer];
    /* one token with gate_proj and up_proj back to back: s->gate = [gate | up], one pass */
    const int joint = decode_gate_up(s, w, T);
    int rc = s->backend->ops->rmsnorm(s->backend, s->xb, x, w->mlp_norm, T, m->dims.hidden,
                                      m->dims.eps, err);
    /* more than mlp_rows tokens: two passes cut at the multiple of KV_GEMM_ROW_ALIGN nearest
     * T / 2 (each then at most mlp_rows and at least 7 tokens: never one token, which would take
     * the matrix-vector kernels and their bits) */
    const int cut =
        T > s->mlp_rows ? (int)(T / 2.0 / KV_GEMM_ROW_ALIGN + 0.5) * KV_GEMM_ROW_ALIGN : T;
    if (!rc) rc = mlp_pass(s, w, x, 0, cut, joint, err);
    if (!rc && cut < T) rc = mlp_pass(s, w, x, cut, T - cut, joint, err);
    return rc;
}

int kv_layers_run(kv_state *s, int from, int to, float *x, int T, int pos0, kv_error *err) {
    for (int layer = from; layer < to; layer++) {
        int rc = kv_layer_attention(s, layer, x, T, pos0, err);
        if (!rc) rc = kv_layer_mlp(s, layer, x, T, err);
        if (rc) return rc;
    }
    return 0;
}

int kv_swiftkv_write_kv(kv_state *s, const float *x, int T, int pos0, kv_error *err) {
    kv_backend *b = s->backend;
    const kv_model *m = s->model;
    int rc = b->ops->rmsnorm(b, s->xb, x, s->w.norm_swiftkv, T, m->dims.hidden, m->dims.eps, err);
    for (int j = m->cfg.map.swiftkv_l; !rc && j < m->dims.n_layers; j += m->cfg.map.swiftkv_g)
        rc = write_kv(s, j, &s->w.layers[j], s->xb, T, pos0, err); /* leader: k/v_proj_swiftkv */
    return rc;
}

int kv_lm_head(kv_state *s, const float *x, int T, float *logits, kv_error *err) {
    kv_backend *b = s->backend;
    const llama_dims *d = &s->model->dims;
    int rc = b->ops->rmsnorm(b, s->xb, x, s->w.final_norm, T, d->hidden, d->eps, err);
    if (!rc)
        rc = b->ops->matmul(b, logits, s->xb, s->w.lm_head, s->model->mat_type, NULL, T, d->hidden,
                            d->vocab, 0, err);
    return rc;
}

/* ---- a pass over T <= max_batch tokens ---------------------------------------------------- */

/* Layers [from, L) for T rows of which only the last `rows` need an output (logits). Every
 * layer up to the highest one that writes K/V runs for all rows (the cache needs them); above
 * it a row's hidden state feeds nothing but its own logits, so only the wanted rows go on
 * (exact: the same values, fewer rows). prune = 0 runs every row through every layer. */
static int run_tail(kv_state *s, int from, float *x, int T, int pos0, int rows, int prune,
                    kv_error *err) {
    const kv_model *m = s->model;
    const int L = m->dims.n_layers, top = s->top_kv_writer;
    if (!prune || rows == T) return kv_layers_run(s, from, L, x, T, pos0, err);
    float *xr = x + (size_t)(T - rows) * m->dims.hidden;
    const int pr = pos0 + T - rows;
    int rc = 0;
    if (top >= from) {
        int q_done;
        if ((rc = kv_layers_run(s, from, top, x, T, pos0, err)) ||
            (rc = attention_input(s, top, x, T, pos0, 1, &q_done, err))) /* K/V of every row */
            return rc;
        if (rows == 0) return 0;
        if ((rc = attention_input(s, top, xr, rows, pr, 0, &q_done, err)) ||
            (rc = attention_output(s, top, xr, rows, pr, q_done, err)) ||
            (rc = kv_layer_mlp(s, top, xr, rows, err)))
            return rc;
        from = top + 1;
    }
    return rows ? kv_layers_run(s, from, L, xr, rows, pr, err) : 0;
}

/* one cyclic group [lo, hi] `passes` times over the rows x, each pass from the hidden states
 * entering it */
static int run_group(kv_state *s, int lo, int hi, float *x, int T, int pos0, int passes,
                     kv_error *err) {
    kv_backend *b = s->backend;
    const kv_model *m = s->model;
    const size_t bytes = sizeof(float) * (size_t)T * (size_t)m->dims.hidden;
    int rc = b->ops->copy(b, s->x_block, x, bytes, err);
    /* upward layers read their targets' K/V of these positions from the previous pass: zeros
     * before the first */
    for (int i = lo; !rc && i <= hi; i++)
        if (kvmap_is_upward(&m->cfg.map, i)) rc = kv_cache_zero(&s->cache, i, pos0, T, err);
    for (int pass = 0; !rc && pass < passes; pass++) {
        if (pass) rc = b->ops->copy(b, x, s->x_block, bytes, err);
        if (!rc) rc = kv_layers_run(s, lo, hi + 1, x, T, pos0, err);
    }
    return rc;
}

/* iterative prefill over a map with upward layers (METHODS.md s1): in layer order, the layers
 * outside the cyclic groups once and each group `passes` times (block: the one cyclic block) */
static int run_iterative(kv_state *s, float *x, int T, int pos0, int passes, int block, int rows,
                         int prune, kv_error *err) {
    const kv_map *map = &s->model->cfg.map;
    int rc = 0, next = 0, lo = s->block_lo, hi = s->block_hi;
    while (!rc && (block ? next == 0 : kvmap_cyclic_group(map, next, &lo, &hi) > 0)) {
        rc = kv_layers_run(s, next, lo, x, T, pos0, err);
        if (!rc) rc = run_group(s, lo, hi, x, T, pos0, passes, err);
        next = hi + 1;
    }
    return rc ? rc : run_tail(s, next, x, T, pos0, rows, prune, err);
}

/* x[T, H] = the embedding rows of tokens: the backend's lookup for an F32 table; a BF16 table's
 * rows widened one by one (exact) by the backend's convert */
static int embed_tokens(kv_state *s, float *x, const int32_t *tokens, int T, kv_error *err) {
    kv_backend *b = s->backend;
    const kv_model *m = s->model;
    const int H = m->dims.hidden, V = m->dims.vocab;
    if (m->mat_type == KV_F32) return b->ops->embedding(b, x, s->w.embed, V, H, tokens, T, err);
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= V)
            return kv_fail(err, KV_EINVAL, "embedding: token id %d at position %d outside [0, %d)",
                           (int)tokens[t], t, V);
    const size_t row = (size_t)H * kv_dtype_size(m->mat_type);
    for (int t = 0; t < T; t++) {
        const char *src = (const char *)s->w.embed + (size_t)tokens[t] * row;
        int rc = b->ops->convert(b, x + (size_t)t * H, KV_F32, src, m->mat_type, (size_t)H, err);
        if (rc) return rc;
    }
    return 0;
}

/* tokens at pos0 = n_past; logits rows for the wanted tokens into out (host) */
static int run_pass(kv_state *s, const int32_t *tokens, int T, const kv_forward_opts *o, float *out,
                    kv_error *err) {
    kv_backend *b = s->backend;
    const kv_model *m = s->model;
    const int H = m->dims.hidden, pos0 = s->n_past;
    float *x = s->x;
    int rc = embed_tokens(s, x, tokens, T, err);
    if (rc) return rc;
    int rows = o->logits == KV_LOGITS_ALL ? T : o->logits == KV_LOGITS_LAST ? 1 : 0;
    if (m->cfg.map.kind == KVMAP_SWIFTKV) {
        const int l = m->cfg.map.swiftkv_l;
        rc = kv_layers_run(s, 0, l, x, T, pos0, err);
        if (!rc) rc = kv_swiftkv_write_kv(s, x, T, pos0, err);
        /* layers >= l only for the rows whose logits are wanted (all with no skip) */
        const int run = o->no_swiftkv_skip ? T : rows;
        if (!rc && run > 0)
            rc = kv_layers_run(s, l, m->dims.n_layers, x + (size_t)(T - run) * H, run,
                               pos0 + T - run, err);
    } else if (s->has_upward && T > 1) {
        const int passes = o->prefill.passes > 0 ? o->prefill.passes : KV_PREFILL_DEFAULT_PASSES;
        rc = run_iterative(s, x, T, pos0, passes, o->prefill.block, rows, !o->no_tail_skip, err);
    } else {
        rc = run_tail(s, 0, x, T, pos0, rows, !o->no_tail_skip, err);
    }
    if (!rc && rows) {
        /* unified: straight into the caller's buffer; else the device buffer, then down */
        float *dst = b->unified ? out : s->dev_logits;
        rc = kv_lm_head(s, x + (size_t)(T - rows) * H, rows, dst, err);
        if (!rc && dst != out)
            rc = b->ops->download(b, out, dst, sizeof(float) * (size_t)rows * m->dims.vocab, err);
    }
    if (rc) return kv_wrap(err, "forward");
    s->n_past += T;
    return 0;
}

int kv_forward(kv_state *s, const int32_t *tokens, int T, const kv_forward_opts *o, float *logits,
               kv_error *err) {
    static const kv_forward_opts defaults = {0};
    if (!o) o = &defaults;
    if (T < 1) return kv_fail(err, KV_EINVAL, "forward: no tokens");
    if (T > s->max_seq - s->n_past)
        return kv_fail(err, KV_EINVAL, "forward: %d tokens after %d do not fit the context of %d",
                       T, s->n_past, s->max_seq);
    if (!logits) {
        if (o->logits == KV_LOGITS_ALL)
            return kv_fail(err, KV_EINVAL, "forward: all-position logits need an output buffer");
        logits = s->logits;
    }
    const size_t V = (size_t)s->model->dims.vocab;
    /* exact prefill over upward layers: the prompt as a sequence of decode steps */
    const int one_by_one = s->has_upward && o->prefill.mode == KV_PREFILL_SEQUENTIAL;
    const int chunk = one_by_one ? 1 : s->max_batch;
    for (int t0 = 0; t0 < T; t0 += chunk) {
        const int n = T - t0 < chunk ? T - t0 : chunk;
        const int last = t0 + n == T;
        kv_forward_opts step = *o;
        float *out = NULL;
        if (o->logits == KV_LOGITS_ALL) out = logits + (size_t)t0 * V;
        else if (o->logits == KV_LOGITS_LAST && last) out = logits;
        else step.logits = KV_LOGITS_NONE;
        int rc = run_pass(s, tokens + t0, n, &step, out, err);
        if (rc) return rc;
    }
    return 0;
}
