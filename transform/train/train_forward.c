/* Training forward (activations saved) and backward; see train_forward.h for the math. */
#include "transform/train/train_forward.h"

#include <stdlib.h>
#include <string.h>

#define W(p) ((p) ? (p)->w : NULL)
#define G(p) ((p) ? (p)->g : NULL)

static size_t rows(const kvt_run *r, int width) { return (size_t)r->N * (size_t)width; }

/* the slots whose K/V an upward layer reads: they need a previous-pass copy */
static int slot_has_upward_reader(const kvt_model *m, int slot) {
    for (int i = 0; i < m->dims.n_layers; i++)
        if (kvmap_is_upward(&m->cfg.map, i) && kvmap_slot_of(&m->cfg.map, i) == slot) return 1;
    return 0;
}

static int any_trainable_in_layer(const kvt_layer *ly) {
    const kvt_param *ps[] = {ly->attn_norm, ly->q, ly->q_b, ly->k, ly->k_b, ly->v, ly->v_b,
                             ly->o, ly->o_b, ly->mlp_norm, ly->gate, ly->gate_b, ly->up,
                             ly->up_b, ly->down, ly->down_b};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++)
        if (ps[i] && ps[i]->trainable) return 1;
    return 0;
}

static int lowest_grad_layer(const kvt_model *m) {
    int lo = m->dims.n_layers;
    for (int i = m->dims.n_layers - 1; i >= 0; i--)
        if (any_trainable_in_layer(&m->layers[i])) lo = i;
    if (m->norm_swiftkv && m->norm_swiftkv->trainable && m->cfg.map.swiftkv_l < lo)
        lo = m->cfg.map.swiftkv_l;
    return lo;
}

/* 1 when slot s is written by a layer of the cyclic block [lo, hi] */
static int slot_made_in_block(const kvt_model *m, int s, int lo, int hi) {
    for (int i = lo; i <= hi; i++)
        if (kvmap_is_kv_layer(&m->cfg.map, i) && kvmap_slot_of(&m->cfg.map, i) == s) return 1;
    return 0;
}

/* one layer's activations (per_layer floats) from p; returns the first float after them */
static float *carve_layer(kvt_layer_acts *a, float *p, const kvt_run *r) {
    const kvt_model *m = r->m;
    float **fields[] = {&a->x_in, &a->xn1, &a->q, &a->att, &a->x_mid, &a->xn2, &a->gate, &a->up, &a->act};
    const int width[] = {m->dims.hidden, m->dims.hidden, m->dims.q_dim, m->dims.q_dim, m->dims.hidden, m->dims.hidden, m->dims.ffn, m->dims.ffn, m->dims.ffn};
    for (size_t f = 0; f < sizeof width / sizeof *width; f++) {
        *fields[f] = p;
        p += rows(r, width[f]);
    }
    return p;
}

int kvt_run_init(kvt_run *r, const kvt_model *m, int B, int T, int passes, int want_grad,
                 kv_error *err) {
    return kvt_run_init_grad(r, m, B, T, passes, 1, want_grad, err);
}

