/* Training model: load from a checkpoint, bind by HF name with shape checks, trainable set, save. */
#include "transform/train/train_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"

static int cmp_param(const void *a, const void *b) {
    return strcmp(((const kvt_param *)a)->name, ((const kvt_param *)b)->name);
}

kvt_param *kvt_model_find(const kvt_model *m, const char *name) {
    kvt_param key;
    if (strlen(name) >= sizeof key.name) return NULL;
    strcpy(key.name, name);
    return bsearch(&key, m->params, (size_t)m->n_params, sizeof *m->params, cmp_param);
}

int kvt_layer_is_swiftkv(const kvt_model *m, int layer) {
    return kvmap_is_swiftkv_layer(&m->cfg.map, layer);
}

int kvt_layer_writes_own_kv(const kvt_model *m, int layer) {
    return kvmap_is_kv_layer(&m->cfg.map, layer) && !kvt_layer_is_swiftkv(m, layer);
}

int kvt_model_dims(kvt_model *m, kv_error *err) {
    const hf_config *c = &m->cfg;
    llama_dims_init(&m->dims, c);
    if (m->cfg.map.n_layers != m->dims.n_layers)
        return kv_fail(err, KV_EINVAL, "KV map has %d layers, config %d", m->cfg.map.n_layers, m->dims.n_layers);
    return 0;
}

/* loads param's F32 values from its source bytes (zero-copy for aligned F32) */
static int load_values(kvt_param *p, const char *label, kv_error *err) {
    if (p->w) return 0;
    if (!p->src)
        return kv_fail(err, KV_EINVAL, "%s: tensor '%s' has no data", label, p->name);
    kv_dtype t = p->src->dtype;
    if (t != KV_F32 && t != KV_F16 && t != KV_BF16)
        return kv_fail(err, KV_EUNSUPPORTED, "%s: tensor '%s': dtype %s, expected F32/F16/BF16",
                       label, p->name, kv_dtype_name(t));
    if (t == KV_F32 && ((uintptr_t)p->src->data % sizeof(float)) == 0) {
        p->w = (float *)(uintptr_t)p->src->data; /* read-only mapping: never written */
        p->owned = 0;
        return 0;
    }
    p->w = malloc(sizeof(float) * (p->n ? p->n : 1));
    if (!p->w) return kv_fail(err, KV_ENOMEM, "%s: tensor '%s': out of memory", label, p->name);
    p->owned = 1;
    kv_to_f32(p->w, p->src->data, t, p->n);
    return 0;
}

/* finds `name`, checks its shape [d0] or [d0, d1] (d1 = 0: one dimension), loads it */
static int bind(kvt_model *m, kvt_param **out, const char *name, int64_t d0, int64_t d1,
                const char *label, kv_error *err) {
    kvt_param *p = kvt_model_find(m, name);
    if (!p) return kv_fail(err, KV_EFORMAT, "%s: tensor '%s' is missing", label, name);
    int nd = d1 ? 2 : 1;
    if (p->n_dims != nd || p->shape[0] != d0 || (nd == 2 && p->shape[1] != d1)) {
        char got[64] = "", want[64];
        for (int i = 0, o = 0; i < p->n_dims && o < 60; i++)
            o += snprintf(got + o, sizeof got - (size_t)o, "%s%lld", i ? ", " : "",
                          (long long)p->shape[i]);
        if (d1) snprintf(want, sizeof want, "%lld, %lld", (long long)d0, (long long)d1);
        else snprintf(want, sizeof want, "%lld", (long long)d0);
        return kv_fail(err, KV_EFORMAT, "%s: tensor '%s': shape [%s] but config.json implies [%s]",
                       label, name, got, want);
    }
    int rc = load_values(p, label, err);
    if (rc) return rc;
    p->used = 1;
    *out = p;
    return 0;
}

static int bind_opt_bias(kvt_model *m, kvt_param **out, int want, const char *name, int64_t d0,
                         const char *label, kv_error *err) {
    *out = NULL;
    return want ? bind(m, out, name, d0, 0, label, err) : 0;
}

