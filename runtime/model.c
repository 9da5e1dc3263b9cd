/* Model loading: every weight taken from a bound llama_view (names, shapes, dtypes checked
 * there), config checks, then one pass converting what is not usable in place. */
#include "runtime/model.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "base/membudget.h"
#include "formats/llama_view.h"

/* one weight to take: where the pointer goes, the tensor it comes from */
typedef struct {
    const float **dst;
    const st_tensor *t;
} binding;

typedef struct {
    const kv_tensor_source *src;
    binding *items;
    int n, cap;
    size_t store_bytes; /* arena bytes the conversions need */
    int copy_f32;
    kv_error *err;
} loader;

static int needs_store(const loader *ld, const st_tensor *t) {
    return t->dtype != KV_F32 || ld->copy_f32 || ((uintptr_t)t->data % sizeof(float)) != 0;
}

/* queues t for *dst; a NULL t (the model has no such tensor) leaves *dst NULL */
static int take(loader *ld, const float **dst, const st_tensor *t) {
    *dst = NULL;
    if (!t) return 0;
    const char *where = ld->src->where(ld->src->ctx, t);
    if (!t->data)
        return kv_fail(ld->err, KV_EFORMAT, "%s: tensor '%s' has no data", where, t->name);
    if (ld->n == ld->cap) {
        int cap = ld->cap ? 2 * ld->cap : 64;
        binding *p = realloc(ld->items, sizeof *p * (size_t)cap);
        if (!p) return kv_fail(ld->err, KV_ENOMEM, "%s: out of memory binding weights", where);
        ld->items = p;
        ld->cap = cap;
    }
    ld->items[ld->n++] = (binding){.dst = dst, .t = t};
    if (needs_store(ld, t) && kv_arena_reserve(&ld->store_bytes, t->n_elements, sizeof(float)))
        return kv_fail(ld->err, KV_ENOMEM, "%s: weights too large", where);
    return 0;
}

/* every tensor the forward pass runs with (formats/llama_view.h) */
static int take_all(loader *ld, kv_model *m, const llama_view *v) {
    int rc;
    if ((rc = take(ld, &m->embed, v->embed)) || (rc = take(ld, &m->final_norm, v->norm)) ||
        (rc = take(ld, &m->lm_head, v->lm_head)) ||
        (rc = take(ld, &m->norm_swiftkv, v->norm_swiftkv)))
        return rc;
    for (int i = 0; i < m->dims.n_layers; i++) {
        kv_layer_weights *w = &m->layers[i];
        const float **dst[LLAMA_N_ROLES] = {/* llama_role order */
                                            &w->attn_norm, &w->wq,       &w->bq,     &w->wk,
                                            &w->bk,        &w->wv,       &w->bv,     &w->wo,
                                            &w->bo,        &w->mlp_norm, &w->w_gate, &w->b_gate,
                                            &w->w_up,      &w->b_up,     &w->w_down, &w->b_down};
        for (int r = 0; r < LLAMA_N_ROLES; r++)
            if ((rc = take(ld, dst[r], llama_view_used(v, i, (llama_role)r)))) return rc;
    }
    return 0;
}