int kvt_run_init_grad(kvt_run *r, const kvt_model *m, int B, int T, int passes, int grad_passes,
                      int want_grad, kv_error *err) {
    memset(r, 0, sizeof *r);
    if (B < 1 || T < 1 || passes < 1)
        return kv_fail(err, KV_EINVAL, "train: batch %d, seq-len %d, passes %d must be >= 1", B, T,
                       passes);
    if (grad_passes < 1 || grad_passes > passes)
        return kv_fail(err, KV_EINVAL, "train: grad-passes %d must be 1 .. passes (%d)",
                       grad_passes, passes);
    if (T > m->cfg.max_position_embeddings)
        return kv_fail(err, KV_EINVAL, "train: seq-len %d exceeds max_position_embeddings %d", T,
                       m->cfg.max_position_embeddings);
    size_t N;
    if (__builtin_mul_overflow((size_t)B, (size_t)T, &N) || N > (1u << 30))
        return kv_fail(err, KV_ENOMEM, "train: batch %d x seq-len %d is too large", B, T);
    r->m = m;
    r->B = B;
    r->T = T;
    r->N = (int)N;
    r->passes = passes;
    r->want_grad = want_grad;
    r->n_slots = kvmap_n_slots(&m->cfg.map);
    r->has_upward = kvmap_cyclic_block(&m->cfg.map, &r->block_lo, &r->block_hi) > 0;
    r->grad_lo = want_grad ? lowest_grad_layer(m) : m->dims.n_layers;
    r->grad_passes = r->has_upward && want_grad ? grad_passes : 1;
    if (r->grad_passes > 1 && r->grad_lo > r->block_lo) r->grad_lo = r->block_lo;
    const int L = m->dims.n_layers, H = m->dims.hidden, Q = m->dims.q_dim, KV = m->dims.kv_dim, F = m->dims.ffn, S = r->n_slots;
    const int E = r->grad_passes - 1; /* earlier differentiated passes */

    /* sizes in floats, then one allocation */
    size_t per_layer = 4 * rows(r, H) + 2 * rows(r, Q) + 3 * rows(r, F);
    size_t total = (size_t)L * per_layer + 2 * (size_t)S * rows(r, KV) + 3 * rows(r, H) +
                   rows(r, m->dims.vocab);
    int n_prev = 0;
    for (int s = 0; s < S; s++) n_prev += r->has_upward && slot_has_upward_reader(m, s);
    total += 2 * (size_t)n_prev * rows(r, KV);
    if (want_grad)
        total += rows(r, m->dims.vocab) + 4 * rows(r, H) + 2 * rows(r, Q) + 3 * rows(r, F) +
                 2 * (size_t)S * rows(r, KV);
    if (E > 0) {
        const size_t block = (size_t)(r->block_hi - r->block_lo + 1);
        total += (size_t)E * (block * per_layer + 2 * (size_t)S * rows(r, KV)) + 2 * (size_t)n_prev * rows(r, KV);
        total += 2 * (size_t)n_prev * rows(r, KV) + 2 * rows(r, H);
    }
    r->arena = calloc(total, sizeof(float));
    if (E > 0) {
        r->acts_early = calloc((size_t)E * L, sizeof *r->acts_early);
        r->k_read = calloc((size_t)E * S, sizeof(float *));
        r->v_read = calloc((size_t)E * S, sizeof(float *));
        r->k_made = calloc((size_t)E * S, sizeof(float *));
        r->v_made = calloc((size_t)E * S, sizeof(float *));
        r->dk_prev = calloc((size_t)S, sizeof(float *));
        r->dv_prev = calloc((size_t)S, sizeof(float *));
        if (!r->acts_early || !r->k_read || !r->v_read || !r->k_made || !r->v_made || !r->dk_prev ||
            !r->dv_prev) {
            kvt_run_free(r);
            return kv_fail(err, KV_ENOMEM, "train: out of memory");
        }
    }
    r->pos = malloc(sizeof(int32_t) * N);
    r->acts = calloc((size_t)L, sizeof *r->acts);
    r->k = calloc((size_t)S, sizeof(float *));
    r->v = calloc((size_t)S, sizeof(float *));
    r->k_prev = calloc((size_t)S, sizeof(float *));
    r->v_prev = calloc((size_t)S, sizeof(float *));
    r->dk = calloc((size_t)S, sizeof(float *));
    r->dv = calloc((size_t)S, sizeof(float *));
    if (!r->arena || !r->pos || !r->acts || !r->k || !r->v || !r->k_prev || !r->v_prev || !r->dk ||
        !r->dv) {
        kvt_run_free(r);
        return kv_fail(err, KV_ENOMEM, "train: activations for %zu rows (%zu MB) do not fit", N,
                       total * sizeof(float) >> 20);
    }
    float *p = r->arena;
#define CARVE(dst, n) (dst = p, p += (n))
    for (int i = 0; i < L; i++) p = carve_layer(&r->acts[i], p, r);
    for (int s = 0; s < S; s++) {
        CARVE(r->k[s], rows(r, KV));
        CARVE(r->v[s], rows(r, KV));
        if (r->has_upward && slot_has_upward_reader(m, s)) {
            CARVE(r->k_prev[s], rows(r, KV));
            CARVE(r->v_prev[s], rows(r, KV));
        }
    }
    CARVE(r->s_norm, rows(r, H));
    CARVE(r->x_out, rows(r, H));
    CARVE(r->xn_out, rows(r, H));
    CARVE(r->logits, rows(r, m->dims.vocab));
    if (want_grad) {
        CARVE(r->dlogits, rows(r, m->dims.vocab));
        CARVE(r->dh_last, rows(r, H));
        CARVE(r->dx, rows(r, H));
        CARVE(r->dxn, rows(r, H));
        CARVE(r->ds, rows(r, H));
        CARVE(r->dq, rows(r, Q));
        CARVE(r->datt, rows(r, Q));
        CARVE(r->dgate, rows(r, F));
        CARVE(r->dup, rows(r, F));
        CARVE(r->dact, rows(r, F));
        for (int s = 0; s < S; s++) {
            CARVE(r->dk[s], rows(r, KV));
            CARVE(r->dv[s], rows(r, KV));
        }
    }
    for (int e = 0; e < E; e++) {
        kvt_layer_acts *set = r->acts_early + (size_t)e * L;
        for (int i = r->block_lo; i <= r->block_hi; i++) p = carve_layer(&set[i], p, r);
        set[r->block_lo].x_in = r->acts[r->block_lo].x_in; /* every pass starts from it */
        for (int s = 0; s < S; s++) {
            CARVE(r->k_made[e * S + s], rows(r, KV));
            CARVE(r->v_made[e * S + s], rows(r, KV));
            if (r->k_prev[s] && e == 0) {
                CARVE(r->k_read[s], rows(r, KV));
                CARVE(r->v_read[s], rows(r, KV));
            } else if (r->k_prev[s]) { /* pass e reads what pass e-1 wrote */
                r->k_read[e * S + s] = r->k_made[(e - 1) * S + s];
                r->v_read[e * S + s] = r->v_made[(e - 1) * S + s];
            }
        }
    }
    if (E > 0) {
        for (int s = 0; s < S; s++)
            if (r->k_prev[s]) {
                CARVE(r->dk_prev[s], rows(r, KV));
                CARVE(r->dv_prev[s], rows(r, KV));
            }
        CARVE(r->x_spill, rows(r, H));
        CARVE(r->dx_block, rows(r, H));
        if (r->block_hi + 1 < L)
            for (int e = 0; e < E; e++) r->acts_early[(size_t)e * L + r->block_hi + 1].x_in = r->x_spill;
    }
#undef CARVE
    for (size_t i = 0; i < N; i++) r->pos[i] = (int32_t)(i % (size_t)T);
    int rc = kv_rope_table_init(&r->rope, m->dims.head_dim, T, &m->dims.rope, err);
    if (rc) {
        kvt_run_free(r);
        return rc;
    }
    return 0;
}

