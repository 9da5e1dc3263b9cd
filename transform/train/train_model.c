/* Training model: load from a checkpoint, tensors taken from a llama_view of the params,
 * trainable set, save. */
#include "transform/train/train_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "base/membudget.h"

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
        return kv_fail(err, KV_EINVAL, "KV map has %d layers, config %d", m->cfg.map.n_layers,
                       m->dims.n_layers);
    return 0;
}

/* loads param's F32 values from its source bytes (zero-copy for aligned F32) */
static int load_values(kvt_model *m, kvt_param *p, const char *label, kv_error *err) {
    if (p->w) return 0;
    if (!p->src) return kv_fail(err, KV_EINVAL, "%s: tensor '%s' has no data", label, p->name);
    kv_dtype t = p->src->dtype;
    if (t != KV_F32 && t != KV_F16 && t != KV_BF16)
        return kv_fail(err, KV_EUNSUPPORTED, "%s: tensor '%s': dtype %s, expected F32/F16/BF16",
                       label, p->name, kv_dtype_name(t));
    if (t == KV_F32 && ((uintptr_t)p->src->data % sizeof(float)) == 0) {
        p->w = (float *)(uintptr_t)p->src->data; /* read-only mapping: never written */
        p->owned = 0;
        return 0;
    }
    const kv_mem_item widened = {"weights", sizeof(float) * (uint64_t)p->n};
    int rc = kv_mem_reserve("the model", &widened, 1, err);
    if (rc) return rc;
    m->mem_weights += widened.bytes;
    p->w = malloc(sizeof(float) * (p->n ? p->n : 1));
    if (!p->w) return kv_fail(err, KV_ENOMEM, "%s: tensor '%s': out of memory", label, p->name);
    p->owned = 1;
    kv_to_f32(p->w, p->src->data, t, p->n);
    return 0;
}

/* the param behind view slot t (NULL: none), its values loaded, marked used */
static int use(kvt_model *m, kvt_param **out, const st_tensor *t, const char *label,
               kv_error *err) {
    *out = NULL;
    if (!t) return 0;
    kvt_param *p = kvt_model_find(m, t->name);
    if (!p)
        return kv_fail(err, KV_EINVAL, "%s: tensor '%s' is not one of the model's", label, t->name);
    int rc = load_values(m, p, label, err);
    if (rc) return rc;
    p->used = 1;
    *out = p;
    return 0;
}

/* every tensor the forward pass runs with, from a view of the params */
static int use_all(kvt_model *m, const llama_view *v, const char *label, kv_error *err) {
    int rc;
    if ((rc = use(m, &m->embed, v->embed, label, err)) ||
        (rc = use(m, &m->final_norm, v->norm, label, err)) ||
        (rc = use(m, &m->lm_head, llama_view_output(v), label, err)) ||
        (rc = use(m, &m->norm_swiftkv, v->norm_swiftkv, label, err)))
        return rc;
    for (int i = 0; i < m->dims.n_layers; i++) {
        kvt_layer *ly = &m->layers[i];
        kvt_param **dst[LLAMA_N_ROLES] = {/* llama_role order */
                                          &ly->attn_norm, &ly->q,        &ly->q_b,  &ly->k,
                                          &ly->k_b,       &ly->v,        &ly->v_b,  &ly->o,
                                          &ly->o_b,       &ly->mlp_norm, &ly->gate, &ly->gate_b,
                                          &ly->up,        &ly->up_b,     &ly->down, &ly->down_b};
        for (int r = 0; r < LLAMA_N_ROLES; r++)
            if ((rc = use(m, dst[r], llama_view_used(v, i, (llama_role)r), label, err))) return rc;
    }
    return 0;
}

