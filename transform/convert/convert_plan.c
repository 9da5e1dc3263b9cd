/* kvconvert plan: which output tensor comes from which source tensors (METHODS.md s1, s2). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "formats/hfwindow.h"
#include "formats/llama_view.h"
#include "transform/convert/convert.h"
#include "transform/convert/model_info.h"

void convert_source_close(convert_source *s) {
    st_checkpoint_close(&s->ckpt);
    free(s->dir);
    free(s->config_text);
    memset(s, 0, sizeof *s);
}

int convert_source_open(convert_source *s, const char *dir, kv_error *err) {
    memset(s, 0, sizeof *s);
    char path[4096];
    int rc = kv_join(path, sizeof path, dir, "config.json", err);
    if (!rc) rc = kv_read_file(path, &s->config_text, NULL, HF_MAX_CONFIG_BYTES, err);
    if (!rc) rc = hf_config_parse(&s->cfg, s->config_text, path, err);
    if (!rc) rc = st_checkpoint_open(&s->ckpt, dir, err);
    if (!rc && !(s->dir = strdup(dir))) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", dir);
    if (rc) convert_source_close(s);
    return rc;
}

/* ---- tensor names ---- */

/* "model.layers.{i}.REST" -> i and REST; -1 for any other name */
static int split_layer_name(const char *name, const char **rest) {
    static const char prefix[] = "model.layers.";
    if (strncmp(name, prefix, sizeof prefix - 1) != 0) return -1;
    const char *p = name + sizeof prefix - 1;
    long v = 0;
    const char *start = p;
    while (*p >= '0' && *p <= '9' && p - start < 7) v = v * 10 + (*p++ - '0');
    if (p == start || *p != '.' || (*start == '0' && p - start > 1)) return -1;
    *rest = p + 1;
    return (int)v;
}

/* "self_attn.{q,k,v}_proj.{weight,bias}" -> 'q'/'k'/'v' and whether it is the bias; 0 if not */
static char attn_proj(const char *rest, int *is_bias) {
    static const char pre[] = "self_attn.";
    if (strncmp(rest, pre, sizeof pre - 1) != 0) return 0;
    rest += sizeof pre - 1;
    char p = rest[0];
    if ((p != 'q' && p != 'k' && p != 'v') || strncmp(rest + 1, "_proj.", 6) != 0) return 0;
    if (strcmp(rest + 7, "weight") == 0) *is_bias = 0;
    else if (strcmp(rest + 7, "bias") == 0) *is_bias = 1;
    else return 0;
    return p;
}

static void layer_tensor_name(char *out, size_t cap, int layer, char proj, const char *suffix,
                              int is_bias) {
    snprintf(out, cap, "model.layers.%d.self_attn.%c_proj%s.%s", layer, proj, suffix,
             is_bias ? "bias" : "weight");
}

static int is_float(kv_dtype t) { return t == KV_F32 || t == KV_F16 || t == KV_BF16; }

/* ---- plan building ---- */

typedef struct {
    convert_plan *p;
    int cap_out, cap_dropped;
    kv_error *err;
} builder;

static int add_out(builder *b, const char *name, const st_tensor *const *src, int n_src,
                   int added) {
    convert_plan *p = b->p;
    if (p->n_out == b->cap_out) {
        int cap = b->cap_out ? 2 * b->cap_out : 64;
        convert_tensor *t = realloc(p->out, (size_t)cap * sizeof *t);
        if (!t) return kv_fail(b->err, KV_ENOMEM, "out of memory");
        p->out = t;
        b->cap_out = cap;
    }
    convert_tensor *t = &p->out[p->n_out];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->src = malloc((size_t)n_src * sizeof *t->src);
    if (!t->name || !t->src) {
        free(t->name);
        free(t->src);
        return kv_fail(b->err, KV_ENOMEM, "out of memory");
    }
    p->n_out++;
    memcpy(t->src, src, (size_t)n_src * sizeof *src);
    t->n_src = n_src;
    t->op = n_src > 1 ? CONVERT_MEAN : CONVERT_COPY;
    t->added = added;
    const st_tensor *s0 = src[0];
    t->spec.name = t->name;
    t->spec.n_dims = s0->n_dims;
    memcpy(t->spec.shape, s0->shape, sizeof t->spec.shape);
    t->spec.dtype = is_float(s0->dtype) && p->opt.out_dtype != KV_CONVERT_KEEP_DTYPE
                        ? (kv_dtype)p->opt.out_dtype
                        : s0->dtype;
    return 0;
}