void kvt_run_free(kvt_run *r) {
    if (!r) return;
    kv_rope_table_free(&r->rope);
    free(r->arena);
    free(r->pos);
    free(r->acts);
    free(r->k);
    free(r->v);
    free(r->k_prev);
    free(r->v_prev);
    free(r->dk);
    free(r->dv);
    free(r->acts_early);
    free(r->k_read);
    free(r->v_read);
    free(r->k_made);
    free(r->v_made);
    free(r->dk_prev);
    free(r->dv_prev);
    memset(r, 0, sizeof *r);
}

const float *kvt_last_layer_input(const kvt_run *r) { return r->acts[r->m->dims.n_layers - 1].x_in; }

/* ---- forward ---- */

static void swiftkv_write_kv(kvt_run *r, const float *h_l) {
    const kvt_model *m = r->m;
    kv_rmsnorm(r->s_norm, h_l, m->norm_swiftkv->w, r->N, m->dims.hidden, m->dims.eps);
    for (int j = m->cfg.map.swiftkv_l; j < m->dims.n_layers; j++) {
        if (!kvmap_is_kv_layer(&m->cfg.map, j)) continue;
        const kvt_layer *ly = &m->layers[j];
        const int s = kvmap_slot_of(&m->cfg.map, j);
        kv_matmul(r->k[s], r->s_norm, ly->k->w, W(ly->k_b), r->N, m->dims.hidden, m->dims.kv_dim);
        kv_rope(r->k[s], r->N, m->dims.n_kv_heads, r->pos, &r->rope);
        kv_matmul(r->v[s], r->s_norm, ly->v->w, W(ly->v_b), r->N, m->dims.hidden, m->dims.kv_dim);
    }
}

