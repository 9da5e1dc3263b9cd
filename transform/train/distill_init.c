/* Zero-shot student from a teacher: METHODS.md s1/s2 initialisation, in memory. */
#include "transform/train/distill_init.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* is teacher tensor `name` dropped by the transform? (k/v of non-KV layers; SwiftKV deploy
 * layout: q/k/v of layers >= l; a teacher saved with "swiftkv": false: its unused SwiftKV
 * tensors, which the student gets afresh) */
static int dropped(const kv_map *map, kv_swiftkv_layout layout, const char *name) {
    if (strstr(name, "_swiftkv.")) return 1;
    int layer, off = 0;
    if (sscanf(name, "model.layers.%d.self_attn.%n", &layer, &off) != 1 || !off) return 0;
    if (layer < 0 || layer >= map->n_layers) return 0;
    const char *rest = name + off;
    int is_kv = !strncmp(rest, "k_proj.", 7) || !strncmp(rest, "v_proj.", 7);
    int is_q = !strncmp(rest, "q_proj.", 7);
    if (map->kind == KVMAP_SWIFTKV)
        return layout == KV_LAYOUT_DEPLOY && layer >= map->swiftkv_l && (is_kv || is_q);
    return is_kv && !kvmap_is_kv_layer(map, layer);
}

typedef struct {
    kvt_param *p;
    int n, cap;
} param_list;

static kvt_param *push(param_list *l, kv_error *err) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        kvt_param *np = realloc(l->p, sizeof *np * (size_t)cap);
        if (!np) return kv_fail(err, KV_ENOMEM, "student: out of memory"), NULL;
        l->p = np;
        l->cap = cap;
    }
    kvt_param *p = &l->p[l->n++];
    memset(p, 0, sizeof *p);
    return p;
}

/* new owned tensor `name` shaped like teacher tensor `like`, values = mean of the teacher
 * tensors srcs[0..n) (same shape as `like`) */
static int add_mean(param_list *l, const char *name, const kvt_param *const *srcs, int n,
                    kv_error *err) {
    kvt_param *p = push(l, err);
    if (!p) return KV_ENOMEM;
    const kvt_param *like = srcs[0];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->n_dims = like->n_dims;
    memcpy(p->shape, like->shape, sizeof p->shape);
    p->n = like->n;
    p->file_dtype = like->file_dtype;
    p->owned = 1;
    double *acc = calloc(p->n ? p->n : 1, sizeof(double));
    p->w = malloc(sizeof(float) * (p->n ? p->n : 1));
    if (!acc || !p->w) {
        free(acc);
        return kv_fail(err, KV_ENOMEM, "student: tensor '%s': out of memory", name);
    }
    for (int s = 0; s < n; s++)
        for (size_t i = 0; i < p->n; i++) acc[i] += srcs[s]->w[i];
    for (size_t i = 0; i < p->n; i++) p->w[i] = (float)(acc[i] / n);
    free(acc);
    return 0;
}

static const kvt_param *teacher_tensor(const kvt_model *t, int layer, const char *what) {
    char name[KVT_NAME_MAX + 32];
    snprintf(name, sizeof name, "model.layers.%d.%s", layer, what);
    return kvt_model_find(t, name);
}

/* mean of `what` ("self_attn.k_proj.weight") over layers[0..n) into new tensor `out_name` */
static int add_mean_over(param_list *l, const kvt_model *t, const char *out_name, const char *what,
                         const int *layers, int n, kv_error *err) {
    const kvt_param *srcs[HF_MAX_LAYERS];
    for (int i = 0; i < n; i++) {
        srcs[i] = teacher_tensor(t, layers[i], what);
        if (!srcs[i] || !srcs[i]->w)
            return kv_fail(err, KV_EFORMAT, "teacher: tensor 'model.layers.%d.%s' is missing",
                           layers[i], what);
    }
    return add_mean(l, out_name, srcs, n, err);
}