static int add_dropped(builder *b, const st_tensor *t) {
    convert_plan *p = b->p;
    if (p->n_dropped == b->cap_dropped) {
        int cap = b->cap_dropped ? 2 * b->cap_dropped : 32;
        const st_tensor **d = realloc(p->dropped, (size_t)cap * sizeof *d);
        if (!d) return kv_fail(b->err, KV_ENOMEM, "out of memory");
        p->dropped = d;
        b->cap_dropped = cap;
    }
    p->dropped[p->n_dropped++] = t;
    return 0;
}

/* the source tensor named NAME with the shape [rows] or [rows, cols] and a float type */
static int need_tensor(const convert_source *s, const char *name, int64_t rows, int64_t cols,
                       const st_tensor **out, kv_error *err) {
    const st_tensor *t = st_checkpoint_find(&s->ckpt, name);
    if (!t) return kv_fail(err, KV_EFORMAT, "%s: tensor '%s' is missing", s->dir, name);
    int want_dims = cols ? 2 : 1;
    if (t->n_dims != want_dims || t->shape[0] != rows || (cols && t->shape[1] != cols))
        return kv_fail(err, KV_EFORMAT,
                       "%s: tensor '%s': shape [%lld%s%lld] but config.json implies [%lld%s%lld]",
                       s->dir, name, (long long)t->shape[0], t->n_dims > 1 ? ", " : "",
                       t->n_dims > 1 ? (long long)t->shape[1] : 0LL, (long long)rows,
                       cols ? ", " : "", (long long)cols);
    if (!is_float(t->dtype))
        return kv_fail(err, KV_EUNSUPPORTED, "%s: tensor '%s': dtype %s, expected F32, F16 or BF16",
                       s->dir, name, kv_dtype_name(t->dtype));
    *out = t;
    return 0;
}

/* every layer's q/k/v projections (and biases when attention_bias) exist with the config's
 * shapes; no layer index beyond the config; nothing already SwiftKV (but the unused SwiftKV
 * tensors of a checkpoint saved with "swiftkv": false, which the plan drops) */
static int check_source(const convert_source *s, kv_error *err) {
    const hf_config *c = &s->cfg;
    if (c->map.kind == KVMAP_SWIFTKV)
        return kv_fail(
            err, KV_EUNSUPPORTED,
            "%s: already transformed (config.json describes a SwiftKV model); convert the original",
            s->dir);
    if (c->map.kind == KVMAP_CROSS)
        return kv_fail(
            err, KV_EUNSUPPORTED,
            "%s: already transformed (config.json has a layer_types KV map); convert the original",
            s->dir);
    const int64_t H = c->hidden_size, q_rows = (int64_t)c->n_heads * c->head_dim,
                  kv_rows = (int64_t)c->n_kv_heads * c->head_dim;
    for (int i = 0; i < c->n_layers; i++)
        for (int pj = 0; pj < 3; pj++) {
            char proj = "qkv"[pj], name[160];
            int64_t rows = pj == 0 ? q_rows : kv_rows;
            const st_tensor *t;
            int rc;
            layer_tensor_name(name, sizeof name, i, proj, "", 0);
            if (pj > 0 &&
                !st_checkpoint_find(&s->ckpt, name)) /* a cross-layer model posing as plain */
                return kv_fail(
                    err, KV_EFORMAT,
                    "%s: tensor '%s' is missing: layer %d has no %c_proj, but config.json "
                    "(model_type '%s', "
                    "no layer_types map) describes a model in which every layer computes its own "
                    "K/V; a "
                    "checkpoint whose layers share K/V must say so (model_type 'lckv-llama' with "
                    "layer_types, docs/INTEROP.md)",
                    s->dir, name, i, proj, c->model_type);
            if ((rc = need_tensor(s, name, rows, H, &t, err))) return rc;
            layer_tensor_name(name, sizeof name, i, proj, "", 1);
            if (c->attention_bias && (rc = need_tensor(s, name, rows, 0, &t, err))) return rc;
            if (!c->attention_bias && st_checkpoint_find(&s->ckpt, name))
                return kv_fail(err, KV_EFORMAT,
                               "%s: tensor '%s' present but config.json has attention_bias false",
                               s->dir, name);
        }
    for (int k = 0; k < s->ckpt.n_tensors; k++) {
        const char *name = s->ckpt.tensors[k]->name, *rest;
        int layer = split_layer_name(name, &rest);
        if (layer >= c->n_layers)
            return kv_fail(err, KV_EFORMAT,
                           "%s: tensor '%s' belongs to layer %d but config.json has %d layers",
                           s->dir, name, layer, c->n_layers);
        if (strstr(name, "_swiftkv") && c->swiftkv_off_l == 0) /* teacher mode: dropped */
            return kv_fail(
                err, KV_EUNSUPPORTED,
                "%s: tensor '%s': already transformed (SwiftKV tensors); convert the original",
                s->dir, name);
    }
    return 0;
}