static int layer_forward(kvt_run *r, int i) {
    const kvt_model *m = r->m;
    const kvt_layer *ly = &m->layers[i];
    kvt_layer_acts *a = &r->acts[i];
    const int N = r->N, H = m->dims.hidden, Q = m->dims.q_dim, KV = m->dims.kv_dim, F = m->dims.ffn, T = r->T;
    float *x_out = i + 1 < m->dims.n_layers ? r->acts[i + 1].x_in : r->x_out;
    if (m->cfg.map.kind == KVMAP_SWIFTKV && i == m->cfg.map.swiftkv_l) swiftkv_write_kv(r, a->x_in);

    kv_rmsnorm(a->xn1, a->x_in, ly->attn_norm->w, N, H, m->dims.eps);
    kv_matmul(a->q, a->xn1, ly->q->w, W(ly->q_b), N, H, Q);
    kv_rope(a->q, N, m->dims.n_heads, r->pos, &r->rope);
    const int slot = kvmap_slot_of(&m->cfg.map, i);
    if (kvt_layer_writes_own_kv(m, i)) {
        kv_matmul(r->k[slot], a->xn1, ly->k->w, W(ly->k_b), N, H, KV);
        kv_rope(r->k[slot], N, m->dims.n_kv_heads, r->pos, &r->rope);
        kv_matmul(r->v[slot], a->xn1, ly->v->w, W(ly->v_b), N, H, KV);
    }
    const int up = kvmap_is_upward(&m->cfg.map, i);
    const float *K = up ? r->k_prev[slot] : r->k[slot], *V = up ? r->v_prev[slot] : r->v[slot];
    for (int b = 0; b < r->B; b++) {
        const size_t qo = (size_t)b * T * Q, ko = (size_t)b * T * KV;
        int rc = kv_attention(a->att + qo, a->q + qo, K + ko, V + ko, T, 0, T, m->dims.n_heads, m->dims.n_kv_heads,
                              m->dims.head_dim, up ? KV_MASK_STRICT : KV_MASK_CAUSAL);
        if (rc) return rc;
    }
    memcpy(a->x_mid, a->x_in, sizeof(float) * rows(r, H));
    kv_matmul_acc(a->x_mid, a->att, ly->o->w, W(ly->o_b), N, Q, H);

    kv_rmsnorm(a->xn2, a->x_mid, ly->mlp_norm->w, N, H, m->dims.eps);
    kv_matmul(a->gate, a->xn2, ly->gate->w, W(ly->gate_b), N, H, F);
    kv_matmul(a->up, a->xn2, ly->up->w, W(ly->up_b), N, H, F);
    kv_swiglu(a->act, a->gate, a->up, rows(r, F));
    memcpy(x_out, a->x_mid, sizeof(float) * rows(r, H));
    kv_matmul_acc(x_out, a->act, ly->down->w, W(ly->down_b), N, F, H);
    return 0;
}

static int layers_forward(kvt_run *r, int from, int to) {
    for (int i = from; i <= to; i++) {
        int rc = layer_forward(r, i);
        if (rc) return rc;
    }
    return 0;
}