int kvt_model_bind(kvt_model *m, const char *label, kv_error *err) {
    /* the params as st_tensor records: the source's bytes, or the F32 values built in memory */
    st_tensor *recs = calloc((size_t)(m->n_params ? m->n_params : 1), sizeof *recs);
    if (!recs) return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    for (int i = 0; i < m->n_params; i++) {
        kvt_param *p = &m->params[i];
        recs[i] = p->src ? *p->src
                         : (st_tensor){.dtype = KV_F32,
                                       .n_elements = p->n,
                                       .data = p->w,
                                       .n_bytes = p->n * sizeof(float),
                                       .file_index = -1};
        recs[i].name = p->name;
        recs[i].n_dims = p->n_dims;
        memcpy(recs[i].shape, p->shape, sizeof recs[i].shape);
    }
    kv_tensor_table table = {.items = recs, .n_items = m->n_params, .label = label};
    kv_tensor_source src;
    kv_tensor_source_table(&src, &table);
    llama_view v;
    int rc = llama_view_bind_source(&v, &m->cfg, &src, err);
    for (int i = 0; i < m->n_params; i++) m->params[i].used = 0;
    if (!rc) rc = use_all(m, &v, label, err);
    llama_view_free(&v);
    free(recs);
    return rc;
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
        (rc = hf_config_parse(&m->cfg, m->config_json, path, err)))
        goto fail;
    if ((rc = kvt_model_dims(m, err))) {
        kv_wrap(err, "%s", path);
        goto fail;
    }
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
    const kv_mem_item held[2] = {{"weights", m->mem_weights}, {"gradients", m->mem_grads}};
    kv_mem_release(held, 2);
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

static int make_trainable(kvt_model *m, kvt_param *p, long *count, kv_error *err) {
    if (!p || p->trainable) return 0;
    /* a writable copy (unless owned already) and the gradient: the budget first */
    const kv_mem_item items[2] = {{"weights", p->owned ? 0 : sizeof(float) * (uint64_t)p->n},
                                  {"gradients", sizeof(float) * (uint64_t)p->n}};
    int rc = kv_mem_reserve("training", items, 2, err);
    if (rc) return rc;
    m->mem_weights += items[0].bytes;
    m->mem_grads += items[1].bytes;
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
        rc = make_trainable(m, m->norm_swiftkv, &count, err);
        for (int i = m->cfg.map.swiftkv_l; i < m->dims.n_layers && !rc; i++) {
            kvt_layer *ly = &m->layers[i];
            kvt_param *ps[] = {ly->q, ly->q_b, ly->k, ly->k_b, ly->v, ly->v_b};
            for (size_t j = 0; j < sizeof ps / sizeof *ps && !rc; j++)
                rc = make_trainable(m, ps[j], &count, err);
        }
    } else if (m->cfg.map.kind == KVMAP_CROSS) {
        for (int i = 0; i < m->dims.n_layers && !rc; i++) {
            kvt_layer *ly = &m->layers[i];
            if (!kvmap_is_kv_layer(&m->cfg.map, i)) {
                if (!(rc = make_trainable(m, ly->q, &count, err)))
                    rc = make_trainable(m, ly->q_b, &count, err);
                continue;
            }
            int readers[HF_MAX_LAYERS];
            if (kvmap_readers(&m->cfg.map, i, readers, HF_MAX_LAYERS) < 2) continue;
            kvt_param *ps[] = {ly->k, ly->k_b, ly->v, ly->v_b};
            for (size_t j = 0; j < sizeof ps / sizeof *ps && !rc; j++)
                rc = make_trainable(m, ps[j], &count, err);
        }
    } else {
        return kv_fail(err, KV_EINVAL,
                       "the student's KV map is the identity: nothing to train "
                       "(give a kvconvert output as the student)");
    }
    return rc ? rc : count;
}

long kvt_model_set_trainable_all(kvt_model *m, kv_error *err) {
    long count = 0;
    for (int i = 0; i < m->n_params; i++) {
        kvt_param *p = &m->params[i];
        if (!p->used || p == m->embed) continue;
        int rc = make_trainable(m, p, &count, err);
        if (rc) return rc;
    }
    return count;
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
