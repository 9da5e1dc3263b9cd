/* Training forward (activations saved) and backward on a backend; see train_forward.h for the
 * math. Every op goes through r->b->ops; the only host work is bookkeeping (pointers, sizes). */
#include "transform/train/train_forward.h"

#include <stdlib.h>
#include <string.h>

#include "base/membudget.h"

/* an op of r's backend: OP(matmul, out, x, ...) */
#define OP(name, ...) (r->b->ops->name(r->b, __VA_ARGS__))
#define TRY(call)                                                                                  \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_) return rc_;                                                                       \
    } while (0)
/* device views of a model tensor (NULL tensor: NULL) */
#define W(p) ((p) ? r->dp[(p)-r->m->params].w : NULL)
#define G(p) ((p) ? r->dp[(p)-r->m->params].g : NULL)

static size_t rows(const kvt_run *r, int width) { return (size_t)r->N * (size_t)width; }
static size_t rows_bytes(const kvt_run *r, int width) { return sizeof(float) * rows(r, width); }

/* the slots whose K/V an upward layer reads: they need a previous-pass copy */
static int slot_has_upward_reader(const kvt_model *m, int slot) {
    for (int i = 0; i < m->dims.n_layers; i++)
        if (kvmap_is_upward(&m->cfg.map, i) && kvmap_slot_of(&m->cfg.map, i) == slot) return 1;
    return 0;
}