int kvt_forward(kvt_run *r, const int32_t *tokens, kv_error *err) {
    const kvt_model *m = r->m;
    int rc = kv_embedding(r->acts[0].x_in, m->embed->w, m->dims.vocab, m->dims.hidden, tokens, r->N, err);
    if (rc) return rc;
    if (!r->has_upward) {
        rc = layers_forward(r, 0, m->dims.n_layers - 1);
    } else {
        const size_t kv_bytes = sizeof(float) * rows(r, m->dims.kv_dim);
        for (int s = 0; s < r->n_slots; s++)
            if (r->k_prev[s]) memset(r->k_prev[s], 0, kv_bytes), memset(r->v_prev[s], 0, kv_bytes);
        rc = layers_forward(r, 0, r->block_lo - 1);
        const int S = r->n_slots, first_early = r->passes - r->grad_passes + 1;
        for (int p = 1; p < r->passes && !rc; p++) {
            const int e = p - first_early; /* >= 0: a differentiated pass before the last */
            kvt_layer_acts *acts = r->acts;
            if (e >= 0) {
                for (int s = 0; s < S && e == 0; s++) /* later passes' inputs are k_made[e-1] */
                    if (r->k_prev[s]) {
                        memcpy(r->k_read[s], r->k_prev[s], kv_bytes);
                        memcpy(r->v_read[s], r->v_prev[s], kv_bytes);
                    }
                r->acts = r->acts_early + (size_t)e * m->dims.n_layers;
            }
            rc = layers_forward(r, r->block_lo, r->block_hi);
            r->acts = acts;
            for (int s = 0; s < S && e >= 0; s++) {
                memcpy(r->k_made[e * S + s], r->k[s], kv_bytes);
                memcpy(r->v_made[e * S + s], r->v[s], kv_bytes);
            }
            for (int s = 0; s < S && !rc; s++)
                if (r->k_prev[s]) {
                    memcpy(r->k_prev[s], r->k[s], kv_bytes);
                    memcpy(r->v_prev[s], r->v[s], kv_bytes);
                }
        }
        if (!rc) rc = layers_forward(r, r->block_lo, m->dims.n_layers - 1);
    }
    if (rc) return kv_fail(err, rc, "train: attention scratch: out of memory");
    kv_rmsnorm(r->xn_out, r->x_out, m->final_norm->w, r->N, m->dims.hidden, m->dims.eps);
    kv_matmul(r->logits, r->xn_out, m->lm_head->w, NULL, r->N, m->dims.hidden, m->dims.vocab);
    if (r->want_grad) {
        memset(r->dlogits, 0, sizeof(float) * rows(r, m->dims.vocab));
        memset(r->dh_last, 0, sizeof(float) * rows(r, m->dims.hidden));
    }
    return 0;
}

/* ---- backward ---- */

static void zero(float *p, size_t n) { memset(p, 0, sizeof(float) * n); }

/* on entry r->dx = d loss / d (output of layer i); on exit d loss / d (input of layer i) */
static int layer_backward(kvt_run *r, int i) {
    const kvt_model *m = r->m;
    const kvt_layer *ly = &m->layers[i];
    const kvt_layer_acts *a = &r->acts[i];
    const int N = r->N, H = m->dims.hidden, Q = m->dims.q_dim, KV = m->dims.kv_dim, F = m->dims.ffn, T = r->T;

    /* MLP: x_out = x_mid + act Wd^T */
    zero(r->dact, rows(r, F));
    kv_matmul_backward(r->dact, G(ly->down), G(ly->down_b), r->dx, a->act, ly->down->w, N, F, H);
    zero(r->dgate, rows(r, F));
    zero(r->dup, rows(r, F));
    kv_swiglu_backward(r->dgate, r->dup, r->dact, a->gate, a->up, rows(r, F));
    zero(r->dxn, rows(r, H));
    kv_matmul_backward(r->dxn, G(ly->gate), G(ly->gate_b), r->dgate, a->xn2, ly->gate->w, N, H, F);
    kv_matmul_backward(r->dxn, G(ly->up), G(ly->up_b), r->dup, a->xn2, ly->up->w, N, H, F);
    kv_rmsnorm_backward(r->dx, G(ly->mlp_norm), r->dxn, a->x_mid, ly->mlp_norm->w, N, H, m->dims.eps);

    /* attention: x_mid = x_in + att Wo^T */
    zero(r->datt, rows(r, Q));
    kv_matmul_backward(r->datt, G(ly->o), G(ly->o_b), r->dx, a->att, ly->o->w, N, Q, H);
    zero(r->dq, rows(r, Q));
    const int slot = kvmap_slot_of(&m->cfg.map, i), up = kvmap_is_upward(&m->cfg.map, i);
    const float *K = up ? r->k_prev[slot] : r->k[slot], *V = up ? r->v_prev[slot] : r->v[slot];
    /* the previous pass's K/V: constants, unless that pass is differentiated too */
    float *dK = up ? (r->read_grad ? r->dk_prev[slot] : NULL) : r->dk[slot];
    float *dV = up ? (r->read_grad ? r->dv_prev[slot] : NULL) : r->dv[slot];
    for (int b = 0; b < r->B; b++) {
        const size_t qo = (size_t)b * T * Q, ko = (size_t)b * T * KV;
        int rc = kv_attention_backward(r->dq + qo, dK ? dK + ko : NULL,
                                       dV ? dV + ko : NULL, r->datt + qo, a->q + qo,
                                       K + ko, V + ko, T, 0, T, m->dims.n_heads, m->dims.n_kv_heads, m->dims.head_dim,
                                       up ? KV_MASK_STRICT : KV_MASK_CAUSAL);
        if (rc) return rc;
    }
    kv_rope_backward(r->dq, N, m->dims.n_heads, r->pos, &r->rope);
    zero(r->dxn, rows(r, H));
    kv_matmul_backward(r->dxn, G(ly->q), G(ly->q_b), r->dq, a->xn1, ly->q->w, N, H, Q);
    if (kvt_layer_writes_own_kv(m, i)) {
        /* every reader with a gradient sits at or above i: dK/dV are complete here */
        kv_rope_backward(r->dk[slot], N, m->dims.n_kv_heads, r->pos, &r->rope);
        kv_matmul_backward(r->dxn, G(ly->k), G(ly->k_b), r->dk[slot], a->xn1, ly->k->w, N, H, KV);
        kv_matmul_backward(r->dxn, G(ly->v), G(ly->v_b), r->dv[slot], a->xn1, ly->v->w, N, H, KV);
    }
    kv_rmsnorm_backward(r->dx, G(ly->attn_norm), r->dxn, a->x_in, ly->attn_norm->w, N, H, m->dims.eps);
    return 0;
}