int kvt_model_bind(kvt_model *m, const char *label, kv_error *err) {
    const int H = m->dims.hidden, Q = m->dims.q_dim, KV = m->dims.kv_dim, F = m->dims.ffn;
    const int ab = m->cfg.attention_bias, mb = m->cfg.mlp_bias;
    char n[KVT_NAME_MAX + 32];
    int rc;
    for (int i = 0; i < m->n_params; i++) m->params[i].used = 0;
    if ((rc = bind(m, &m->embed, "model.embed_tokens.weight", m->dims.vocab, H, label, err)) ||
        (rc = bind(m, &m->final_norm, "model.norm.weight", H, 0, label, err)))
        return rc;
    if (m->cfg.tie_word_embeddings) m->lm_head = m->embed;
    else if ((rc = bind(m, &m->lm_head, "lm_head.weight", m->dims.vocab, H, label, err))) return rc;
    m->norm_swiftkv = NULL;
    if (m->cfg.map.kind == KVMAP_SWIFTKV &&
        (rc = bind(m, &m->norm_swiftkv, "model.norm_swiftkv.weight", H, 0, label, err)))
        return rc;
    for (int i = 0; i < m->dims.n_layers; i++) {
        kvt_layer *ly = &m->layers[i];
        memset(ly, 0, sizeof *ly);
        const int skv = kvt_layer_is_swiftkv(m, i);
        const char *sfx = skv ? "_swiftkv" : "";
#define P(field, fmt, d0, d1)                                                  \
    do {                                                                       \
        snprintf(n, sizeof n, "model.layers.%d." fmt, i);                      \
        if ((rc = bind(m, &ly->field, n, d0, d1, label, err))) return rc;      \
    } while (0)
#define PS(field, fmt, d0, d1)                                                 \
    do {                                                                       \
        snprintf(n, sizeof n, "model.layers.%d." fmt, i, sfx);                 \
        if ((rc = bind(m, &ly->field, n, d0, d1, label, err))) return rc;      \
    } while (0)
#define B(field, want, fmt, d0)                                                \
    do {                                                                       \
        snprintf(n, sizeof n, "model.layers.%d." fmt, i, sfx);                 \
        if ((rc = bind_opt_bias(m, &ly->field, want, n, d0, label, err))) return rc; \
    } while (0)
        P(attn_norm, "input_layernorm.weight", H, 0);
        PS(q, "self_attn.q_proj%s.weight", Q, H);
        B(q_b, ab, "self_attn.q_proj%s.bias", Q);
        if (kvmap_is_kv_layer(&m->cfg.map, i)) {
            PS(k, "self_attn.k_proj%s.weight", KV, H);
            PS(v, "self_attn.v_proj%s.weight", KV, H);
            B(k_b, ab, "self_attn.k_proj%s.bias", KV);
            B(v_b, ab, "self_attn.v_proj%s.bias", KV);
        }
        sfx = "";
        P(o, "self_attn.o_proj.weight", H, Q);
        B(o_b, ab, "self_attn.o_proj.bias%s", H);
        P(mlp_norm, "post_attention_layernorm.weight", H, 0);
        P(gate, "mlp.gate_proj.weight", F, H);
        P(up, "mlp.up_proj.weight", F, H);
        P(down, "mlp.down_proj.weight", H, F);
        B(gate_b, mb, "mlp.gate_proj.bias%s", F);
        B(up_b, mb, "mlp.up_proj.bias%s", F);
        B(down_b, mb, "mlp.down_proj.bias%s", H);
#undef P
#undef PS
#undef B
    }
    return 0;
}

static int path_in(char *out, size_t cap, const char *dir, const char *name, kv_error *err) {
    return kv_join(out, cap, dir, name, err);
}