/* source tensors of proj (k or v) for the given layers, gathered for a mean */
static int gather_group(const convert_source *s, const int *layers, int n, char proj, int is_bias,
                        const st_tensor **out, kv_error *err) {
    for (int r = 0; r < n; r++) {
        char name[160];
        layer_tensor_name(name, sizeof name, layers[r], proj, "", is_bias);
        out[r] = st_checkpoint_find(&s->ckpt, name);
        if (!out[r]) return kv_fail(err, KV_EFORMAT, "%s: tensor '%s' is missing", s->dir, name);
    }
    return 0;
}

/* the layers whose K/V `target` serves: all of them for mean, the target alone otherwise */
static int init_group(const convert_plan *p, int target, int *layers) {
    if (p->opt.kv_init == KV_INIT_TARGET) {
        layers[0] = target;
        return 1;
    }
    int n = kvmap_readers(&p->opt.map, target, layers, HF_MAX_LAYERS);
    if (n < 1) {
        layers[0] = target;
        return 1;
    }
    return n;
}

static int cmp_out_name(const void *a, const void *b) {
    return strcmp(((const convert_tensor *)a)->name, ((const convert_tensor *)b)->name);
}

static int plan_tensors(builder *b) {
    convert_plan *p = b->p;
    const convert_source *s = p->source;
    const kv_map *m = &p->opt.map;
    const int swift = m->kind == KVMAP_SWIFTKV, l = m->swiftkv_l;
    int *layers = malloc(HF_MAX_LAYERS * sizeof *layers);
    const st_tensor **group = malloc(HF_MAX_LAYERS * sizeof *group);
    if (!layers || !group) {
        free(layers);
        free(group);
        return kv_fail(b->err, KV_ENOMEM, "out of memory");
    }
    int rc = 0;
    for (int k = 0; k < s->ckpt.n_tensors && !rc; k++) {
        const st_tensor *t = s->ckpt.tensors[k];
        const char *rest;
        int layer = split_layer_name(t->name, &rest), is_bias = 0;
        char proj = layer >= 0 ? attn_proj(rest, &is_bias) : 0;
        if (s->cfg.swiftkv_off_l > 0 && strstr(t->name, "_swiftkv.")) {
            rc = add_dropped(b, t); /* "swiftkv": false source: its unused SwiftKV tensors */
            continue;
        }
        if (!proj) {
            rc = add_out(b, t->name, &t, 1, 0);
            continue;
        }
        if (swift) {
            if (layer >= l && p->opt.layout == KV_LAYOUT_DEPLOY) rc = add_dropped(b, t);
            else rc = add_out(b, t->name, &t, 1, 0);
        } else if (proj == 'q') {
            rc = add_out(b, t->name, &t, 1, 0);
        } else if (!kvmap_is_kv_layer(m, layer)) {
            rc = add_dropped(b, t);
        } else {
            int n = init_group(p, layer, layers);
            rc = gather_group(s, layers, n, proj, is_bias, group, b->err);
            if (!rc) rc = add_out(b, t->name, group, n, 0);
        }
    }
    if (swift && !rc) {
        char name[160];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        const st_tensor *norm;
        rc = need_tensor(s, name, s->cfg.hidden_size, 0, &norm, b->err);
        if (!rc) rc = add_out(b, "model.norm_swiftkv.weight", &norm, 1, 1);
        for (int j = l; j < m->n_layers && !rc; j++)
            for (int is_bias = 0; is_bias <= (s->cfg.attention_bias ? 1 : 0) && !rc; is_bias++) {
                const st_tensor *q;
                rc = gather_group(s, &j, 1, 'q', is_bias, &q, b->err);
                layer_tensor_name(name, sizeof name, j, 'q', "_swiftkv", is_bias);
                if (!rc) rc = add_out(b, name, &q, 1, 1);
                if (rc || !kvmap_is_kv_layer(m, j)) continue;
                int n = init_group(p, j, layers);
                for (int pj = 1; pj < 3 && !rc; pj++) {
                    rc = gather_group(s, layers, n, "qkv"[pj], is_bias, group, b -> err);
                    layer_tensor_name(name, sizeof name, j, "qkv"[pj], "_swiftkv", is_bias);
                    if (!rc) rc = add_out(b, name, group, n, 1);
                }
            }
    }
    free(layers);
    free(group);
    if (!rc) qsort(p->out, (size_t)p->n_out, sizeof *p->out, cmp_out_name);
    return rc;
}