static int add_cross(param_list *l, const kvt_model *t, const kv_map *map, distill_init_mode mode,
                     kv_error *err) {
    static const char *const kv_names[] = {"self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                           "self_attn.k_proj.bias", "self_attn.v_proj.bias"};
    const int n_kv = t->cfg.attention_bias ? 4 : 2;
    for (int i = 0; i < map->n_layers; i++) {
        if (!kvmap_is_kv_layer(map, i)) continue;
        int readers[HF_MAX_LAYERS];
        int nr = kvmap_readers(map, i, readers, HF_MAX_LAYERS);
        if (nr < 0) return kv_fail(err, KV_EINVAL, "student: bad KV map");
        if (mode == DISTILL_INIT_TARGET) nr = 1, readers[0] = i;
        for (int k = 0; k < n_kv; k++) {
            char name[KVT_NAME_MAX + 32];
            snprintf(name, sizeof name, "model.layers.%d.%s", i, kv_names[k]);
            int rc = add_mean_over(l, t, name, kv_names[k], readers, nr, err);
            if (rc) return rc;
        }
    }
    return 0;
}

static int add_swiftkv(param_list *l, const kvt_model *t, const kv_map *map, kv_error *err) {
    const int L = map->n_layers, lo = map->swiftkv_l, g = map->swiftkv_g;
    const kvt_param *norm = teacher_tensor(t, lo, "input_layernorm.weight");
    if (!norm) return kv_fail(err, KV_EFORMAT, "teacher: input_layernorm of layer %d missing", lo);
    int rc = add_mean(l, "model.norm_swiftkv.weight", &norm, 1, err);
    if (rc) return rc;
    const int ab = t->cfg.attention_bias;
    for (int j = lo; j < L; j++) {
        char name[KVT_NAME_MAX + 32];
        for (int b = 0; b <= ab; b++) {
            const char *suffix = b ? "bias" : "weight";
            char what[64];
            snprintf(what, sizeof what, "self_attn.q_proj.%s", suffix);
            snprintf(name, sizeof name, "model.layers.%d.self_attn.q_proj_swiftkv.%s", j, suffix);
            if ((rc = add_mean_over(l, t, name, what, &j, 1, err))) return rc;
            if ((j - lo) % g) continue;
            int group[HF_MAX_LAYERS];
            for (int k = 0; k < g; k++) group[k] = j + k;
            for (int kv = 0; kv < 2; kv++) {
                snprintf(what, sizeof what, "self_attn.%c_proj.%s", kv ? 'v' : 'k', suffix);
                snprintf(name, sizeof name, "model.layers.%d.self_attn.%c_proj_swiftkv.%s", j,
                         kv ? 'v' : 'k', suffix);
                if ((rc = add_mean_over(l, t, name, what, group, g, err))) return rc;
            }
        }
    }
    return 0;
}

static int cmp_param(const void *a, const void *b) {
    return strcmp(((const kvt_param *)a)->name, ((const kvt_param *)b)->name);
}

int distill_student_init(kvt_model *s, const kvt_model *t, const kv_map *map,
                         distill_init_mode mode, kv_error *err) {
    return distill_student_init_layout(s, t, map, mode, KV_LAYOUT_DEPLOY, err);
}

int distill_student_init_layout(kvt_model *s, const kvt_model *t, const kv_map *map,
                                distill_init_mode mode, kv_swiftkv_layout layout, kv_error *err) {
    memset(s, 0, sizeof *s);
    if (!kvmap_is_identity(&t->cfg.map))
        return kv_fail(err, KV_EINVAL, "teacher: already transformed (KV map %s)", t->cfg.map.name);
    if (map->n_layers != t->dims.n_layers)
        return kv_fail(err, KV_EINVAL, "KV map %s has %d layers, the teacher %d", map->name,
                       map->n_layers, t->dims.n_layers);
    int rc = kvmap_validate(map, err);
    if (rc) return rc;
    if (map->kind == KVMAP_IDENTITY)
        return kv_fail(err, KV_EINVAL, "KV map %s changes nothing", map->name);
    s->cfg = t->cfg;
    s->cfg.map = *map;
    if (map->kind == KVMAP_SWIFTKV) {
        snprintf(s->cfg.architecture, sizeof s->cfg.architecture, "LlamaSwiftKVForCausalLM");
        snprintf(s->cfg.model_type, sizeof s->cfg.model_type, "llama_swiftkv");
    }
    param_list l = {0};
    if ((rc = kvt_model_dims(s, err))) goto fail;
    if (t->config_json && (rc = hf_config_write_json(&s->cfg, t->config_json, "student config.json",
                                                     &s->config_json, err)))
        goto fail;
    if (t->dir && !(s->dir = strdup(t->dir))) {
        rc = kv_fail(err, KV_ENOMEM, "student: out of memory");
        goto fail;
    }
    for (int i = 0; i < t->n_params; i++) {
        const kvt_param *tp = &t->params[i];
        if (dropped(map, layout, tp->name)) continue;
        /* KV layers' k/v are rebuilt below (cross layer) */
        int layer, off = 0;
        if (map->kind == KVMAP_CROSS &&
            sscanf(tp->name, "model.layers.%d.self_attn.%n", &layer, &off) == 1 && off &&
            (!strncmp(tp->name + off, "k_proj.", 7) || !strncmp(tp->name + off, "v_proj.", 7)))
            continue;
        kvt_param *p = push(&l, err);
        if (!p) {
            rc = KV_ENOMEM;
            goto fail;
        }
        *p = *tp;
        p->owned = 0;
        p->trainable = 0;
        p->g = NULL;
        p->used = 0;
    }
    rc = map->kind == KVMAP_SWIFTKV ? add_swiftkv(&l, t, map, err)
                                    : add_cross(&l, t, map, mode, err);
    if (rc) goto fail;
    s->params = l.p;
    s->n_params = l.n;
    l.p = NULL;
    qsort(s->params, (size_t)s->n_params, sizeof *s->params, cmp_param);
    for (int i = 1; i < s->n_params; i++)
        if (!strcmp(s->params[i].name, s->params[i - 1].name)) {
            rc = kv_fail(err, KV_EFORMAT,
                         "student: tensor '%s' twice (teacher already has "
                         "SwiftKV tensors?)",
                         s->params[i].name);
            goto fail;
        }
    if (!(s->layers = calloc((size_t)s->dims.n_layers, sizeof *s->layers))) {
        rc = kv_fail(err, KV_ENOMEM, "student: out of memory");
        goto fail;
    }
    if ((rc = kvt_model_bind(s, "student", err))) goto fail;
    return 0;
fail:
    if (l.p) {
        for (int i = 0; i < l.n; i++)
            if (l.p[i].owned) free(l.p[i].w);
        free(l.p);
    }
    kvt_model_free(s);
    return rc;
}