int kvt_model_load(kvt_model *m, const char *dir, kv_error *err) {
    memset(m, 0, sizeof *m);
    char path[4096];
    size_t len = 0;
    int rc = path_in(path, sizeof path, dir, "config.json", err);
    if (rc) return rc;
    if ((rc = kv_read_file(path, &m->config_json, &len, HF_MAX_CONFIG_BYTES, err)) ||
        (rc = hf_config_parse(&m->cfg, m->config_json, path, err)) ||
        (rc = kvt_model_dims(m, err)))
        goto fail;
    if (!(m->dir = strdup(dir)) || !(m->ckpt = calloc(1, sizeof *m->ckpt))) {
        rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    if ((rc = st_checkpoint_open(m->ckpt, dir, err))) {
        free(m->ckpt);
        m->ckpt = NULL;
        goto fail;
    }
    m->n_params = m->ckpt->n_tensors;
    m->params = calloc((size_t)(m->n_params ? m->n_params : 1), sizeof *m->params);
    m->layers = calloc((size_t)m->dims.n_layers, sizeof *m->layers);
    if (!m->params || !m->layers) {
        rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
        goto fail;
    }
    for (int i = 0; i < m->n_params; i++) {
        const st_tensor *t = m->ckpt->tensors[i];
        kvt_param *p = &m->params[i];
        if (strlen(t->name) >= sizeof p->name) {
            rc = kv_fail(err, KV_EFORMAT, "%s: tensor name '%.60s...' is too long", dir, t->name);
            goto fail;
        }
        strcpy(p->name, t->name);
        p->n_dims = t->n_dims;
        memcpy(p->shape, t->shape, sizeof p->shape);
        p->n = t->n_elements;
        p->file_dtype = t->dtype;
        p->src = t;
    }
    qsort(m->params, (size_t)m->n_params, sizeof *m->params, cmp_param);
    if ((rc = kvt_model_bind(m, dir, err))) goto fail;
    return 0;
fail:
    kvt_model_free(m);
    return rc;
}

void kvt_model_free(kvt_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_params; i++) {
        if (m->params[i].owned) free(m->params[i].w);
        free(m->params[i].g);
    }
    free(m->params);
    free(m->layers);
    free(m->config_json);
    free(m->dir);
    if (m->ckpt) {
        st_checkpoint_close(m->ckpt);
        free(m->ckpt);
    }
    memset(m, 0, sizeof *m);
}

static int make_trainable(kvt_param *p, long *count, kv_error *err) {
    if (!p || p->trainable) return 0;
    if (!p->owned) {
        float *copy = malloc(sizeof(float) * (p->n ? p->n : 1));
        if (!copy) return kv_fail(err, KV_ENOMEM, "tensor '%s': out of memory", p->name);
        memcpy(copy, p->w, sizeof(float) * p->n);
        p->w = copy;
        p->owned = 1;
    }
    if (!(p->g = calloc(p->n ? p->n : 1, sizeof(float))))
        return kv_fail(err, KV_ENOMEM, "tensor '%s': out of memory", p->name);
    p->trainable = 1;
    *count += (long)p->n;
    return 0;
}

long kvt_model_set_trainable_distill(kvt_model *m, kv_error *err) {
    long count = 0;
    int rc = 0;
    if (m->cfg.map.kind == KVMAP_SWIFTKV) {
        rc = make_trainable(m->norm_swiftkv, &count, err);
        for (int i = m->cfg.map.swiftkv_l; i < m->dims.n_layers && !rc; i++) {
            kvt_layer *ly = &m->layers[i];
            kvt_param *ps[] = {ly->q, ly->q_b, ly->k, ly->k_b, ly->v, ly->v_b};
            for (size_t j = 0; j < sizeof ps / sizeof *ps && !rc; j++)
                rc = make_trainable(ps[j], &count, err);
        }
    } else if (m->cfg.map.kind == KVMAP_CROSS) {
        for (int i = 0; i < m->dims.n_layers && !rc; i++) {
            kvt_layer *ly = &m->layers[i];
            if (!kvmap_is_kv_layer(&m->cfg.map, i)) {
                if (!(rc = make_trainable(ly->q, &count, err))) rc = make_trainable(ly->q_b, &count, err);
                continue;
            }
            int readers[HF_MAX_LAYERS];
            if (kvmap_readers(&m->cfg.map, i, readers, HF_MAX_LAYERS) < 2) continue;
            kvt_param *ps[] = {ly->k, ly->k_b, ly->v, ly->v_b};
            for (size_t j = 0; j < sizeof ps / sizeof *ps && !rc; j++)
                rc = make_trainable(ps[j], &count, err);
        }
    } else {
        return kv_fail(err, KV_EINVAL, "the student's KV map is the identity: nothing to train "
                       "(give a kvconvert output as the student)");
    }
    return rc ? rc : count;
}