void convert_plan_free(convert_plan *p) {
    for (int i = 0; i < p->n_out; i++) {
        free(p->out[i].name);
        free(p->out[i].src);
    }
    free(p->out);
    free(p->dropped);
    memset(p, 0, sizeof *p);
}

int convert_plan_build(convert_plan *p, const convert_source *s, const kv_convert_opts *o,
                       kv_error *err) {
    memset(p, 0, sizeof *p);
    p->source = s;
    p->opt = *o;
    const hf_config *c = &s->cfg;
    int rc = kvmap_validate(&o->map, err);
    if (rc) return rc;
    if (o->map.n_layers != c->n_layers)
        return kv_fail(err, KV_EINVAL, "KV map '%s' is for %d layers but %s/config.json has %d",
                       o->map.name, o->map.n_layers, s->dir, c->n_layers);
    if (o->out_dtype != KV_CONVERT_KEEP_DTYPE && !is_float((kv_dtype)o->out_dtype))
        return kv_fail(err, KV_EINVAL, "output dtype must be F32, F16 or BF16");
    if (o->layout != KV_LAYOUT_HF_SWIFTKV && o->layout != KV_LAYOUT_DEPLOY)
        return kv_fail(err, KV_EINVAL, "SwiftKV layout %d is neither hf-swiftkv nor deploy",
                       (int)o->layout);
    if ((rc = check_source(s, err))) return rc;
    for (int i = 0; o->map.kind == KVMAP_SWIFTKV && i < c->n_layers; i++)
        if (c->layer_window[i] > 0)
            return kv_fail(err, KV_EUNSUPPORTED,
                           "%s/config.json: layer %d attends over a sliding window of %d "
                           "positions: kvforge does not run SwiftKV with sliding windows",
                           s->dir, i, c->layer_window[i]);
    llama_view view; /* every tensor named, shaped and typed as the config implies */
    if ((rc = llama_view_bind(&view, c, &s->ckpt, err))) return rc;
    llama_view_free(&view);
    builder b = {.p = p, .err = err};
    if ((rc = plan_tensors(&b))) {
        convert_plan_free(p);
        return rc;
    }

    p->out_cfg = *c;
    hf_config *oc = &p->out_cfg;
    oc->map = o->map;
    if (o->out_dtype != KV_CONVERT_KEEP_DTYPE) oc->torch_dtype = (kv_dtype)o->out_dtype;

    for (int k = 0; k < s->ckpt.n_tensors; k++) {
        p->src_params += s->ckpt.tensors[k]->n_elements;
        p->src_bytes += s->ckpt.tensors[k]->n_bytes;
    }
    for (int k = 0; k < p->n_out; k++) {
        p->out_params += p->out[k].src[0]->n_elements;
        p->out_bytes += st_spec_bytes(&p->out[k].spec);
    }
    p->cache_dtype = is_float(oc->torch_dtype) ? oc->torch_dtype : KV_F32;
    kv_map id;
    kvmap_identity(&id, c->n_layers);
    size_t elem = kv_dtype_size(p->cache_dtype);
    p->kv_bytes_src = kvmap_cache_bytes_per_token(&id, c->n_kv_heads, c->head_dim, elem);
    p->kv_bytes_out = kvmap_cache_bytes_per_token(&o->map, c->n_kv_heads, c->head_dim, elem);
    p->slots_src = c->n_layers;
    p->slots_out = kvmap_n_slots(&o->map);
    if (hf_has_windows(c)) {
        const int ctx = c->max_position_embeddings;
        p->kv_ctx_src = kvmap_cache_bytes_windowed(&id, c->layer_window, KVMAP_RUN_BATCH,
                                                   c->n_kv_heads, c->head_dim, ctx, elem, NULL);
        p->kv_ctx_out = kvmap_cache_bytes_windowed(&o->map, c->layer_window, KVMAP_RUN_BATCH,
                                                   c->n_kv_heads, c->head_dim, ctx, elem, NULL);
    }
    return 0;
}