/* SwiftKV K/V of layers >= l come from norm_swiftkv(h_l): add their gradient into r->dx */
static void swiftkv_backward(kvt_run *r) {
    const kvt_model *m = r->m;
    const int N = r->N, H = m->dims.hidden, KV = m->dims.kv_dim;
    zero(r->ds, rows(r, H));
    for (int j = m->cfg.map.swiftkv_l; j < m->dims.n_layers; j++) {
        if (!kvmap_is_kv_layer(&m->cfg.map, j)) continue;
        const kvt_layer *ly = &m->layers[j];
        const int s = kvmap_slot_of(&m->cfg.map, j);
        kv_rope_backward(r->dk[s], N, m->dims.n_kv_heads, r->pos, &r->rope);
        kv_matmul_backward(r->ds, G(ly->k), G(ly->k_b), r->dk[s], r->s_norm, ly->k->w, N, H, KV);
        kv_matmul_backward(r->ds, G(ly->v), G(ly->v_b), r->dv[s], r->s_norm, ly->v->w, N, H, KV);
    }
    kv_rmsnorm_backward(r->dx, G(m->norm_swiftkv), r->ds, r->acts[m->cfg.map.swiftkv_l].x_in,
                        m->norm_swiftkv->w, N, H, m->dims.eps);
}

/* After the last pass's backward reached the block's lowest layer (r->dx = d loss / d block
 * input from that pass): the earlier differentiated passes, last to first. Pass e's output
 * hidden state is unused, so only the K/V it wrote carry gradient in: what pass e+1's upward
 * layers read. Their gradients on the block input add up in r->dx. */
static int early_passes_backward(kvt_run *r) {
    const kvt_model *m = r->m;
    const int S = r->n_slots, E = r->grad_passes - 1, lo = r->block_lo, hi = r->block_hi;
    const size_t nkv = rows(r, m->dims.kv_dim), nh = rows(r, m->dims.hidden);
    kvt_layer_acts *acts = r->acts;
    float **k = r->k, **v = r->v, **kp = r->k_prev, **vp = r->v_prev;
    memcpy(r->dx_block, r->dx, sizeof(float) * nh);
    int rc = 0;
    for (int e = E - 1; e >= 0 && !rc; e--) {
        for (int s = 0; s < S; s++) {
            if (!slot_made_in_block(m, s, lo, hi)) continue; /* written once, below: accumulates */
            if (r->dk_prev[s]) {
                memcpy(r->dk[s], r->dk_prev[s], sizeof(float) * nkv);
                memcpy(r->dv[s], r->dv_prev[s], sizeof(float) * nkv);
                zero(r->dk_prev[s], nkv);
                zero(r->dv_prev[s], nkv);
            } else {
                zero(r->dk[s], nkv);
                zero(r->dv[s], nkv);
            }
        }
        r->acts = r->acts_early + (size_t)e * m->dims.n_layers;
        r->k = r->k_made + (size_t)e * S;
        r->v = r->v_made + (size_t)e * S;
        r->k_prev = r->k_read + (size_t)e * S;
        r->v_prev = r->v_read + (size_t)e * S;
        r->read_grad = e > 0;
        zero(r->dx, nh);
        for (int i = hi; i >= lo && !rc; i--) rc = layer_backward(r, i);
        for (size_t j = 0; j < nh; j++) r->dx_block[j] += r->dx[j];
    }
    r->acts = acts;
    r->k = k, r->v = v, r->k_prev = kp, r->v_prev = vp;
    memcpy(r->dx, r->dx_block, sizeof(float) * nh);
    return rc;
}

