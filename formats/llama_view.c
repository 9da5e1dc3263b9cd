#include "formats/llama_view.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"

#define NAME_CAP 160
#define WHY_CAP  160

typedef enum { NEED_REQUIRED, NEED_OPTIONAL } need_kind;

/* one tensor the config implies */
typedef struct {
    char name[NAME_CAP];
    int n_dims;
    int64_t shape[2];
    char why[WHY_CAP]; /* config fields behind the shape */
    need_kind need;
    const st_tensor **slot; /* NULL: checked if present, then ignored */
} expect;

typedef struct {
    expect *items;
    int n, cap;
} expect_list;

/* problems found while binding: the first message is kept, the rest counted */
typedef struct {
    kv_error first;
    int n;
} problems;

static void problem(problems *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void problem(problems *p, int code, const char *fmt, ...) {
    if (p->n++ > 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->first.msg, sizeof p->first.msg, fmt, ap);
    va_end(ap);
    p->first.code = code;
}

static expect *add(expect_list *l, need_kind need, const st_tensor **slot, int n_dims, int64_t d0,
                   int64_t d1) {
    if (l->n == l->cap) return NULL; /* sized up front; see expect_capacity */
    expect *e = &l->items[l->n++];
    memset(e, 0, sizeof *e);
    e->need = need;
    e->slot = slot;
    e->n_dims = n_dims;
    e->shape[0] = d0;
    e->shape[1] = d1;
    return e;
}

/* every entry that add_layer/add_model can create */
static int expect_capacity(int n_layers) { return 32 * n_layers + 8; }

/* name/why setters kept out of add() so the format strings stay checkable */
#define SET_NAME(e, ...) snprintf((e)->name, NAME_CAP, __VA_ARGS__)
#define SET_WHY(e, ...)  snprintf((e)->why, WHY_CAP, __VA_ARGS__)

/* a projection weight [rows, cols] and, when with_bias, its bias [rows] */
static void add_proj(expect_list *l, need_kind need, int layer, const char *block, const char *proj,
                     const st_tensor **w_slot, const st_tensor **b_slot, int64_t rows, int64_t cols,
                     const char *why, int with_bias) {
    expect *e = add(l, need, w_slot, 2, rows, cols);
    if (e) {
        SET_NAME(e, "model.layers.%d.%s.%s.weight", layer, block, proj);
        SET_WHY(e, "%s", why);
    }
    if (!with_bias) return;
    e = add(l, need, b_slot, 1, rows, 0);
    if (e) {
        SET_NAME(e, "model.layers.%d.%s.%s.bias", layer, block, proj);
        SET_WHY(e, "%s", why);
    }
}

static void add_norm(expect_list *l, const st_tensor **slot, const char *name, int64_t H,
                     const char *why) {
    expect *e = add(l, NEED_REQUIRED, slot, 1, H, 0);
    if (!e) return;
    SET_NAME(e, "%s", name);
    SET_WHY(e, "%s", why);
}

static void add_layer(expect_list *l, const hf_config *c, int i, llama_layer_view *lv) {
    const int64_t H = c->hidden_size, F = c->intermediate_size;
    const int64_t q_rows = (int64_t)c->n_heads * c->head_dim;
    const int64_t kv_rows = (int64_t)c->n_kv_heads * c->head_dim;
    char why_h[WHY_CAP], why_q[WHY_CAP], why_kv[WHY_CAP], why_o[WHY_CAP], why_f[WHY_CAP];
    snprintf(why_h, sizeof why_h, "hidden_size=%d", c->hidden_size);
    snprintf(why_q, sizeof why_q, "num_attention_heads=%d, head_dim=%d, hidden_size=%d", c->n_heads,
             c->head_dim, c->hidden_size);
    snprintf(why_kv, sizeof why_kv, "num_key_value_heads=%d, head_dim=%d, hidden_size=%d",
             c->n_kv_heads, c->head_dim, c->hidden_size);
    snprintf(why_o, sizeof why_o, "hidden_size=%d, num_attention_heads=%d, head_dim=%d",
             c->hidden_size, c->n_heads, c->head_dim);
    snprintf(why_f, sizeof why_f, "intermediate_size=%d, hidden_size=%d", c->intermediate_size,
             c->hidden_size);
    const int ab = c->attention_bias, mb = c->mlp_bias;

    char name[NAME_CAP];
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", i);
    add_norm(l, &lv->input_norm, name, H, why_h);
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", i);
    add_norm(l, &lv->post_norm, name, H, why_h);

    /* attention projections */
    const int swift = kvmap_is_swiftkv_layer(&c->map, i);
    const int kv_layer = kvmap_is_kv_layer(&c->map, i);
    need_kind q_need = swift ? NEED_OPTIONAL : NEED_REQUIRED;
    add_proj(l, q_need, i, "self_attn", "q_proj", &lv->q, &lv->q_bias, q_rows, H, why_q, ab);
    if (swift) {
        /* the teacher's k/v (interop layout): bound when present */
        add_proj(l, NEED_OPTIONAL, i, "self_attn", "k_proj", &lv->k, &lv->k_bias, kv_rows, H,
                 why_kv, ab);
        add_proj(l, NEED_OPTIONAL, i, "self_attn", "v_proj", &lv->v, &lv->v_bias, kv_rows, H,
                 why_kv, ab);
    } else if (kv_layer) {
        add_proj(l, NEED_REQUIRED, i, "self_attn", "k_proj", &lv->k, &lv->k_bias, kv_rows, H,
                 why_kv, ab);
        add_proj(l, NEED_REQUIRED, i, "self_attn", "v_proj", &lv->v, &lv->v_bias, kv_rows, H,
                 why_kv, ab);
    } else {
        /* non-KV layer of a cross-layer map: checked if present, never bound */
        add_proj(l, NEED_OPTIONAL, i, "self_attn", "k_proj", NULL, NULL, kv_rows, H, why_kv, ab);
        add_proj(l, NEED_OPTIONAL, i, "self_attn", "v_proj", NULL, NULL, kv_rows, H, why_kv, ab);
    }
    add_proj(l, NEED_REQUIRED, i, "self_attn", "o_proj", &lv->o, &lv->o_bias, H, q_rows, why_o,
             c->o_bias);
    if (swift) {
        add_proj(l, NEED_REQUIRED, i, "self_attn", "q_proj_swiftkv", &lv->q_swiftkv,
                 &lv->q_swiftkv_bias, q_rows, H, why_q, ab);
        if (kv_layer) { /* group leader */
            add_proj(l, NEED_REQUIRED, i, "self_attn", "k_proj_swiftkv", &lv->k_swiftkv,
                     &lv->k_swiftkv_bias, kv_rows, H, why_kv, ab);
            add_proj(l, NEED_REQUIRED, i, "self_attn", "v_proj_swiftkv", &lv->v_swiftkv,
                     &lv->v_swiftkv_bias, kv_rows, H, why_kv, ab);
        }
    }
    const int off_l = c->swiftkv_off_l, off_g = c->swiftkv_off_g;
    if (!swift && off_l > 0 && i >= off_l) { /* "swiftkv": false: checked if present, unused */
        add_proj(l, NEED_OPTIONAL, i, "self_attn", "q_proj_swiftkv", NULL, NULL, q_rows, H, why_q,
                 ab);
        if ((i - off_l) % off_g == 0) {
            add_proj(l, NEED_OPTIONAL, i, "self_attn", "k_proj_swiftkv", NULL, NULL, kv_rows, H,
                     why_kv, ab);
            add_proj(l, NEED_OPTIONAL, i, "self_attn", "v_proj_swiftkv", NULL, NULL, kv_rows, H,
                     why_kv, ab);
        }
    }
    /* MLP */
    add_proj(l, NEED_REQUIRED, i, "mlp", "gate_proj", &lv->gate, &lv->gate_bias, F, H, why_f, mb);
    add_proj(l, NEED_REQUIRED, i, "mlp", "up_proj", &lv->up, &lv->up_bias, F, H, why_f, mb);
    char why_d[WHY_CAP];
    snprintf(why_d, sizeof why_d, "hidden_size=%d, intermediate_size=%d", c->hidden_size,
             c->intermediate_size);
    add_proj(l, NEED_REQUIRED, i, "mlp", "down_proj", &lv->down, &lv->down_bias, H, F, why_d, mb);
}

static void add_model(expect_list *l, const hf_config *c, llama_view *v) {
    const int64_t H = c->hidden_size, V = c->vocab_size;
    char why_vh[WHY_CAP], why_h[WHY_CAP];
    snprintf(why_vh, sizeof why_vh, "vocab_size=%d, hidden_size=%d", c->vocab_size, c->hidden_size);
    snprintf(why_h, sizeof why_h, "hidden_size=%d", c->hidden_size);
    expect *e = add(l, NEED_REQUIRED, &v->embed, 2, V, H);
    if (e) SET_NAME(e, "model.embed_tokens.weight"), SET_WHY(e, "%s", why_vh);
    add_norm(l, &v->norm, "model.norm.weight", H, why_h);
    if (c->map.kind == KVMAP_SWIFTKV)
        add_norm(l, &v->norm_swiftkv, "model.norm_swiftkv.weight", H, why_h);
    else if (c->swiftkv_off_l > 0 && (e = add(l, NEED_OPTIONAL, NULL, 1, H, 0)))
        SET_NAME(e, "model.norm_swiftkv.weight"), SET_WHY(e, "%s", why_h);
    e = add(l, c->tie_word_embeddings ? NEED_OPTIONAL : NEED_REQUIRED,
            c->tie_word_embeddings ? NULL : &v->lm_head, 2, V, H);
    if (e) SET_NAME(e, "lm_head.weight"), SET_WHY(e, "%s", why_vh);
    for (int i = 0; i < c->n_layers; i++) add_layer(l, c, i, &v->layers[i]);
}

static const st_tensor *tensor_at(const kv_tensor_source *src, int i) {
    return src->tensor(src->ctx, i);
}

static const char *where(const kv_tensor_source *src, const st_tensor *t) {
    return src->where(src->ctx, t);
}

static void shape_text(char *out, size_t cap, int n_dims, const int64_t *shape) {
    size_t at = 0;
    at += (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < n_dims && at < cap; d++)
        at += (size_t)snprintf(out + at, cap - at, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (at < cap) snprintf(out + at, cap - at, "]");
}

static int cmp_index_by_name(const void *a, const void *b, void *ctx) {
    const kv_tensor_source *src = ctx;
    return strcmp(tensor_at(src, *(const int *)a)->name, tensor_at(src, *(const int *)b)->name);
}

/* index of NAME in the source (order: sorted by name, binary search), or -1 */
static int find_index(const kv_tensor_source *src, const int *order, const char *name) {
    int lo = 0, hi = src->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(tensor_at(src, order[mid])->name, name);
        if (c == 0) return order[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

static int float_dtype(kv_dtype t) { return t == KV_F32 || t == KV_F16 || t == KV_BF16; }

static void check_one(const expect *e, const st_tensor *t, const kv_tensor_source *src,
                      problems *p) {
    if (!float_dtype(t->dtype)) {
        problem(p, KV_EUNSUPPORTED, "%s: tensor '%s': dtype %s, expected F32, F16 or BF16",
                where(src, t), t->name, kv_dtype_name(t->dtype));
        return;
    }
    int same = t->n_dims == e->n_dims;
    for (int d = 0; same && d < e->n_dims; d++) same = t->shape[d] == e->shape[d];
    if (same) return;
    char have[128], want[64];
    shape_text(have, sizeof have, t->n_dims, t->shape);
    shape_text(want, sizeof want, e->n_dims, e->shape);
    problem(p, KV_EFORMAT, "%s: tensor '%s': shape %s but config.json implies %s (%s)",
            where(src, t), t->name, have, want, e->why);
}

void llama_view_free(llama_view *v) {
    free(v->layers);
    memset(v, 0, sizeof *v);
}

const st_tensor *llama_view_output(const llama_view *v) {
    return v->lm_head ? v->lm_head : v->embed;
}

int llama_view_bind_source(llama_view *v, const hf_config *c, const kv_tensor_source *src,
                           kv_error *err) {
    memset(v, 0, sizeof *v);
    if (c->n_layers < 1 || c->n_layers > HF_MAX_LAYERS)
        return kv_fail(err, KV_EINVAL, "config.json: num_hidden_layers=%d out of range",
                       c->n_layers);
    const int n = src->n_tensors;
    v->layers = calloc((size_t)c->n_layers, sizeof *v->layers);
    expect_list l = {.cap = expect_capacity(c->n_layers)};
    l.items = malloc((size_t)l.cap * sizeof *l.items);
    int *order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
    unsigned char *seen = calloc((size_t)(n > 0 ? n : 1), 1);
    int rc = 0;
    if (!v->layers || !l.items || !order || !seen) {
        rc = kv_fail(err, KV_ENOMEM, "%s: out of memory binding tensors", where(src, NULL));
        goto done;
    }
    v->cfg = c;
    v->n_layers = c->n_layers;
    for (int i = 0; i < n; i++) order[i] = i;
    qsort_r(order, (size_t)n, sizeof *order, cmp_index_by_name, (void *)src);
    add_model(&l, c, v);
    if (l.n == l.cap) { /* add() refused an entry: expect_capacity is wrong */
        rc = kv_fail(err, KV_EINVAL, "llama_view: internal: more than %d expected tensors", l.cap);
        goto done;
    }

    problems p = {0};
    for (int i = 1; i < n; i++) {
        const st_tensor *t = tensor_at(src, order[i]);
        if (strcmp(tensor_at(src, order[i - 1])->name, t->name) == 0)
            problem(&p, KV_EFORMAT, "%s: tensor '%s' appears twice", where(src, t), t->name);
    }
    for (int k = 0; k < l.n; k++) {
        const expect *e = &l.items[k];
        int idx = find_index(src, order, e->name);
        if (idx < 0) {
            int layer, off = 0;
            if (e->need == NEED_REQUIRED && c->map.kind == KVMAP_IDENTITY &&
                sscanf(e->name, "model.layers.%d.self_attn.%n", &layer, &off) == 1 && off &&
                (!strncmp(e->name + off, "k_proj.", 7) || !strncmp(e->name + off, "v_proj.", 7)))
                problem(&p, KV_EFORMAT,
                        "%s: missing tensor '%s': layer %d has no %.6s, but config.json "
                        "(model_type '%s', no layer_types map) describes a model in which every "
                        "layer computes its own K/V; a checkpoint whose layers share K/V must say "
                        "so (model_type 'lckv-llama' with layer_types, docs/INTEROP.md)",
                        where(src, NULL), e->name, layer, e->name + off, c->model_type);
            else if (e->need == NEED_REQUIRED)
                problem(&p, KV_EFORMAT, "%s: missing tensor '%s'", where(src, NULL), e->name);
            continue;
        }
        seen[idx] = 1;
        const st_tensor *t = tensor_at(src, idx);
        int before = p.n;
        check_one(e, t, src, &p);
        if (p.n != before) continue;
        if (e->slot) {
            *e->slot = t;
            v->n_bound++;
            v->n_params_bound += (int64_t)t->n_elements;
        } else {
            v->n_ignored++;
        }
    }
    for (int i = 0; i < n; i++) {
        const st_tensor *t = tensor_at(src, order[i]);
        v->n_params += (int64_t)t->n_elements;
        if ((int)t->dtype >= 0 && t->dtype < KV_DTYPE_COUNT)
            v->bytes_by_dtype[t->dtype] += t->n_bytes;
        if (!seen[order[i]])
            problem(&p, KV_EFORMAT,
                    "%s: unexpected tensor '%s' (not part of the %s model config.json describes)",
                    where(src, t), t->name, c->architecture);
    }
    if (p.n) {
        rc = p.first.code;
        if (p.n > 1)
            kv_fail(err, rc, "%s (and %d more problem%s)", p.first.msg, p.n - 1,
                    p.n > 2 ? "s" : "");
        else kv_fail(err, rc, "%s", p.first.msg);
    }
done:
    free(l.items);
    free(order);
    free(seen);
    if (rc) llama_view_free(v);
    return rc;
}

int llama_view_bind(llama_view *v, const hf_config *c, const st_checkpoint *ck, kv_error *err) {
    kv_tensor_source src;
    kv_tensor_source_checkpoint(&src, ck);
    int rc = llama_view_bind_source(v, c, &src, err);
    if (!rc) v->ckpt = ck;
    return rc;
}

const st_tensor *llama_view_used(const llama_view *v, int layer, llama_role role) {
    if (!v->layers || layer < 0 || layer >= v->n_layers) return NULL;
    const llama_layer_view *l = &v->layers[layer];
    const int swift = kvmap_is_swiftkv_layer(&v->cfg->map, layer);
    switch (role) {
    case LLAMA_ATTN_NORM: return l->input_norm;
    case LLAMA_Q: return swift ? l->q_swiftkv : l->q;
    case LLAMA_Q_BIAS: return swift ? l->q_swiftkv_bias : l->q_bias;
    case LLAMA_K: return swift ? l->k_swiftkv : l->k;
    case LLAMA_K_BIAS: return swift ? l->k_swiftkv_bias : l->k_bias;
    case LLAMA_V: return swift ? l->v_swiftkv : l->v;
    case LLAMA_V_BIAS: return swift ? l->v_swiftkv_bias : l->v_bias;
    case LLAMA_O: return l->o;
    case LLAMA_O_BIAS: return l->o_bias;
    case LLAMA_MLP_NORM: return l->post_norm;
    case LLAMA_GATE: return l->gate;
    case LLAMA_GATE_BIAS: return l->gate_bias;
    case LLAMA_UP: return l->up;
    case LLAMA_UP_BIAS: return l->up_bias;
    case LLAMA_DOWN: return l->down;
    case LLAMA_DOWN_BIAS: return l->down_bias;
    default: return NULL;
    }
}

int llama_view_open_dir(llama_model_dir *m, const char *dir, kv_error *err) {
    memset(m, 0, sizeof *m);
    char path[4096];
    int rc = kv_join(path, sizeof path, dir, "config.json", err);
    if (!rc) rc = hf_config_load(&m->config, path, err);
    if (rc) return rc;
    rc = st_checkpoint_open(&m->ckpt, dir, err);
    if (rc) return rc;
    rc = llama_view_bind(&m->view, &m->config, &m->ckpt, err);
    if (rc) {
        kv_wrap(err, "%s", dir);
        st_checkpoint_close(&m->ckpt);
    }
    return rc;
}

void llama_view_close_dir(llama_model_dir *m) {
    llama_view_free(&m->view);
    st_checkpoint_close(&m->ckpt);
    memset(m, 0, sizeof *m);
}

void llama_dims_init(llama_dims *d, const hf_config *c) {
    *d = (llama_dims){.n_layers = c->n_layers,
                      .hidden = c->hidden_size,
                      .n_heads = c->n_heads,
                      .n_kv_heads = c->n_kv_heads,
                      .head_dim = c->head_dim,
                      .ffn = c->intermediate_size,
                      .vocab = c->vocab_size,
                      .q_dim = c->n_heads * c->head_dim,
                      .kv_dim = c->n_kv_heads * c->head_dim,
                      .max_pos = c->max_position_embeddings,
                      .eps = c->rms_norm_eps,
                      .rope = c->rope};
}
