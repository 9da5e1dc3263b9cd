/* Llama forward pass; the KV map decides which slot each layer writes and reads (forward.h). */
#include "runtime/forward.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/rows.h"

/* ---- setup ------------------------------------------------------------------------------ */

int kv_prefill_parse(kv_prefill *p, const char *spec, kv_error *err) {
    if (!spec) return kv_fail(err, KV_EINVAL, "prefill: no mode given");
    if (strcmp(spec, "sequential") == 0) {
        *p = (kv_prefill){.mode = KV_PREFILL_SEQUENTIAL};
        return 0;
    }
    if (strcmp(spec, "iterative") == 0) {
        *p = (kv_prefill){.mode = KV_PREFILL_ITERATIVE, .passes = KV_PREFILL_DEFAULT_PASSES};
        return 0;
    }
    if (strncmp(spec, "iterative:", 10) == 0) {
        const char *s = spec + 10;
        long n = 0;
        int digits = 0;
        for (; *s >= '0' && *s <= '9' && n <= 1000000; s++, digits++) n = n * 10 + (*s - '0');
        if (digits && !*s && n >= 1 && n <= 1000000) {
            *p = (kv_prefill){.mode = KV_PREFILL_ITERATIVE, .passes = (int)n};
            return 0;
        }
    }
    return kv_fail(err, KV_EINVAL,
                   "prefill mode '%s': expected 'sequential', 'iterative' or 'iterative:N' "
                   "(1 <= N <= 1000000)", spec);
}

int kv_state_init(kv_state *s, const kv_model *m, int max_seq, int max_batch, kv_dtype cache_dtype,
                  kv_error *err) {
    *s = (kv_state){0};
    if (max_seq < 1 || max_seq > m->dims.max_pos)
        return kv_fail(err, KV_EINVAL, "context of %d positions: the model allows 1..%d "
                       "(max_position_embeddings)", max_seq, m->dims.max_pos);
    if (max_batch < 1) return kv_fail(err, KV_EINVAL, "batch of %d tokens", max_batch);
    if (max_batch > max_seq) max_batch = max_seq;
    s->model = m;
    s->max_seq = max_seq;
    s->max_batch = max_batch;
    s->has_upward = kvmap_cyclic_block(&m->cfg.map, &s->block_lo, &s->block_hi) > 0;
    s->top_kv_writer = -1;
    for (int i = 0; i < m->dims.n_layers; i++)
        if (kv_model_writes_own_kv(m, i)) s->top_kv_writer = i;
    const size_t B = (size_t)max_batch, H = (size_t)m->dims.hidden, Q = (size_t)m->dims.q_dim,
                 F = (size_t)m->dims.ffn;
    /* the arena's table of sizes: every activation, in the order they are carved below */
    const size_t counts[] = {B * H, B * H, B * Q, B * Q, B * F, B * F,
                             s->has_upward ? B * H : 0, B, (size_t)m->dims.vocab,
                             cache_dtype == KV_F32 ? 0 : 2 * B * (size_t)m->dims.kv_dim};
    const size_t elem[] = {4, 4, 4, 4, 4, 4, 4, sizeof(int32_t), 4, 4};
    void *slots[10];
    const int n_buf = (int)(sizeof counts / sizeof counts[0]);
    size_t total = 0;
    for (int i = 0; i < n_buf; i++)
        if (kv_arena_reserve(&total, counts[i], elem[i]))
            return kv_fail(err, KV_ENOMEM, "activations for %d tokens overflow", max_batch);
    int rc = kv_arena_init(&s->arena, total, "activations", err);
    for (int i = 0; !rc && i < n_buf; i++) slots[i] = kv_arena_take(&s->arena, counts[i], elem[i]);
    if (rc) return rc;
    s->x = slots[0];
    s->xb = slots[1];
    s->q = slots[2];
    s->att = slots[3];
    s->gate = slots[4];
    s->up = slots[5];
    s->x_block = s->has_upward ? slots[6] : NULL;
    s->pos = slots[7];
    s->logits = slots[8];
    s->kv_rows = cache_dtype == KV_F32 ? NULL : slots[9];
    if ((rc = kv_cache_init(&s->cache, &m->cfg.map, m->dims.n_kv_heads, m->dims.head_dim, max_seq, cache_dtype,
                            err)) ||
        (rc = kv_rope_table_init(&s->rope, m->dims.head_dim, max_seq, &m->dims.rope, err))) {
        kv_state_free(s);
        return rc;
    }
    return 0;
}

void kv_state_free(kv_state *s) {
    kv_cache_free(&s->cache);
    kv_rope_table_free(&s->rope);
    kv_arena_free(&s->arena);
    *s = (kv_state){0};
}

void kv_state_reset(kv_state *s) { s->n_past = 0; }

size_t kv_state_bytes(const kv_state *s) {
    return s->arena.size + s->cache.bytes +
           2 * sizeof(float) * (size_t)s->max_seq * (size_t)(s->model->dims.head_dim / 2);
}

/* ---- the steps of one layer ------------------------------------------------------------- */