static int any_trainable_in_layer(const kvt_layer *ly) {
    const kvt_param *ps[] = {ly->attn_norm, ly->q,    ly->q_b,  ly->k,        ly->k_b,  ly->v,
                             ly->v_b,       ly->o,    ly->o_b,  ly->mlp_norm, ly->gate, ly->gate_b,
                             ly->up,        ly->up_b, ly->down, ly->down_b};
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

/* slots [*s0, *s1) are those KV layers of [lo, hi] write (slots are numbered in layer order) */
static void group_slots(const kvt_model *m, int lo, int hi, int *s0, int *s1) {
    int a = 0, b = 0;
    for (int i = 0; i <= hi; i++)
        if (kvmap_is_kv_layer(&m->cfg.map, i)) a += i < lo, b++;
    *s0 = a;
    *s1 = b;
}

/* 1 when slot s is written by a layer of the cyclic group [lo, hi] */
static int slot_made_in_block(const kvt_model *m, int s, int lo, int hi) {
    for (int i = lo; i <= hi; i++)
        if (kvmap_is_kv_layer(&m->cfg.map, i) && kvmap_slot_of(&m->cfg.map, i) == s) return 1;
    return 0;
}

/* ---- the device buffers: a table of sizes, then one allocation carved into them ---- */

/* kvt_layer_acts's arrays in declaration order, and their widths */
enum { N_ACT = 9 };
static float **act_field(kvt_layer_acts *a, int f) {
    float **fields[N_ACT] = {&a->x_in, &a->xn1,  &a->q,  &a->att, &a->x_mid,
                             &a->xn2,  &a->gate, &a->up, &a->act};
    return fields[f];
}
static int act_width(const llama_dims *d, int f) {
    const int width[N_ACT] = {d->hidden, d->hidden, d->q_dim, d->q_dim, d->hidden,
                              d->hidden, d->ffn,    d->ffn,   d->ffn};
    return width[f];
}

/* Every device buffer of a run, in carving order. Elements are 4 bytes (float, or int32 for
 * POS/TOKENS). S slots, P of them read by upward layers, E = grad_passes - 1 earlier
 * differentiated passes over the nb layers of the cyclic groups (all groups together). */
enum {
    BUF_ACT, /* N_ACT arrays [L, N, width]: layer i at i*N*width */
    BUF_K = BUF_ACT + N_ACT,
    BUF_V, /* [S, N, KV] this pass */
    BUF_K_PREV,
    BUF_V_PREV, /* [P, N, KV] the previous pass */
    BUF_S_NORM,
    BUF_X_OUT,
    BUF_XN_OUT, /* [N, H] */
    BUF_LOGITS, /* [N, V] */
    BUF_POS,
    BUF_TOKENS, /* [N] int32 */
    BUF_ROW_WEIGHT, /* [N] the KL's per-position weights */
    /* want_grad */
    BUF_DLOGITS, /* [N, V] */
    BUF_DH_LAST,
    BUF_DX,
    BUF_DXN,
    BUF_DS, /* [N, H] */
    BUF_DQ,
    BUF_DATT, /* [N, Q] */
    BUF_DGATE,
    BUF_DUP,
    BUF_DACT, /* [N, F] */
    BUF_DK,
    BUF_DV, /* [S, N, KV] */
    /* E > 0 */
    BUF_EACT, /* N_ACT arrays [E, nb, N, width] (x_in: nb - G
                                             layers, each of the G groups' first input is
                                             shared) */
    BUF_K_MADE = BUF_EACT + N_ACT,
    BUF_V_MADE, /* [E, S, N, KV] */
    BUF_K_READ,
    BUF_V_READ, /* [P, N, KV] what pass 0 reads */
    BUF_DK_PREV,
    BUF_DV_PREV, /* [P, N, KV] */
    BUF_X_SPILL,
    BUF_DX_BLOCK, /* [N, H] */
    N_BUF
};
_Static_assert(sizeof(float) == 4 && sizeof(int32_t) == 4, "buffers hold 4-byte elements");
enum { BUF_ALIGN = 256 }; /* bytes: every buffer starts on it (GPU allocations' alignment) */

/* elements of every buffer of r (0: not needed); n_prev = P */
static void run_sizes(size_t size[N_BUF], const kvt_run *r, int n_prev) {
    const llama_dims *d = &r->m->dims;
    const size_t L = (size_t)d->n_layers, S = (size_t)r->n_slots, P = (size_t)n_prev;
    const size_t E = (size_t)(r->grad_passes - 1);
    size_t nb = 0, nx = 0; /* layers in the groups; those but each group's first */
    for (int g = 0; E && g < r->n_groups; g++) {
        nb += (size_t)(r->group_hi[g] - r->group_lo[g] + 1);
        nx += (size_t)(r->group_hi[g] - r->group_lo[g]);
    }
    const size_t nh = rows(r, d->hidden), nkv = rows(r, d->kv_dim), nq = rows(r, d->q_dim);
    const size_t nf = rows(r, d->ffn), nv = rows(r, d->vocab), g = r->want_grad ? 1 : 0;
    memset(size, 0, sizeof(size_t) * N_BUF);
    for (int f = 0; f < N_ACT; f++) {
        size[BUF_ACT + f] = L * rows(r, act_width(d, f));
        size[BUF_EACT + f] = E * (f == 0 ? nx : nb) * rows(r, act_width(d, f));
    }
    size[BUF_K] = size[BUF_V] = S * nkv;
    size[BUF_K_PREV] = size[BUF_V_PREV] = P * nkv;
    size[BUF_S_NORM] = size[BUF_X_OUT] = size[BUF_XN_OUT] = nh;
    size[BUF_LOGITS] = nv;
    size[BUF_POS] = size[BUF_TOKENS] = size[BUF_ROW_WEIGHT] = (size_t)r->N;
    size[BUF_DLOGITS] = g * nv;
    size[BUF_DH_LAST] = size[BUF_DX] = size[BUF_DXN] = size[BUF_DS] = g * nh;
    size[BUF_DQ] = size[BUF_DATT] = g * nq;
    size[BUF_DGATE] = size[BUF_DUP] = size[BUF_DACT] = g * nf;
    size[BUF_DK] = size[BUF_DV] = g * S * nkv;
    size[BUF_K_MADE] = size[BUF_V_MADE] = E * S * nkv;
    size[BUF_K_READ] = size[BUF_V_READ] = size[BUF_DK_PREV] = size[BUF_DV_PREV] = E ? P * nkv : 0;
    size[BUF_X_SPILL] = size[BUF_DX_BLOCK] = E ? nh : 0;
}

static size_t align_up(size_t bytes) { return (bytes + BUF_ALIGN - 1) / BUF_ALIGN * BUF_ALIGN; }

/* one backend allocation for every buffer; base[i] = buffer i (NULL when empty) */
static int carve(kvt_run *r, const size_t size[N_BUF], float *base[N_BUF], kv_error *err) {
    size_t total = 0;
    for (int i = 0; i < N_BUF; i++) total += align_up(size[i] * sizeof(float));
    const kv_mem_item act = {"training activations", total};
    int rc = kv_mem_reserve("training", &act, 1, err);
    if (rc) return rc;
    r->mem_reserved = total;
    rc = OP(alloc, &r->arena, total, err);
    if (rc) {
        kv_wrap(err, "train: activations for %d rows (%zu MB)", r->N, total >> 20);
        return rc;
    }
    r->arena_bytes = total;
    char *p = r->arena;
    for (int i = 0; i < N_BUF; i++) {
        base[i] = size[i] ? (float *)p : NULL;
        p += align_up(size[i] * sizeof(float));
    }
    return 0;
}

/* the host tables of device pointers (acts, per-slot arrays) */
static int alloc_tables(kvt_run *r, kv_error *err) {
    const size_t L = (size_t)r->m->dims.n_layers, S = (size_t)r->n_slots;
    const size_t E = (size_t)(r->grad_passes - 1);
    r->dp = calloc((size_t)r->m->n_params + 1, sizeof *r->dp);
    r->acts = calloc(L, sizeof *r->acts);
    float ***slot_tables[] = {&r->k, &r->v, &r->k_prev, &r->v_prev, &r->dk, &r->dv};
    int ok = r->dp && r->acts;
    for (size_t i = 0; i < sizeof slot_tables / sizeof *slot_tables; i++)
        ok &= (*slot_tables[i] = calloc(S, sizeof(float *))) != NULL;
    if (E > 0) {
        float ***early[] = {&r->k_read, &r->v_read, &r->k_made, &r->v_made};
        for (size_t i = 0; i < sizeof early / sizeof *early; i++)
            ok &= (*early[i] = calloc(E * S, sizeof(float *))) != NULL;
        ok &= (r->acts_early = calloc(E * L, sizeof *r->acts_early)) != NULL;
        ok &= (r->dk_prev = calloc(S, sizeof(float *))) != NULL;
        ok &= (r->dv_prev = calloc(S, sizeof(float *))) != NULL;
        ok &= (r->k_mix = calloc(S, sizeof(float *))) != NULL;
        ok &= (r->v_mix = calloc(S, sizeof(float *))) != NULL;
    }
    return ok ? 0 : kv_fail(err, KV_ENOMEM, "train: out of memory");
}

/* points the host tables into the carved buffers; prev[s] = index of slot s among the P slots
 * with an upward reader, or -1 */
static void point_tables(kvt_run *r, float *const base[N_BUF], const int *prev) {
    const llama_dims *d = &r->m->dims;
    const int L = d->n_layers, S = r->n_slots, E = r->grad_passes - 1;
    const size_t nkv = rows(r, d->kv_dim);
    size_t nb = 0, nx = 0; /* as run_sizes */
    for (int g = 0; E && g < r->n_groups; g++) {
        nb += (size_t)(r->group_hi[g] - r->group_lo[g] + 1);
        nx += (size_t)(r->group_hi[g] - r->group_lo[g]);
    }
    for (int f = 0; f < N_ACT; f++)
        for (int i = 0; i < L; i++)
            *act_field(&r->acts[i], f) = base[BUF_ACT + f] + (size_t)i * rows(r, act_width(d, f));
    for (int s = 0; s < S; s++) {
        r->k[s] = base[BUF_K] + (size_t)s * nkv;
        r->v[s] = base[BUF_V] + (size_t)s * nkv;
        if (prev[s] >= 0) {
            r->k_prev[s] = base[BUF_K_PREV] + (size_t)prev[s] * nkv;
            r->v_prev[s] = base[BUF_V_PREV] + (size_t)prev[s] * nkv;
        }
        if (r->want_grad) {
            r->dk[s] = base[BUF_DK] + (size_t)s * nkv;
            r->dv[s] = base[BUF_DV] + (size_t)s * nkv;
        }
    }
    r->s_norm = base[BUF_S_NORM];
    r->x_out = base[BUF_X_OUT];
    r->xn_out = base[BUF_XN_OUT];
    r->logits = base[BUF_LOGITS];
    r->pos = (int32_t *)base[BUF_POS];
    r->tokens = (int32_t *)base[BUF_TOKENS];
    r->row_weight = base[BUF_ROW_WEIGHT];
    r->dlogits = base[BUF_DLOGITS];
    r->dh_last = base[BUF_DH_LAST];
    r->dx = base[BUF_DX];
    r->dxn = base[BUF_DXN];
    r->ds = base[BUF_DS];
    r->dq = base[BUF_DQ];
    r->datt = base[BUF_DATT];
    r->dgate = base[BUF_DGATE];
    r->dup = base[BUF_DUP];
    r->dact = base[BUF_DACT];
    for (int e = 0; e < E; e++) {
        kvt_layer_acts *set = r->acts_early + (size_t)e * L;
        size_t at = 0, at_x = 0; /* the group's first layer among the nb (nx for x_in) */
        for (int g = 0; g < r->n_groups; g++) {
            const int lo = r->group_lo[g], hi = r->group_hi[g];
            for (int f = 0; f < N_ACT; f++)
                for (int i = lo + (f == 0); i <= hi; i++) {
                    const size_t k = f == 0 ? (size_t)e * nx + at_x + (size_t)(i - lo - 1)
                                            : (size_t)e * nb + at + (size_t)(i - lo);
                    *act_field(&set[i], f) = base[BUF_EACT + f] + k * rows(r, act_width(d, f));
                }
            set[lo].x_in = r->acts[lo].x_in; /* every pass starts from it */
            at += (size_t)(hi - lo + 1);
            at_x += (size_t)(hi - lo);
        }
        /* a group's top layer writes its pass-e output where nothing reads it: the spill, or
         * the next group's input, which the group's last pass then overwrites */
        for (int g = 0; g < r->n_groups; g++)
            if (r->group_hi[g] + 1 < L && !set[r->group_hi[g] + 1].x_in)
                set[r->group_hi[g] + 1].x_in = base[BUF_X_SPILL];
        for (int s = 0; s < S; s++) {
            r->k_made[e * S + s] = base[BUF_K_MADE] + (size_t)(e * S + s) * nkv;
            r->v_made[e * S + s] = base[BUF_V_MADE] + (size_t)(e * S + s) * nkv;
            if (prev[s] < 0) continue;
            if (e == 0) {
                r->k_read[s] = base[BUF_K_READ] + (size_t)prev[s] * nkv;
                r->v_read[s] = base[BUF_V_READ] + (size_t)prev[s] * nkv;
            } else { /* pass e reads what pass e-1 wrote */
                r->k_read[e * S + s] = r->k_made[(e - 1) * S + s];
                r->v_read[e * S + s] = r->v_made[(e - 1) * S + s];
            }
        }
    }
    for (int s = 0; s < S && E > 0; s++)
        if (prev[s] >= 0) {
            r->dk_prev[s] = base[BUF_DK_PREV] + (size_t)prev[s] * nkv;
            r->dv_prev[s] = base[BUF_DV_PREV] + (size_t)prev[s] * nkv;
        }
    r->x_spill = base[BUF_X_SPILL];
    r->dx_block = base[BUF_DX_BLOCK];
}

/* a writable device array holding host[bytes]: the host array itself on a unified backend */
static int dev_writable(kv_backend *b, float **dst, float *host, size_t bytes, kv_error *err) {
    *dst = NULL;
    if (b->unified) {
        *dst = host;
        return 0;
    }
    void *p = NULL;
    int rc = b->ops->alloc(b, &p, bytes, err);
    if (!rc && (rc = b->ops->upload(b, p, host, bytes, err))) b->ops->free(b, p);
    if (!rc) *dst = p;
    return rc;
}

/* device views of the model's tensors: trainable ones of a run with gradients get writable
 * copies and gradients, the others a map */
static int map_params(kvt_run *r, kv_error *err) {
    const kvt_model *m = r->m;
    for (int i = 0; i < m->n_params; i++) {
        const kvt_param *p = &m->params[i];
        kvt_dparam *d = &r->dp[i];
        if (!p->w) continue;
        const size_t bytes = sizeof(float) * p->n;
        if (r->want_grad && p->trainable) {
            TRY(dev_writable(r->b, &d->wt, p->w, bytes, err));
            d->w = d->wt;
            TRY(dev_writable(r->b, &d->g, p->g, bytes, err));
        } else {
            const void *view = NULL;
            TRY(OP(map, &view, p->w, bytes, err));
            d->w = view;
        }
    }
    return 0;
}

static void unmap_params(kvt_run *r) {
    for (int i = 0; r->dp && i < r->m->n_params; i++) {
        kvt_dparam *d = &r->dp[i];
        if (d->wt) {
            if (!r->b->unified) {
                r->b->ops->free(r->b, d->wt);
                r->b->ops->free(r->b, d->g);
            }
        } else if (d->w) {
            r->b->ops->unmap(r->b, d->w);
        }
    }
}

/* positions [N] (row i at i % T) and the RoPE table, on the device */
static int upload_positions(kvt_run *r, kv_error *err) {
    const llama_dims *d = &r->m->dims;
    int32_t *host = malloc(sizeof(int32_t) * (size_t)r->N);
    if (!host) return kv_fail(err, KV_ENOMEM, "train: out of memory");
    for (int i = 0; i < r->N; i++) host[i] = i % r->T;
    int rc = OP(upload, r->pos, host, sizeof(int32_t) * (size_t)r->N, err);
    free(host);
    if (!rc) rc = kv_rope_table_init(&r->rope_host, d->head_dim, r->T, &d->rope, err);
    if (!rc) rc = kv_backend_rope_table(r->b, &r->rope, &r->rope_host, err);
    return rc;
}

int kvt_run_init(kvt_run *r, kv_backend *b, const kvt_model *m, int B, int T, int passes,
                 int want_grad, kv_error *err) {
    return kvt_run_init_grad(r, b, m, B, T, passes, 1, want_grad, err);
}

int kvt_run_init_grad(kvt_run *r, kv_backend *b, const kvt_model *m, int B, int T, int passes,
                      int grad_passes, int want_grad, kv_error *err) {
    return kvt_run_init_plan(r, b, m, B, T, passes, grad_passes, 0, want_grad, err);
}

/* r->group_lo/hi: the cyclic groups of the plan (block: the one cyclic block) */
static int plan_groups(kvt_run *r, int block, kv_error *err) {
    const kv_map *map = &r->m->cfg.map;
    const int n = !r->has_upward ? 0 : block ? 1 : kvmap_n_cyclic_groups(map);
    r->group_lo = calloc((size_t)n + 1, sizeof(int));
    r->group_hi = calloc((size_t)n + 1, sizeof(int));
    if (!r->group_lo || !r->group_hi) return kv_fail(err, KV_ENOMEM, "train: out of memory");
    r->n_groups = n;
    if (block && n) {
        r->group_lo[0] = r->block_lo;
        r->group_hi[0] = r->block_hi;
        return 0;
    }
    int next = 0;
    for (int g = 0; g < n; g++) {
        kvmap_cyclic_group(map, next, &r->group_lo[g], &r->group_hi[g]);
        next = r->group_hi[g] + 1;
    }
    return 0;
}

int kvt_run_init_plan(kvt_run *r, kv_backend *b, const kvt_model *m, int B, int T, int passes,
                      int grad_passes, int block, int want_grad, kv_error *err) {
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
    r->b = b;
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

    int prev[HF_MAX_LAYERS], n_prev = 0;
    for (int s = 0; s < r->n_slots; s++)
        prev[s] = r->has_upward && slot_has_upward_reader(m, s) ? n_prev++ : -1;
    size_t size[N_BUF];
    float *base[N_BUF];
    int rc = plan_groups(r, block, err);
    if (rc) {
        kvt_run_free(r);
        return rc;
    }
    run_sizes(size, r, n_prev);
    rc = alloc_tables(r, err);
    if (!rc && !(rc = carve(r, size, base, err))) {
        point_tables(r, base, prev);
        if (!(rc = map_params(r, err))) rc = upload_positions(r, err);
    }
    if (rc) kvt_run_free(r);
    return rc;
}

void kvt_run_free(kvt_run *r) {
    if (!r) return;
    if (r->b) {
        unmap_params(r);
        kv_backend_rope_table_free(r->b, &r->rope);
        if (r->arena) r->b->ops->free(r->b, r->arena);
    }
    const kv_mem_item act = {"training activations", r->mem_reserved};
    kv_mem_release(&act, 1);
    kv_rope_table_free(&r->rope_host);
    free(r->dp);
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
    free(r->k_mix);
    free(r->v_mix);
    free(r->group_lo);
    free(r->group_hi);
    memset(r, 0, sizeof *r);
}

const float *kvt_last_layer_input(const kvt_run *r) {
    return r->acts[r->m->dims.n_layers - 1].x_in;
}

const kvt_dparam *kvt_run_param(const kvt_run *r, const kvt_param *p) {
    return &r->dp[p - r->m->params];
}

int kvt_run_params_to_host(const kvt_run *r, kv_error *err) {
    for (int i = 0; i < r->m->n_params; i++)
        if (r->dp[i].wt)
            TRY(OP(download, r->m->params[i].w, r->dp[i].wt, sizeof(float) * r->m->params[i].n,
                   err));
    return 0;
}

int kvt_run_host_view(const kvt_run *r, const float **out, const float *src, float *host_scratch,
                      size_t n, kv_error *err) {
    *out = src;
    if (r->b->unified) return 0;
    *out = host_scratch;
    return OP(download, host_scratch, src, sizeof(float) * n, err);
}

/* dst[n] += src[n], device arrays */
static int dev_add(kvt_run *r, float *dst, const float *src, size_t n, kv_error *err) {
    return OP(add, dst, src, n, err);
}

/* ---- forward ---- */

static int swiftkv_write_kv(kvt_run *r, const float *h_l, kv_error *err) {
    const kvt_model *m = r->m;
    const llama_dims *d = &m->dims;
    const int N = r->N, H = d->hidden, KV = d->kv_dim;
    TRY(OP(rmsnorm, r->s_norm, h_l, W(m->norm_swiftkv), N, H, d->eps, err));
    for (int j = m->cfg.map.swiftkv_l; j < d->n_layers; j++) {
        if (!kvmap_is_kv_layer(&m->cfg.map, j)) continue;
        const kvt_layer *ly = &m->layers[j];
        const int s = kvmap_slot_of(&m->cfg.map, j);
        TRY(OP(matmul, r->k[s], r->s_norm, W(ly->k), KV_F32, W(ly->k_b), N, H, KV, 0, err));
        TRY(OP(rope, r->k[s], N, d->n_kv_heads, r->pos, &r->rope, err));
        TRY(OP(matmul, r->v[s], r->s_norm, W(ly->v), KV_F32, W(ly->v_b), N, H, KV, 0, err));
    }
    return 0;
}

static int layer_forward(kvt_run *r, int i, kv_error *err) {
    const kvt_model *m = r->m;
    const llama_dims *d = &m->dims;
    const kvt_layer *ly = &m->layers[i];
    kvt_layer_acts *a = &r->acts[i];
    const int N = r->N, H = d->hidden, Q = d->q_dim, KV = d->kv_dim, F = d->ffn, T = r->T;
    float *x_out = i + 1 < d->n_layers ? r->acts[i + 1].x_in : r->x_out;
    if (m->cfg.map.kind == KVMAP_SWIFTKV && i == m->cfg.map.swiftkv_l)
        TRY(swiftkv_write_kv(r, a->x_in, err));

    TRY(OP(rmsnorm, a->xn1, a->x_in, W(ly->attn_norm), N, H, d->eps, err));
    TRY(OP(matmul, a->q, a->xn1, W(ly->q), KV_F32, W(ly->q_b), N, H, Q, 0, err));
    TRY(OP(rope, a->q, N, d->n_heads, r->pos, &r->rope, err));
    const int slot = kvmap_slot_of(&m->cfg.map, i);
    if (kvt_layer_writes_own_kv(m, i)) {
        TRY(OP(matmul, r->k[slot], a->xn1, W(ly->k), KV_F32, W(ly->k_b), N, H, KV, 0, err));
        TRY(OP(rope, r->k[slot], N, d->n_kv_heads, r->pos, &r->rope, err));
        TRY(OP(matmul, r->v[slot], a->xn1, W(ly->v), KV_F32, W(ly->v_b), N, H, KV, 0, err));
    }
    const int up = kvmap_is_upward(&m->cfg.map, i);
    const float *K = up ? r->k_prev[slot] : r->k[slot], *V = up ? r->v_prev[slot] : r->v[slot];
    for (int b = 0; b < r->B; b++) {
        const size_t qo = (size_t)b * T * Q, ko = (size_t)b * T * KV;
        TRY(OP(attention, a->att + qo, a->q + qo, K + ko, V + ko, KV_F32, 0, T, 0, T, d->n_heads,
               d->n_kv_heads, d->head_dim, up ? KV_MASK_STRICT : KV_MASK_CAUSAL,
               m->cfg.layer_window[i], 0, err));
    }
    TRY(OP(copy, a->x_mid, a->x_in, rows_bytes(r, H), err));
    TRY(OP(matmul, a->x_mid, a->att, W(ly->o), KV_F32, W(ly->o_b), N, Q, H, 1, err));

    TRY(OP(rmsnorm, a->xn2, a->x_mid, W(ly->mlp_norm), N, H, d->eps, err));
    TRY(OP(matmul, a->gate, a->xn2, W(ly->gate), KV_F32, W(ly->gate_b), N, H, F, 0, err));
    TRY(OP(matmul, a->up, a->xn2, W(ly->up), KV_F32, W(ly->up_b), N, H, F, 0, err));
    TRY(OP(swiglu, a->act, a->gate, a->up, N, F, err));
    TRY(OP(copy, x_out, a->x_mid, rows_bytes(r, H), err));
    TRY(OP(matmul, x_out, a->act, W(ly->down), KV_F32, W(ly->down_b), N, F, H, 1, err));
    return 0;
}

static int layers_forward(kvt_run *r, int from, int to, kv_error *err) {
    for (int i = from; i <= to; i++) TRY(layer_forward(r, i, err));
    return 0;
}

/* dst[s] = src[s] for the slots s0 <= s < s1 of `which` that are set (NULL: every slot) */
static int copy_slots(kvt_run *r, float **dst, float **src, float *const *which, int s0, int s1,
                      kv_error *err) {
    const size_t kv_bytes = rows_bytes(r, r->m->dims.kv_dim);
    for (int s = s0; s < s1; s++)
        if (!which || which[s]) TRY(OP(copy, dst[s], src[s], kv_bytes, err));
    return 0;
}

/* one cyclic group [lo, hi]: passes - 1 passes (the earlier differentiated ones saved into
 * acts_early / k_made), then the last pass. Only the group's slots [s0, s1) change. */
static int group_forward(kvt_run *r, int lo, int hi, kv_error *err) {
    const kvt_model *m = r->m;
    const int S = r->n_slots, first_early = r->passes - r->grad_passes + 1;
    int s0, s1;
    group_slots(m, lo, hi, &s0, &s1);
    for (int p = 1; p < r->passes; p++) {
        const int e = p - first_early; /* >= 0: a differentiated pass before the last */
        kvt_layer_acts *acts = r->acts;
        if (e == 0) { /* later passes' inputs are k_made[e-1] */
            TRY(copy_slots(r, r->k_read, r->k_prev, r->k_prev, s0, s1, err));
            TRY(copy_slots(r, r->v_read, r->v_prev, r->k_prev, s0, s1, err));
        }
        if (e >= 0) r->acts = r->acts_early + (size_t)e * m->dims.n_layers;
        int rc = layers_forward(r, lo, hi, err);
        r->acts = acts;
        if (rc) return rc;
        if (e >= 0) {
            TRY(copy_slots(r, r->k_made + (size_t)e * S, r->k, NULL, s0, s1, err));
            TRY(copy_slots(r, r->v_made + (size_t)e * S, r->v, NULL, s0, s1, err));
        }
        TRY(copy_slots(r, r->k_prev, r->k, r->k_prev, s0, s1, err));
        TRY(copy_slots(r, r->v_prev, r->v, r->k_prev, s0, s1, err));
    }
    return layers_forward(r, lo, hi, err);
}

/* the iterative plan: in layer order, layers outside the groups once, each group's passes */
static int iterative_forward(kvt_run *r, kv_error *err) {
    const kvt_model *m = r->m;
    const size_t kv_bytes = rows_bytes(r, m->dims.kv_dim);
    for (int s = 0; s < r->n_slots; s++)
        if (r->k_prev[s]) {
            TRY(OP(zero, r->k_prev[s], kv_bytes, err));
            TRY(OP(zero, r->v_prev[s], kv_bytes, err));
        }
    int next = 0;
    for (int g = 0; g < r->n_groups; g++) {
        TRY(layers_forward(r, next, r->group_lo[g] - 1, err));
        TRY(group_forward(r, r->group_lo[g], r->group_hi[g], err));
        next = r->group_hi[g] + 1;
    }
    return layers_forward(r, next, m->dims.n_layers - 1, err);
}

int kvt_forward(kvt_run *r, const int32_t *tokens, kv_error *err) {
    const kvt_model *m = r->m;
    const llama_dims *d = &m->dims;
    TRY(OP(embedding, r->acts[0].x_in, W(m->embed), d->vocab, d->hidden, tokens, r->N, err));
    TRY(r->has_upward ? iterative_forward(r, err) : layers_forward(r, 0, d->n_layers - 1, err));
    TRY(OP(rmsnorm, r->xn_out, r->x_out, W(m->final_norm), r->N, d->hidden, d->eps, err));
    TRY(OP(matmul, r->logits, r->xn_out, W(m->lm_head), KV_F32, NULL, r->N, d->hidden, d->vocab, 0,
           err));
    if (r->want_grad) {
        TRY(OP(zero, r->dlogits, rows_bytes(r, d->vocab), err));
        TRY(OP(zero, r->dh_last, rows_bytes(r, d->hidden), err));
    }
    return 0;
}

/* ---- backward ---- */

static int zero(kvt_run *r, float *p, int width, kv_error *err) {
    return OP(zero, p, rows_bytes(r, width), err);
}

/* on entry r->dx = d loss / d (output of layer i); on exit d loss / d (input of layer i) */
static int layer_backward(kvt_run *r, int i, kv_error *err) {
    const kvt_model *m = r->m;
    const llama_dims *d = &m->dims;
    const kvt_layer *ly = &m->layers[i];
    const kvt_layer_acts *a = &r->acts[i];
    const int N = r->N, H = d->hidden, Q = d->q_dim, KV = d->kv_dim, F = d->ffn, T = r->T;

    /* MLP: x_out = x_mid + act Wd^T */
    TRY(zero(r, r->dact, F, err));
    TRY(OP(matmul_backward, r->dact, G(ly->down), G(ly->down_b), r->dx, a->act, W(ly->down), N, F,
           H, err));
    TRY(zero(r, r->dgate, F, err));
    TRY(zero(r, r->dup, F, err));
    TRY(OP(swiglu_backward, r->dgate, r->dup, r->dact, a->gate, a->up, rows(r, F), err));
    TRY(zero(r, r->dxn, H, err));
    TRY(OP(matmul_backward, r->dxn, G(ly->gate), G(ly->gate_b), r->dgate, a->xn2, W(ly->gate), N, H,
           F, err));
    TRY(OP(matmul_backward, r->dxn, G(ly->up), G(ly->up_b), r->dup, a->xn2, W(ly->up), N, H, F,
           err));
    TRY(OP(rmsnorm_backward, r->dx, G(ly->mlp_norm), r->dxn, a->x_mid, W(ly->mlp_norm), N, H,
           d->eps, err));

    /* attention: x_mid = x_in + att Wo^T */
    TRY(zero(r, r->datt, Q, err));
    TRY(OP(matmul_backward, r->datt, G(ly->o), G(ly->o_b), r->dx, a->att, W(ly->o), N, Q, H, err));
    TRY(zero(r, r->dq, Q, err));
    const int slot = kvmap_slot_of(&m->cfg.map, i), up = kvmap_is_upward(&m->cfg.map, i);
    const float *K = up ? r->k_prev[slot] : r->k[slot], *V = up ? r->v_prev[slot] : r->v[slot];
    /* the previous pass's K/V: constants, unless that pass is differentiated too */
    float *dK = up ? (r->read_grad ? r->dk_prev[slot] : NULL) : r->dk[slot];
    float *dV = up ? (r->read_grad ? r->dv_prev[slot] : NULL) : r->dv[slot];
    for (int b = 0; b < r->B; b++) {
        const size_t qo = (size_t)b * T * Q, ko = (size_t)b * T * KV;
        TRY(OP(attention_backward, r->dq + qo, dK ? dK + ko : NULL, dV ? dV + ko : NULL,
               r->datt + qo, a->q + qo, K + ko, V + ko, T, 0, T, d->n_heads, d->n_kv_heads,
               d->head_dim, up ? KV_MASK_STRICT : KV_MASK_CAUSAL, m->cfg.layer_window[i], err));
    }
    TRY(OP(rope_backward, r->dq, N, d->n_heads, r->pos, &r->rope, err));
    TRY(zero(r, r->dxn, H, err));
    TRY(OP(matmul_backward, r->dxn, G(ly->q), G(ly->q_b), r->dq, a->xn1, W(ly->q), N, H, Q, err));
    if (kvt_layer_writes_own_kv(m, i)) {
        /* every reader with a gradient sits at or above i: dK/dV are complete here */
        TRY(OP(rope_backward, r->dk[slot], N, d->n_kv_heads, r->pos, &r->rope, err));
        TRY(OP(matmul_backward, r->dxn, G(ly->k), G(ly->k_b), r->dk[slot], a->xn1, W(ly->k), N, H,
               KV, err));
        TRY(OP(matmul_backward, r->dxn, G(ly->v), G(ly->v_b), r->dv[slot], a->xn1, W(ly->v), N, H,
               KV, err));
    }
    return OP(rmsnorm_backward, r->dx, G(ly->attn_norm), r->dxn, a->x_in, W(ly->attn_norm), N, H,
              d->eps, err);
}

/* SwiftKV K/V of layers >= l come from norm_swiftkv(h_l): add their gradient into r->dx */
static int swiftkv_backward(kvt_run *r, kv_error *err) {
    const kvt_model *m = r->m;
    const llama_dims *d = &m->dims;
    const int N = r->N, H = d->hidden, KV = d->kv_dim;
    TRY(zero(r, r->ds, H, err));
    for (int j = m->cfg.map.swiftkv_l; j < d->n_layers; j++) {
        if (!kvmap_is_kv_layer(&m->cfg.map, j)) continue;
        const kvt_layer *ly = &m->layers[j];
        const int s = kvmap_slot_of(&m->cfg.map, j);
        TRY(OP(rope_backward, r->dk[s], N, d->n_kv_heads, r->pos, &r->rope, err));
        TRY(OP(matmul_backward, r->ds, G(ly->k), G(ly->k_b), r->dk[s], r->s_norm, W(ly->k), N, H,
               KV, err));
        TRY(OP(matmul_backward, r->ds, G(ly->v), G(ly->v_b), r->dv[s], r->s_norm, W(ly->v), N, H,
               KV, err));
    }
    return OP(rmsnorm_backward, r->dx, G(m->norm_swiftkv), r->ds,
              r->acts[m->cfg.map.swiftkv_l].x_in, W(m->norm_swiftkv), N, H, d->eps, err);
}

/* one earlier pass e's backward of the group [lo, hi] (r's tables already pointing at pass e) */
static int early_pass_backward(kvt_run *r, int lo, int hi, int e, kv_error *err) {
    const kvt_model *m = r->m;
    const size_t kv_bytes = rows_bytes(r, m->dims.kv_dim);
    for (int s = 0; s < r->n_slots; s++) {
        if (!slot_made_in_block(m, s, lo, hi)) continue; /* written once, below: accumulates */
        if (r->dk_prev[s]) {
            TRY(OP(copy, r->dk[s], r->dk_prev[s], kv_bytes, err));
            TRY(OP(copy, r->dv[s], r->dv_prev[s], kv_bytes, err));
            TRY(OP(zero, r->dk_prev[s], kv_bytes, err));
            TRY(OP(zero, r->dv_prev[s], kv_bytes, err));
        } else {
            TRY(OP(zero, r->dk[s], kv_bytes, err));
            TRY(OP(zero, r->dv[s], kv_bytes, err));
        }
    }
    r->read_grad = e > 0;
    TRY(zero(r, r->dx, m->dims.hidden, err));
    for (int i = hi; i >= lo; i--) TRY(layer_backward(r, i, err));
    return dev_add(r, r->dx_block, r->dx, rows(r, m->dims.hidden), err);
}

/* After the last pass's backward reached the lowest layer of the group [lo, hi] (r->dx = d loss
 * / d group input from that pass): the group's earlier differentiated passes, last to first.
 * Pass e's output hidden state is unused, so only the K/V it wrote carry gradient in: what pass
 * e+1's upward layers read. Their gradients on the group input add up in r->dx. In pass e the
 * group's layers read pass e's K/V for the group's own slots and the final K/V for the slots
 * written below it (k_mix). */
static int early_passes_backward(kvt_run *r, int lo, int hi, kv_error *err) {
    const kvt_model *m = r->m;
    const int S = r->n_slots;
    const size_t nh_bytes = rows_bytes(r, m->dims.hidden);
    kvt_layer_acts *acts = r->acts;
    float **k = r->k, **v = r->v, **kp = r->k_prev, **vp = r->v_prev;
    int s0, s1;
    group_slots(m, lo, hi, &s0, &s1);
    TRY(OP(copy, r->dx_block, r->dx, nh_bytes, err));
    int rc = 0;
    for (int e = r->grad_passes - 2; e >= 0 && !rc; e--) {
        for (int s = 0; s < S; s++) {
            const int own = s >= s0 && s < s1;
            r->k_mix[s] = own ? r->k_made[(size_t)e * S + s] : k[s];
            r->v_mix[s] = own ? r->v_made[(size_t)e * S + s] : v[s];
        }
        r->acts = r->acts_early + (size_t)e * m->dims.n_layers;
        r->k = r->k_mix;
        r->v = r->v_mix;
        r->k_prev = r->k_read + (size_t)e * S;
        r->v_prev = r->v_read + (size_t)e * S;
        rc = early_pass_backward(r, lo, hi, e, err);
    }
    r->acts = acts;
    r->k = k, r->v = v, r->k_prev = kp, r->v_prev = vp;
    r->read_grad = 1; /* the last passes of the groups below read with gradient again */
    return rc ? rc : OP(copy, r->dx, r->dx_block, nh_bytes, err);
}

int kvt_backward(kvt_run *r, kv_error *err) {
    if (!r->want_grad) return kv_fail(err, KV_EINVAL, "train: run has no gradient buffers");
    const kvt_model *m = r->m;
    const llama_dims *d = &m->dims;
    const int N = r->N, H = d->hidden;
    for (int s = 0; s < r->n_slots; s++) {
        TRY(zero(r, r->dk[s], d->kv_dim, err));
        TRY(zero(r, r->dv[s], d->kv_dim, err));
        if (r->dk_prev && r->dk_prev[s]) {
            TRY(zero(r, r->dk_prev[s], d->kv_dim, err));
            TRY(zero(r, r->dv_prev[s], d->kv_dim, err));
        }
    }
    r->read_grad = r->grad_passes > 1;
    TRY(zero(r, r->dxn, H, err));
    TRY(zero(r, r->dx, H, err));
    TRY(OP(matmul_backward, r->dxn, m->lm_head == m->embed ? NULL : G(m->lm_head), NULL, r->dlogits,
           r->xn_out, W(m->lm_head), N, H, d->vocab, err));
    TRY(OP(rmsnorm_backward, r->dx, G(m->final_norm), r->dxn, r->x_out, W(m->final_norm), N, H,
           d->eps, err));
    for (int i = d->n_layers - 1; i >= r->grad_lo; i--) {
        TRY(layer_backward(r, i, err));
        /* dh_last is never -0 (zeroed, then added into): dev_add is exactly dx + dh_last */
        if (i == d->n_layers - 1) TRY(dev_add(r, r->dx, r->dh_last, rows(r, H), err));
        if (m->cfg.map.kind == KVMAP_SWIFTKV && i == m->cfg.map.swiftkv_l)
            TRY(swiftkv_backward(r, err));
        for (int g = 0; r->grad_passes > 1 && g < r->n_groups; g++)
            if (i == r->group_lo[g]) TRY(early_passes_backward(r, i, r->group_hi[g], err));
    }
    return 0;
}

int kvt_distill_microbatch(kvt_run *student, kvt_run *teacher, const int32_t *tokens,
                           const float *row_weight, const kvt_loss_weights *w, float grad_scale,
                           kvt_loss *out, kv_error *err) {
    const kvt_model *m = student->m;
    const llama_dims *d = &m->dims;
    kv_backend *b = student->b;
    if (teacher->N != student->N || teacher->T != student->T ||
        teacher->m->dims.vocab != d->vocab || teacher->m->dims.hidden != d->hidden ||
        teacher->m->dims.n_layers != d->n_layers || teacher->b != b)
        return kv_fail(err, KV_EINVAL, "train: teacher and student runs do not match");
    TRY(kvt_forward(teacher, tokens, err));
    TRY(kvt_forward(student, tokens, err));
    const int backward = grad_scale > 0 && student->want_grad;
    const size_t nh = (size_t)student->N * (size_t)d->hidden;
    if (row_weight)
        TRY(b->ops->upload(b, student->row_weight, row_weight, sizeof(float) * (size_t)student->N,
                           err));
    TRY(b->ops->distill_kl(b, &out->kl, backward ? student->dlogits : NULL, student->logits,
                           teacher->logits, row_weight ? student->row_weight : NULL, student->N,
                           d->vocab, w->temp, grad_scale, err));
    TRY(b->ops->mse(b, &out->mse, backward && w->mse_weight != 0 ? student->dh_last : NULL,
                    kvt_last_layer_input(student), kvt_last_layer_input(teacher), nh,
                    grad_scale * w->mse_weight, err));
    out->ce = 0.0;
    if (w->ce_weight != 0) {
        TRY(b->ops->upload(b, student->tokens, tokens, sizeof(int32_t) * (size_t)student->N, err));
        TRY(b->ops->next_token_ce(b, &out->ce, backward ? student->dlogits : NULL, student->logits,
                                  student->tokens, student->B, student->T, d->vocab,
                                  grad_scale * w->ce_weight, err));
    }
    out->loss = out->kl + (double)w->mse_weight * out->mse + (double)w->ce_weight * out->ce;
    return backward ? kvt_backward(student, err) : 0;
}