long kvt_model_set_trainable_all(kvt_model *m, kv_error *err) {
    long count = 0;
    for (int i = 0; i < m->n_params; i++) {
        kvt_param *p = &m->params[i];
        if (!p->used || p == m->embed) continue;
        int rc = make_trainable(p, &count, err);
        if (rc) return rc;
    }
    return count;
}

void kvt_model_zero_grads(kvt_model *m) {
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].g) memset(m->params[i].g, 0, sizeof(float) * m->params[i].n);
}

/* ---- save ---- */

typedef struct {
    const kvt_model *m;
    float *chunk;
    size_t chunk_elems;
    void *out;
} save_ctx;

static int save_fill(void *vctx, int index, st_writer *w, kv_error *err) {
    save_ctx *s = vctx;
    const kvt_param *p = &s->m->params[index];
    if (p->src && !p->trainable) return st_writer_put(w, p->src->data, p->src->n_bytes, err);
    if (!p->w) return kv_fail(err, KV_EINVAL, "tensor '%s' has no data to save", p->name);
    const size_t es = kv_dtype_size(p->file_dtype);
    for (size_t at = 0; at < p->n; at += s->chunk_elems) {
        size_t k = p->n - at < s->chunk_elems ? p->n - at : s->chunk_elems;
        if (kv_dtype_cast(s->out, p->file_dtype, p->w + at, KV_F32, k))
            return kv_fail(err, KV_EUNSUPPORTED, "tensor '%s': cannot write dtype %s", p->name,
                           kv_dtype_name(p->file_dtype));
        int rc = st_writer_put(w, s->out, k * es, err);
        if (rc) return rc;
    }
    return 0;
}

int kvt_model_save(const kvt_model *m, const char *dir, const char *aux_dir, kv_error *err) {
    char path[4096], src[4096];
    int rc = kv_mkdir_p(dir, err);
    if (rc) return rc;
    if ((rc = kv_join(path, sizeof path, dir, "config.json", err)) ||
        (rc = kv_write_file_atomic(path, m->config_json, strlen(m->config_json), err)))
        return rc;
    st_spec *specs = calloc((size_t)(m->n_params ? m->n_params : 1), sizeof *specs);
    save_ctx s = {.m = m, .chunk_elems = 1u << 16};
    s.out = malloc(s.chunk_elems * 8);
    if (!specs || !s.out) {
        free(specs);
        free(s.out);
        return kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
    }
    for (int i = 0; i < m->n_params; i++) {
        specs[i].name = m->params[i].name;
        specs[i].dtype = m->params[i].file_dtype;
        specs[i].n_dims = m->params[i].n_dims;
        memcpy(specs[i].shape, m->params[i].shape, sizeof specs[i].shape);
    }
    const char *meta[] = {"format", "pt"};
    rc = st_write_checkpoint(dir, specs, m->n_params, 0, meta, 1, save_fill, &s, err);
    free(specs);
    free(s.out);
    if (rc) return rc;
    static const char *const aux[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                      "special_tokens_map.json", "generation_config.json"};
    const char *from = aux_dir ? aux_dir : m->dir;
    if (!from) return 0;
    for (size_t i = 0; i < sizeof aux / sizeof *aux; i++) {
        if ((rc = kv_join(src, sizeof src, from, aux[i], err))) return rc;
        if (!kv_path_exists(src)) continue;
        if ((rc = kv_join(path, sizeof path, dir, aux[i], err)) ||
            (rc = kv_copy_file_atomic(src, path, err)))
            return rc;
    }
    return 0;
}