static const int32_t *positions(kv_state *s, int pos0, int T) {
    for (int t = 0; t < T; t++) s->pos[t] = pos0 + t;
    return s->pos;
}

/* K/V of T tokens from their normed input xb[T, H] into the rows pos0.. of the slot `layer`
 * reads (K rotated before it is cached; a BF16 cache gets them rounded to nearest even from F32
 * rows computed in kv_rows) */
static void write_kv(kv_state *s, int layer, const float *wk, const float *bk, const float *wv,
                     const float *bv, const float *xb, int T, int pos0) {
    const kv_model *m = s->model;
    const size_t row = (size_t)m->dims.kv_dim, offset = (size_t)pos0 * row * s->cache.elem;
    char *k_dst = (char *)kv_cache_k(&s->cache, layer) + offset;
    char *v_dst = (char *)kv_cache_v(&s->cache, layer) + offset;
    float *k = s->kv_rows ? s->kv_rows : (float *)k_dst;
    float *v = s->kv_rows ? s->kv_rows + (size_t)T * row : (float *)v_dst;
    kv_matmul(k, xb, wk, bk, T, m->dims.hidden, m->dims.kv_dim);
    kv_matmul(v, xb, wv, bv, T, m->dims.hidden, m->dims.kv_dim);
    rows_rope(k, T, m->dims.n_kv_heads, positions(s, pos0, T), &s->rope);
    if (s->kv_rows) { /* F32 -> BF16 cannot fail */
        kv_dtype_cast(k_dst, s->cache.dtype, k, KV_F32, (size_t)T * row);
        kv_dtype_cast(v_dst, s->cache.dtype, v, KV_F32, (size_t)T * row);
    }
}

/* xb = rmsnorm(x, input_layernorm); K/V of the rows when `layer` writes its own */
static void attention_input(kv_state *s, int layer, const float *x, int T, int pos0, int write) {
    const kv_model *m = s->model;
    const kv_layer_weights *w = &m->layers[layer];
    rows_rmsnorm(s->xb, x, w->attn_norm, T, m->dims.hidden, m->dims.eps);
    if (write && kv_model_writes_own_kv(m, layer))
        write_kv(s, layer, w->wk, w->bk, w->wv, w->bv, s->xb, T, pos0);
}

/* the rest of the attention block, from xb: queries, attention over slot(kv(layer)), o_proj */
static int attention_output(kv_state *s, int layer, float *x, int T, int pos0) {
    const kv_model *m = s->model;
    const kv_layer_weights *w = &m->layers[layer];
    kv_matmul(s->q, s->xb, w->wq, w->bq, T, m->dims.hidden, m->dims.q_dim);
    rows_rope(s->q, T, m->dims.n_heads, positions(s, pos0, T), &s->rope);
    const int src = kvmap_target(&m->cfg.map, layer); /* the layer whose K/V these queries read */
    const kv_attn_mask mask = src > layer ? KV_MASK_STRICT : KV_MASK_CAUSAL;
    const void *k = kv_cache_k(&s->cache, layer), *v = kv_cache_v(&s->cache, layer);
    int rc = s->cache.dtype == KV_BF16
                 ? kv_attention_bf16(s->att, s->q, k, v, T, pos0, pos0 + T, m->dims.n_heads,
                                     m->dims.n_kv_heads, m->dims.head_dim, mask)
                 : kv_attention(s->att, s->q, k, v, T, pos0, pos0 + T, m->dims.n_heads, m->dims.n_kv_heads,
                                m->dims.head_dim, mask);
    if (rc) return rc;
    kv_matmul_acc(x, s->att, w->wo, w->bo, T, m->dims.q_dim, m->dims.hidden);
    return 0;
}

int kv_layer_attention(kv_state *s, int layer, float *x, int T, int pos0) {
    attention_input(s, layer, x, T, pos0, 1);
    return attention_output(s, layer, x, T, pos0);
}

void kv_layer_mlp(kv_state *s, int layer, float *x, int T) {
    const kv_model *m = s->model;
    const kv_layer_weights *w = &m->layers[layer];
    const int H = m->dims.hidden, F = m->dims.ffn;
    rows_rmsnorm(s->xb, x, w->mlp_norm, T, H, m->dims.eps);
    kv_matmul(s->gate, s->xb, w->w_gate, w->b_gate, T, H, F);
    kv_matmul(s->up, s->xb, w->w_up, w->b_up, T, H, F);
    rows_swiglu(s->gate, s->gate, s->up, T, F);
    kv_matmul_acc(x, s->gate, w->w_down, w->b_down, T, F, H);
}

int kv_layers_run(kv_state *s, int from, int to, float *x, int T, int pos0) {
    for (int layer = from; layer < to; layer++) {
        int rc = kv_layer_attention(s, layer, x, T, pos0);
        if (rc) return rc;
        kv_layer_mlp(s, layer, x, T);
    }
    return 0;
}