/* the sizes every kernel trusts, checked once here */
static int check_config(const hf_config *c, kv_error *err) {
    const char *who = "config.json";
    if (c->n_layers < 1 || c->n_layers > HF_MAX_LAYERS)
        return kv_fail(err, KV_EFORMAT, "%s: num_hidden_layers %d outside 1..%d", who, c->n_layers,
                       HF_MAX_LAYERS);
    if (c->hidden_size < 1 || c->intermediate_size < 1 || c->vocab_size < 1 || c->n_heads < 1 ||
        c->n_kv_heads < 1 || c->head_dim < 1 || c->max_position_embeddings < 1)
        return kv_fail(err, KV_EFORMAT,
                       "%s: sizes must be positive (hidden %d, intermediate %d, vocab %d, heads "
                       "%d, kv heads %d, head_dim %d, max_position_embeddings %d)",
                       who, c->hidden_size, c->intermediate_size, c->vocab_size, c->n_heads,
                       c->n_kv_heads, c->head_dim, c->max_position_embeddings);
    if (c->n_heads % c->n_kv_heads)
        return kv_fail(err, KV_EFORMAT,
                       "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       who, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2)
        return kv_fail(err, KV_EFORMAT, "%s: head_dim %d must be even for RoPE", who, c->head_dim);
    if ((int64_t)c->n_heads * c->head_dim > (1 << 24) || c->hidden_size > (1 << 24) ||
        c->intermediate_size > (1 << 26) || c->vocab_size > (1 << 26))
        return kv_fail(err, KV_EFORMAT, "%s: sizes too large", who);
    if (!(c->rms_norm_eps > 0.0f))
        return kv_fail(err, KV_EFORMAT, "%s: rms_norm_eps %g must be positive", who,
                       (double)c->rms_norm_eps);
    return 0;
}

int kv_model_swiftkv_layer(const kv_model *m, int layer) {
    return kvmap_is_swiftkv_layer(&m->cfg.map, layer);
}

int kv_model_writes_own_kv(const kv_model *m, int layer) {
    return kvmap_is_kv_layer(&m->cfg.map, layer) && !kv_model_swiftkv_layer(m, layer);
}

static size_t count_step_bytes(const kv_model *m) {
    const size_t H = (size_t)m->dims.hidden, Q = (size_t)m->dims.q_dim, KV = (size_t)m->dims.kv_dim,
                 F = (size_t)m->dims.ffn;
    size_t n = H + (size_t)m->dims.vocab * H + H; /* embedding row, LM head, final norm */
    if (m->norm_swiftkv) n += H;
    for (int i = 0; i < m->dims.n_layers; i++) {
        const kv_layer_weights *w = &m->layers[i];
        n += 2 * H + Q * H + H * Q + 3 * F * H;
        if (w->wk) n += 2 * KV * H;
        if (w->bq) n += Q + H + (w->bk ? 2 * KV : 0);
        if (w->b_gate) n += 2 * F + H;
    }
    return n * sizeof(float);
}

int kv_model_from_source(kv_model *m, const hf_config *cfg, const kv_tensor_source *src,
                         const kv_model_opts *o, kv_error *err) {
    *m = (kv_model){0};
    m->cfg = *cfg;
    llama_view view;
    int rc = llama_view_bind_source(&view, &m->cfg, src, err);
    if (rc) return rc;
    loader ld = {.src = src, .copy_f32 = o && o->copy_f32, .err = err};
    if ((rc = check_config(cfg, err))) goto done;
    llama_dims_init(&m->dims, cfg);
    { /* RoPE parameters are checked here, once, rather than at the first forward */
        double probe[1];
        kv_rope_config one = m->dims.rope;
        if ((rc = kv_rope_inv_freq(probe, 2, &one, err))) {
            kv_wrap(err, "config.json");
            goto done;
        }
    }
    m->layers = calloc((size_t)m->dims.n_layers, sizeof *m->layers);
    if (!m->layers) {
        rc = kv_fail(err, KV_ENOMEM, "model: out of memory");
        goto done;
    }
    rc = take_all(&ld, m, &view);
    /* F16/BF16 weights widened to F32 (and copied F32 ones): the budget first */
    const kv_mem_item widened = {"weights", ld.store_bytes};
    if (!rc && !(rc = kv_mem_reserve("the model", &widened, 1, err)))
        m->mem_reserved = ld.store_bytes;
    if (!rc) rc = kv_arena_init(&m->store, ld.store_bytes, "model weights", err);
    for (int i = 0; !rc && i < ld.n; i++) {
        const binding *b = &ld.items[i];
        if (!needs_store(&ld, b->t)) {
            *b->dst = b->t->data;
            continue;
        }
        float *p = kv_arena_take(&m->store, b->t->n_elements, sizeof(float));
        if (!p) rc = kv_fail(err, KV_ENOMEM, "model: weight arena too small");
        else if (kv_to_f32(p, b->t->data, b->t->dtype, b->t->n_elements))
            rc = kv_fail(err, KV_EUNSUPPORTED, "model: cannot convert %s",
                         kv_dtype_name(b->t->dtype));
        *b->dst = p;
    }
    for (int i = 0; !rc && i < ld.n; i++) m->n_params += ld.items[i].t->n_elements;
done:
    free(ld.items);
    llama_view_free(&view);
    if (rc) {
        kv_model_free(m);
        return rc;
    }
    if (cfg->tie_word_embeddings) m->lm_head = m->embed;
    m->step_bytes = count_step_bytes(m);
    return 0;
}

int kv_model_load(kv_model *m, const char *dir, const kv_model_opts *o, kv_error *err) {
    *m = (kv_model){0};
    char path[4096];
    hf_config cfg;
    int rc = kv_join(path, sizeof path, dir, "config.json", err);
    if (rc || (rc = hf_config_load(&cfg, path, err))) return rc;
    st_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck) return kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
    if ((rc = st_checkpoint_open(ck, dir, err))) {
        free(ck);
        return rc;
    }
    kv_tensor_source src;
    kv_tensor_source_checkpoint(&src, ck);
    if ((rc = kv_model_from_source(m, &cfg, &src, o, err))) {
        st_checkpoint_close(ck);
        free(ck);
        return rc;
    }
    m->ckpt = ck;
    return 0;
}

void kv_model_free(kv_model *m) {
    if (!m) return;
    free(m->layers);
    kv_arena_free(&m->store);
    const kv_mem_item widened = {"weights", m->mem_reserved};
    if (m->mem_reserved) kv_mem_release(&widened, 1);
    if (m->ckpt) {
        st_checkpoint_close(m->ckpt);
        free(m->ckpt);
    }
    *m = (kv_model){0};
}

double kv_model_prefill_flops(const kv_model *m, int T) {
    const llama_dims *d = &m->dims;
    const kv_map *map = &m->cfg.map;
    const double kv_proj = 2.0 * d->hidden * d->kv_dim; /* K and V */
    double per_token = 0;
    for (int i = 0; i < d->n_layers; i++) {
        per_token += 2.0 * d->hidden * d->q_dim + 3.0 * d->hidden * d->ffn;
        if (kvmap_is_kv_layer(map, i)) per_token += kv_proj;
    }
    /* attention: token t sees t + 1 positions, QK^T and PV each 2 nh hd per position */
    const double visible = (double)T * (T + 1) / 2;
    return 2.0 * per_token * T + 4.0 * d->q_dim * visible * d->n_layers +
           2.0 * d->hidden * d->vocab;
}