int kvt_backward(kvt_run *r, kv_error *err) {
    if (!r->want_grad) return kv_fail(err, KV_EINVAL, "train: run has no gradient buffers");
    const kvt_model *m = r->m;
    const int N = r->N, H = m->dims.hidden;
    for (int s = 0; s < r->n_slots; s++) {
        zero(r->dk[s], rows(r, m->dims.kv_dim));
        zero(r->dv[s], rows(r, m->dims.kv_dim));
        if (r->dk_prev && r->dk_prev[s]) {
            zero(r->dk_prev[s], rows(r, m->dims.kv_dim));
            zero(r->dv_prev[s], rows(r, m->dims.kv_dim));
        }
    }
    r->read_grad = r->grad_passes > 1;
    zero(r->dxn, rows(r, H));
    zero(r->dx, rows(r, H));
    kv_matmul_backward(r->dxn, m->lm_head == m->embed ? NULL : G(m->lm_head), NULL, r->dlogits,
                       r->xn_out, m->lm_head->w, N, H, m->dims.vocab);
    kv_rmsnorm_backward(r->dx, G(m->final_norm), r->dxn, r->x_out, m->final_norm->w, N, H,
                        m->dims.eps);
    for (int i = m->dims.n_layers - 1; i >= r->grad_lo; i--) {
        int rc = layer_backward(r, i);
        if (rc) return kv_fail(err, rc, "train: attention backward: out of memory");
        if (i == m->dims.n_layers - 1)
            for (size_t k = 0; k < rows(r, H); k++) r->dx[k] += r->dh_last[k];
        if (m->cfg.map.kind == KVMAP_SWIFTKV && i == m->cfg.map.swiftkv_l) swiftkv_backward(r);
        if (r->grad_passes > 1 && i == r->block_lo && (rc = early_passes_backward(r)))
            return kv_fail(err, rc, "train: attention backward: out of memory");
    }
    return 0;
}

int kvt_distill_microbatch(kvt_run *student, kvt_run *teacher, const int32_t *tokens,
                           const kvt_loss_weights *w, float grad_scale, kvt_loss *out,
                           kv_error *err) {
    const kvt_model *m = student->m;
    if (teacher->N != student->N || teacher->T != student->T || teacher->m->dims.vocab != m->dims.vocab ||
        teacher->m->dims.hidden != m->dims.hidden || teacher->m->dims.n_layers != m->dims.n_layers)
        return kv_fail(err, KV_EINVAL, "train: teacher and student runs do not match");
    int rc = kvt_forward(teacher, tokens, err);
    if (!rc) rc = kvt_forward(student, tokens, err);
    if (rc) return rc;
    const int backward = grad_scale > 0 && student->want_grad;
    const size_t nh = (size_t)student->N * (size_t)m->dims.hidden;
    out->kl = kv_distill_kl(backward ? student->dlogits : NULL, student->logits, teacher->logits,
                            student->N, m->dims.vocab, w->temp, grad_scale);
    out->mse = kv_mse(backward && w->mse_weight != 0 ? student->dh_last : NULL,
                      kvt_last_layer_input(student), kvt_last_layer_input(teacher), nh,
                      grad_scale * w->mse_weight);
    out->ce = w->ce_weight == 0 ? 0.0
              : kv_next_token_ce(backward ? student->dlogits : NULL, student->logits, tokens,
                                 student->B, student->T, m->dims.vocab, grad_scale * w->ce_weight);
    out->loss = out->kl + (double)w->mse_weight * out->mse + (double)w->ce_weight * out->ce;
    return backward ? kvt_backward(student, err) : 0;
}
