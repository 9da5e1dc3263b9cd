/* kvconvert plan -> JSON (the kvforge.json manifest and the tools' --json output) */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/version.h"
#include "transform/convert/convert.h"
#include "transform/convert/model_info.h"

static double fraction(uint64_t before, uint64_t after) {
    if (!before) return 0;
    return round(1e6 * (1.0 - (double)after / (double)before)) / 1e6; /* 6 decimals, stable text */
}

static const char *dtype_arg(int t) {
    return t == KV_F32 ? "f32" : t == KV_F16 ? "f16" : t == KV_BF16 ? "bf16" : "source";
}

static cJSON *recipe_json(const convert_plan *p) {
    const kv_map *m = &p->opt.map;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "kind",
                            m->kind == KVMAP_SWIFTKV ? "swiftkv"
                            : m->kind == KVMAP_CROSS ? "cross-layer"
                                                     : "identity");
    cJSON_AddStringToObject(r, "map", m->name);
    char lt[HF_MAX_LAYERS * 5 + 1];
    if (kvmap_layer_types(m, lt, sizeof lt) >= 0) cJSON_AddStringToObject(r, "layer_types", lt);
    if (m->kind == KVMAP_SWIFTKV) {
        cJSON_AddNumberToObject(r, "num_key_value_layers", m->swiftkv_l);
        cJSON_AddNumberToObject(r, "key_value_group_size", m->swiftkv_g);
        cJSON_AddStringToObject(r, "layout", kvmap_layout_name(p->opt.layout));
        char why[1024];
        if (kvmap_swiftkv_serving_limits(m, p->opt.layout, why, sizeof why) > 0) {
            cJSON *lim = cJSON_AddArrayToObject(r, "serving_limits");
            for (char *line = why, *next; lim && line; line = next) {
                if ((next = strchr(line, '\n'))) *next++ = 0;
                cJSON_AddItemToArray(lim, cJSON_CreateString(line));
            }
        }
    }
    cJSON_AddStringToObject(r, "kv_init", p->opt.kv_init == KV_INIT_MEAN ? "mean" : "target");
    if (p->opt.kv_init == KV_INIT_MEAN)
        cJSON_AddStringToObject(r, "mean_rule",
                                "sum in double over the reading layers in ascending order, / "
                                "count, rounded to F32, then to the output dtype");
    cJSON_AddStringToObject(r, "dtype", dtype_arg(p->opt.out_dtype));
    cJSON_AddNumberToObject(r, "shard_size", (double)p->opt.shard_bytes);
    return r;
}

static cJSON *names_json(const char *const *names, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(names[i]));
    return a;
}

static cJSON *tensors_json(const convert_plan *p) {
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "source", p->source->ckpt.n_tensors);
    cJSON_AddNumberToObject(t, "output", p->n_out);
    size_t cap = (size_t)p->n_out + (size_t)p->n_dropped + HF_MAX_LAYERS;
    const char **names = malloc(cap * sizeof *names);
    if (!names) {
        cJSON_Delete(t);
        return NULL;
    }
    for (int i = 0; i < p->n_dropped; i++) names[i] = p->dropped[i]->name;
    cJSON_AddItemToObject(t, "dropped", names_json(names, p->n_dropped));
    int n = 0;
    for (int i = 0; i < p->n_out; i++)
        if (p->out[i].added) names[n++] = p->out[i].name;
    cJSON_AddItemToObject(t, "added", names_json(names, n));
    cJSON *mean = cJSON_CreateObject();
    for (int i = 0; i < p->n_out; i++) {
        if (p->out[i].op != CONVERT_MEAN) continue;
        for (int k = 0; k < p->out[i].n_src; k++) names[k] = p->out[i].src[k]->name;
        cJSON_AddItemToObject(mean, p->out[i].name, names_json(names, p->out[i].n_src));
    }
    cJSON_AddItemToObject(t, "mean_of", mean);
    free(names);
    return t;
}

char *convert_plan_json(const convert_plan *p, const convert_file_hash *hashes, int n_hashes) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "tool", "kvconvert");
    cJSON_AddStringToObject(root, "kvforge_version", KVFORGE_VERSION_STRING);
    cJSON_AddItemToObject(root, "recipe", recipe_json(p));

    cJSON *src = cJSON_AddObjectToObject(root, "source");
    cJSON_AddStringToObject(src, "dir", p->source->dir);
    cJSON_AddStringToObject(src, "architecture", p->source->cfg.architecture);
    cJSON_AddNumberToObject(src, "layers", p->source->cfg.n_layers);
    if (hashes) {
        cJSON *files = cJSON_AddArrayToObject(src, "files");
        for (int i = 0; i < n_hashes; i++) {
            cJSON *f = cJSON_CreateObject();
            cJSON_AddStringToObject(f, "name", hashes[i].name);
            cJSON_AddNumberToObject(f, "bytes", (double)hashes[i].bytes);
            cJSON_AddStringToObject(f, "sha256", hashes[i].sha256);
            cJSON_AddItemToArray(files, f);
        }
    }
    cJSON *prefill = kvmap_plan_json(&p->opt.map); /* upward maps: LCKV's iteration plan */
    if (prefill) cJSON_AddItemToObject(root, "prefill_plan", prefill);
    cJSON *tensors = tensors_json(p);
    if (tensors) cJSON_AddItemToObject(root, "tensors", tensors);

    cJSON *params = cJSON_AddObjectToObject(root, "parameters");
    cJSON_AddNumberToObject(params, "source", (double)p->src_params);
    cJSON_AddNumberToObject(params, "output", (double)p->out_params);
    cJSON_AddNumberToObject(params, "saving", fraction(p->src_params, p->out_params));
    cJSON *bytes = cJSON_AddObjectToObject(root, "weight_bytes");
    cJSON_AddNumberToObject(bytes, "source", (double)p->src_bytes);
    cJSON_AddNumberToObject(bytes, "output", (double)p->out_bytes);

    cJSON *kv = cJSON_AddObjectToObject(root, "kv_cache");
    cJSON_AddStringToObject(kv, "dtype", kv_dtype_name(p->cache_dtype));
    cJSON_AddNumberToObject(kv, "slots_source", p->slots_src);
    cJSON_AddNumberToObject(kv, "slots_output", p->slots_out);
    cJSON_AddNumberToObject(kv, "bytes_per_token_source", (double)p->kv_bytes_src);
    cJSON_AddNumberToObject(kv, "bytes_per_token_output", (double)p->kv_bytes_out);
    cJSON_AddNumberToObject(kv, "saving", fraction(p->kv_bytes_src, p->kv_bytes_out));
    if (p->kv_ctx_src) { /* sliding windows: what the cache holds at the full context */
        cJSON_AddNumberToObject(kv, "bytes_at_context_source", (double)p->kv_ctx_src);
        cJSON_AddNumberToObject(kv, "bytes_at_context_output", (double)p->kv_ctx_out);
    }
    if (p->opt.map.kind == KVMAP_SWIFTKV) /* share of a prompt token's layer FLOPs prefill skips */
        cJSON_AddNumberToObject(root, "prefill_compute_saving",
                                model_swiftkv_prefill_saving(&p->source->cfg, p->opt.map.swiftkv_l,
                                                             p->opt.map.swiftkv_g));

    char *text = tensors ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    return text;
}