void kv_swiftkv_write_kv(kv_state *s, const float *x, int T, int pos0) {
    const kv_model *m = s->model;
    rows_rmsnorm(s->xb, x, m->norm_swiftkv, T, m->dims.hidden, m->dims.eps);
    for (int j = m->cfg.map.swiftkv_l; j < m->dims.n_layers; j += m->cfg.map.swiftkv_g) {
        const kv_layer_weights *w = &m->layers[j]; /* group leader: k/v_proj_swiftkv */
        write_kv(s, j, w->wk, w->bk, w->wv, w->bv, s->xb, T, pos0);
    }
}

void kv_lm_head(kv_state *s, const float *x, int T, float *logits) {
    const kv_model *m = s->model;
    rows_rmsnorm(s->xb, x, m->final_norm, T, m->dims.hidden, m->dims.eps);
    kv_matmul(logits, s->xb, m->lm_head, NULL, T, m->dims.hidden, m->dims.vocab);
}

/* ---- a pass over T <= max_batch tokens ---------------------------------------------------- */

/* Layers [from, L) for T rows of which only the last `rows` need an output (logits). Every
 * layer up to the highest one that writes K/V runs for all rows (the cache needs them); above
 * it a row's hidden state feeds nothing but its own logits, so only the wanted rows go on
 * (exact: the same values, fewer rows). prune = 0 runs every row through every layer. */
static int run_tail(kv_state *s, int from, float *x, int T, int pos0, int rows, int prune) {
    const kv_model *m = s->model;
    const int L = m->dims.n_layers, top = s->top_kv_writer;
    if (!prune || rows == T) return kv_layers_run(s, from, L, x, T, pos0);
    float *xr = x + (size_t)(T - rows) * m->dims.hidden;
    const int pr = pos0 + T - rows;
    int rc = 0;
    if (top >= from) {
        if ((rc = kv_layers_run(s, from, top, x, T, pos0))) return rc;
        attention_input(s, top, x, T, pos0, 1); /* K/V of every row */
        if (rows == 0) return 0;
        attention_input(s, top, xr, rows, pr, 0);
        if ((rc = attention_output(s, top, xr, rows, pr))) return rc;
        kv_layer_mlp(s, top, xr, rows);
        from = top + 1;
    }
    return rows ? kv_layers_run(s, from, L, xr, rows, pr) : 0;
}

/* iterative prefill over a map with upward layers: the cyclic block `passes` times */
static int run_iterative(kv_state *s, float *x, int T, int pos0, int passes, int rows, int prune) {
    const kv_model *m = s->model;
    const int lo = s->block_lo, hi = s->block_hi;
    const size_t bytes = sizeof(float) * (size_t)T * (size_t)m->dims.hidden;
    int rc = kv_layers_run(s, 0, lo, x, T, pos0);
    if (rc) return rc;
    memcpy(s->x_block, x, bytes);
    /* upward layers read their targets' K/V of these positions from the previous pass: zeros
     * before the first */
    for (int i = lo; i <= hi; i++)
        if (kvmap_is_upward(&m->cfg.map, i)) kv_cache_zero(&s->cache, i, pos0, T);
    for (int pass = 0; pass < passes; pass++) {
        if (pass) memcpy(x, s->x_block, bytes);
        if ((rc = kv_layers_run(s, lo, hi + 1, x, T, pos0))) return rc;
    }
    return run_tail(s, hi + 1, x, T, pos0, rows, prune);
}

/* tokens at pos0 = n_past; logits rows for the wanted tokens into out */
static int run_pass(kv_state *s, const int32_t *tokens, int T, const kv_forward_opts *o,
                    float *out, kv_error *err) {
    const kv_model *m = s->model;
    const int H = m->dims.hidden, pos0 = s->n_past;
    float *x = s->x;
    int rc = kv_embedding(x, m->embed, m->dims.vocab, H, tokens, T, err);
    if (rc) return rc;
    int rows = o->logits == KV_LOGITS_ALL ? T : o->logits == KV_LOGITS_LAST ? 1 : 0;
    if (m->cfg.map.kind == KVMAP_SWIFTKV) {
        const int l = m->cfg.map.swiftkv_l;
        rc = kv_layers_run(s, 0, l, x, T, pos0);
        if (!rc) {
            kv_swiftkv_write_kv(s, x, T, pos0);
            /* layers >= l only for the rows whose logits are wanted (all with no skip) */
            const int run = o->no_swiftkv_skip ? T : rows;
            if (run > 0)
                rc = kv_layers_run(s, l, m->dims.n_layers, x + (size_t)(T - run) * H, run,
                                   pos0 + T - run);
        }
    } else if (s->has_upward && T > 1) {
        const int passes = o->prefill.passes > 0 ? o->prefill.passes : KV_PREFILL_DEFAULT_PASSES;
        rc = run_iterative(s, x, T, pos0, passes, rows, !o->no_tail_skip);
    } else {
        rc = run_tail(s, 0, x, T, pos0, rows, !o->no_tail_skip);
    }
    if (rc) return kv_fail(err, rc, "forward: out of memory in attention");
    s->n_past += T;
    if (rows) kv_lm_head(s, x + (size_t)(T - rows) * H, rows, out);
    return 0;
}

int kv_forward(kv_state *s, const int32_t *tokens, int T, const kv_forward_opts *o,
               float *logits, kv_error *err) {
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
