/* Model loading: config checks, then every weight bound by HF name with its shape checked
 * against the config, then one pass converting what is not usable in place. */
#include "runtime/model.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "formats/llama_view.h"

/* one weight to bind: where the pointer goes, what the source holds */
typedef struct {
    const float **dst;
    kv_tensor_ref ref;
    size_t n;           /* elements */
} binding;

typedef struct {
    kv_model *m;
    const kv_tensor_source *src;
    binding *items;
    int n, cap;
    size_t store_bytes; /* arena bytes the conversions need */
    int copy_f32;
    kv_error *err;
} binder;

static int needs_store(const binder *bd, const kv_tensor_ref *r) {
    return r->dtype != KV_F32 || bd->copy_f32 || ((uintptr_t)r->data % sizeof(float)) != 0;
}

/* Looks up the tensor named by fmt..., checks it is [d0] (d1 == 0) or [d0, d1] and a float type,
 * and queues it for *dst. A missing optional tensor leaves *dst NULL. */
static int bind(binder *bd, const float **dst, int required, int64_t d0, int64_t d1,
                const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int bind(binder *bd, const float **dst, int required, int64_t d0, int64_t d1,
                const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const char *label = bd->src->label ? bd->src->label : "weights";
    kv_tensor_ref r;
    int found = bd->src->find(bd->src->ctx, name, &r, bd->err);
    if (found < 0) return found;
    if (!found) {
        *dst = NULL;
        if (!required) return 0;
        return kv_fail(bd->err, KV_EFORMAT, "%s: tensor '%s' is missing (the config requires it)",
                       label, name);
    }
    if (r.dtype != KV_F32 && r.dtype != KV_F16 && r.dtype != KV_BF16)
        return kv_fail(bd->err, KV_EUNSUPPORTED,
                       "%s: tensor '%s': dtype %s is not supported (F32, F16, BF16)", label, name,
                       kv_dtype_name(r.dtype));
    const int want_dims = d1 ? 2 : 1;
    if (r.n_dims != want_dims || r.shape[0] != d0 || (d1 && r.shape[1] != d1)) {
        char got[96] = "[", want[64];
        for (int d = 0; d < r.n_dims && d < ST_MAX_DIMS; d++) {
            size_t len = strlen(got);
            snprintf(got + len, sizeof got - len, "%s%lld", d ? ", " : "", (long long)r.shape[d]);
        }
        strncat(got, "]", sizeof got - strlen(got) - 1);
        if (d1) snprintf(want, sizeof want, "[%lld, %lld]", (long long)d0, (long long)d1);
        else snprintf(want, sizeof want, "[%lld]", (long long)d0);
        return kv_fail(bd->err, KV_EFORMAT, "%s: tensor '%s': shape %s but config.json implies %s",
                       label, name, got, want);
    }
    if (!r.data)
        return kv_fail(bd->err, KV_EFORMAT, "%s: tensor '%s' has no data", label, name);
    if (bd->n == bd->cap) {
        int cap = bd->cap ? 2 * bd->cap : 64;
        binding *p = realloc(bd->items, sizeof *p * (size_t)cap);
        if (!p) return kv_fail(bd->err, KV_ENOMEM, "%s: out of memory binding weights", label);
        bd->items = p;
        bd->cap = cap;
    }
    const size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    bd->items[bd->n++] = (binding){.dst = dst, .ref = r, .n = n};
    if (needs_store(bd, &r) && kv_arena_reserve(&bd->store_bytes, n, sizeof(float)))
        return kv_fail(bd->err, KV_ENOMEM, "%s: weights too large", label);
    *dst = NULL;
    return 0;
}

/* every tensor the config and map call for */
static int bind_all(binder *bd) {
    kv_model *m = bd->m;
    const hf_config *c = &m->cfg;
    const int H = m->dims.hidden, Q = m->dims.q_dim, KV = m->dims.kv_dim, F = m->dims.ffn, V = m->dims.vocab;
    const int ab = c->attention_bias, mb = c->mlp_bias;
    int rc;
#define B(dst, req, d0, d1, ...) \
    if ((rc = bind(bd, (dst), (req), (d0), (d1), __VA_ARGS__))) return rc
    B(&m->embed, 1, V, H, "model.embed_tokens.weight");
    B(&m->final_norm, 1, H, 0, "model.norm.weight");
    if (!c->tie_word_embeddings) B(&m->lm_head, 1, V, H, "lm_head.weight");
    if (m->cfg.map.kind == KVMAP_SWIFTKV) B(&m->norm_swiftkv, 1, H, 0, "model.norm_swiftkv.weight");
    for (int i = 0; i < m->dims.n_layers; i++) {
        kv_layer_weights *w = &m->layers[i];
        const char *p = "model.layers";
        const int swift = kv_model_swiftkv_layer(m, i);
        const char *sfx = swift ? "_swiftkv" : "";
        B(&w->attn_norm, 1, H, 0, "%s.%d.input_layernorm.weight", p, i);
        B(&w->wq, 1, Q, H, "%s.%d.self_attn.q_proj%s.weight", p, i, sfx);
        B(&w->bq, ab, Q, 0, "%s.%d.self_attn.q_proj%s.bias", p, i, sfx);
        if (kvmap_is_kv_layer(&m->cfg.map, i)) {
            B(&w->wk, 1, KV, H, "%s.%d.self_attn.k_proj%s.weight", p, i, sfx);
            B(&w->bk, ab, KV, 0, "%s.%d.self_attn.k_proj%s.bias", p, i, sfx);
            B(&w->wv, 1, KV, H, "%s.%d.self_attn.v_proj%s.weight", p, i, sfx);
            B(&w->bv, ab, KV, 0, "%s.%d.self_attn.v_proj%s.bias", p, i, sfx);
        }
        B(&w->wo, 1, H, Q, "%s.%d.self_attn.o_proj.weight", p, i);
        B(&w->bo, ab, H, 0, "%s.%d.self_attn.o_proj.bias", p, i);
        B(&w->mlp_norm, 1, H, 0, "%s.%d.post_attention_layernorm.weight", p, i);
        B(&w->w_gate, 1, F, H, "%s.%d.mlp.gate_proj.weight", p, i);
        B(&w->b_gate, mb, F, 0, "%s.%d.mlp.gate_proj.bias", p, i);
        B(&w->w_up, 1, F, H, "%s.%d.mlp.up_proj.weight", p, i);
        B(&w->b_up, mb, F, 0, "%s.%d.mlp.up_proj.bias", p, i);
        B(&w->w_down, 1, H, F, "%s.%d.mlp.down_proj.weight", p, i);
        B(&w->b_down, mb, H, 0, "%s.%d.mlp.down_proj.bias", p, i);
    }
#undef B
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
    int rc = check_config(cfg, err);
    if (rc) return rc;
    m->cfg = *cfg;
    llama_dims_init(&m->dims, cfg);
    {   /* RoPE parameters are checked here, once, rather than at the first forward */
        double probe[1];
        kv_rope_config one = m->dims.rope;
        if ((rc = kv_rope_inv_freq(probe, 2, &one, err))) return kv_wrap(err, "config.json");
    }
    m->layers = calloc((size_t)m->dims.n_layers, sizeof *m->layers);
    if (!m->layers) return kv_fail(err, KV_ENOMEM, "model: out of memory");

    binder bd = {.m = m, .src = src, .copy_f32 = o && o->copy_f32, .err = err};
    rc = bind_all(&bd);
    if (!rc) rc = kv_arena_init(&m->store, bd.store_bytes, "model weights", err);
    for (int i = 0; !rc && i < bd.n; i++) {
        const binding *b = &bd.items[i];
        if (!needs_store(&bd, &b->ref)) {
            *b->dst = b->ref.data;
            continue;
        }
        float *p = kv_arena_take(&m->store, b->n, sizeof(float));
        if (!p) rc = kv_fail(err, KV_ENOMEM, "model: weight arena too small");
        else if (kv_to_f32(p, b->ref.data, b->ref.dtype, b->n))
            rc = kv_fail(err, KV_EUNSUPPORTED, "model: cannot convert %s", kv_dtype_name(b->ref.dtype));
        *b->dst = p;
    }
    for (int i = 0; !rc && i < bd.n; i++) m->n_params += bd.items[i].n;
    free(bd.items);
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
    /* every tensor of the checkpoint accounted for and checked against the config, as every
     * kvforge tool sees it (formats/llama_view.h); then bound from it */
    llama_view view;
    if ((rc = llama_view_bind(&view, &cfg, ck, err)) == 0) llama_view_free(&view);
    kv_tensor_source src;
    kv_tensor_source_checkpoint(&src, ck);
    if (rc || (rc = kv_model_from_source(m, &cfg, &src, o, err))) {
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
    if (m->ckpt) {
        st_checkpoint_close(m->ckpt);
        free(m->ckpt);
    }
    *m = (kv_model){0};
}