void convert_plan_report(const convert_plan *p, kv_convert_report *rep) {
    memset(rep, 0, sizeof *rep);
    rep->params_before = (int64_t)p->src_params;
    rep->params_after = (int64_t)p->out_params;
    rep->kv_bytes_before = p->kv_bytes_src;
    rep->kv_bytes_after = p->kv_bytes_out;
    rep->n_tensors_in = p->source->ckpt.n_tensors;
    rep->n_tensors_out = p->n_out;
    rep->n_dropped = p->n_dropped;
    for (int k = 0; k < p->n_out; k++) {
        rep->n_added += p->out[k].added;
        rep->n_averaged += p->out[k].op == CONVERT_MEAN;
    }
    rep->bytes_written = (size_t)p->out_bytes;
}

/* ---- text ---- */

typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} text_buf;

__attribute__((format(printf, 2, 3))) static void tb_printf(text_buf *t, const char *fmt, ...) {
    if (t->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = 1;
            return;
        }
        if (t->s && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap : 1024;
        while (cap <= t->len + (size_t)n) cap *= 2;
        char *s = realloc(t->s, cap);
        if (!s) {
            t->oom = 1;
            return;
        }
        t->s = s;
        t->cap = cap;
    }
}

/* "saving 40.0%", "growth 0.1%" or "no change" (model_change_text) */
static const char *change(uint64_t before, uint64_t after, char *buf, size_t cap) {
    return model_change_text((double)before, (double)after, buf, cap);
}

char *convert_plan_text(const convert_plan *p) {
    text_buf t = {0};
    int n = kvmap_diagram(&p->opt.map, NULL, 0);
    if (n < 0) return NULL;
    char *diagram = malloc((size_t)n + 1);
    if (!diagram) return NULL;
    kvmap_diagram(&p->opt.map, diagram, (size_t)n + 1);
    tb_printf(&t, "%s", diagram);
    free(diagram);
    int n_added = 0, n_mean = 0;
    for (int k = 0; k < p->n_out; k++) {
        n_added += p->out[k].added;
        n_mean += p->out[k].op == CONVERT_MEAN;
    }
    char c1[48], c2[48];
    tb_printf(&t, "KV cache per token (%s): %zu -> %zu bytes (%s)\n", kv_dtype_name(p->cache_dtype),
              p->kv_bytes_src, p->kv_bytes_out,
              change(p->kv_bytes_src, p->kv_bytes_out, c1, sizeof c1));
    if (p->kv_ctx_src)
        tb_printf(&t,
                  "KV cache at %d positions with sliding-window rings (batch %d): %zu -> %zu "
                  "bytes (%s)\n",
                  p->source->cfg.max_position_embeddings, KVMAP_RUN_BATCH, p->kv_ctx_src,
                  p->kv_ctx_out, change(p->kv_ctx_src, p->kv_ctx_out, c2, sizeof c2));
    if (p->opt.map.kind == KVMAP_SWIFTKV) {
        const kv_map *m = &p->opt.map;
        const int L = p->source->cfg.n_layers;
        tb_printf(
            &t,
            "SwiftKV prefill: skips %.1f%% of a prompt token's layer FLOPs (layers %d..%d run only "
            "the K/V projections of %d group leader%s)\n",
            100.0 * model_swiftkv_prefill_saving(&p->source->cfg, m->swiftkv_l, m->swiftkv_g),
            m->swiftkv_l, L - 1, (L - m->swiftkv_l + m->swiftkv_g - 1) / m->swiftkv_g,
            (L - m->swiftkv_l + m->swiftkv_g - 1) / m->swiftkv_g == 1 ? "" : "s");
        tb_printf(&t, "AcrossKV (g=%d): saves %.1f%% of the KV cache%s\n", m->swiftkv_g,
                  100.0 * (1.0 - (double)p->slots_out / L),
                  m->swiftkv_g == 1 ? " (g = 1: SingleInputKV saves compute, not memory)" : "");
    }
    tb_printf(&t, "parameters: %llu -> %llu (%s)\n", (unsigned long long)p->src_params,
              (unsigned long long)p->out_params,
              change(p->src_params, p->out_params, c2, sizeof c2));
    tb_printf(&t, "weights: %llu -> %llu bytes\n", (unsigned long long)p->src_bytes,
              (unsigned long long)p->out_bytes);
    tb_printf(&t, "tensors: %d -> %d (%d dropped, %d added, %d mean-initialised)\n",
              p->source->ckpt.n_tensors, p->n_out, p->n_dropped, n_added, n_mean);
    if (t.oom) {
        free(t.s);
        return NULL;
    }
    return t.s;
}
