/* kvconvert info: a checkpoint folder summarised */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transform/convert.h"
#include "transform/convert_info.h"

int convert_info_load(convert_info *info, const char *dir, kv_error *err) {
    memset(info, 0, sizeof *info);
    convert_source s;
    int rc = convert_source_open(&s, dir, err);
    if (rc) return rc;
    snprintf(info->dir, sizeof info->dir, "%s", dir);
    info->cfg = s.cfg;
    rc = kvmap_from_config(&info->map, &s.cfg, err);
    if (!rc) {
        info->n_tensors = s.ckpt.n_tensors;
        info->n_files = s.ckpt.n_files;
        info->sharded = s.ckpt.sharded;
        for (int k = 0; k < s.ckpt.n_tensors; k++) {
            const st_tensor *t = s.ckpt.tensors[k];
            info->params += t->n_elements;
            info->weight_bytes += t->n_bytes;
            info->bytes_per_dtype[t->dtype] += t->n_bytes;
        }
        info->params_config = hf_config_param_count(&s.cfg);
        kv_dtype t = s.cfg.torch_dtype;
        info->cache_dtype = t == KV_F16 || t == KV_BF16 ? t : KV_F32;
        info->slots = kvmap_n_slots(&info->map);
        info->kv_bytes_per_token = kvmap_cache_bytes_per_token(&info->map, s.cfg.n_kv_heads, s.cfg.head_dim,
                                                               kv_dtype_size(info->cache_dtype));
    }
    convert_source_close(&s);
    return rc;
}

static const char *kind_name(kvmap_kind k) {
    return k == KVMAP_SWIFTKV ? "swiftkv" : k == KVMAP_CROSS ? "cross-layer" : "identity";
}

char *convert_info_text(const convert_info *i) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return NULL;
    const hf_config *c = &i->cfg;
    fprintf(f, "%s: %s (model_type %s)\n", i->dir, c->architecture, c->model_type);
    fprintf(f, "layers %d, hidden %d, ffn %d, heads %d, kv heads %d, head dim %d, vocab %d%s\n", c->n_layers,
            c->hidden_size, c->intermediate_size, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab_size,
            c->tie_word_embeddings ? ", tied embeddings" : "");
    fprintf(f, "parameters: %llu in %d tensors (%d file%s%s); config implies %lld\n", (unsigned long long)i->params,
            i->n_tensors, i->n_files, i->n_files == 1 ? "" : "s", i->sharded ? ", sharded" : "", (long long)i->params_config);
    fprintf(f, "weight bytes: %llu", (unsigned long long)i->weight_bytes);
    for (int t = 0; t < KV_DTYPE_COUNT; t++)
        if (i->bytes_per_dtype[t]) fprintf(f, "; %s %llu", kv_dtype_name((kv_dtype)t), (unsigned long long)i->bytes_per_dtype[t]);
    fprintf(f, "\n");
    char lt[HF_MAX_LAYERS * 5 + 1];
    if (kvmap_layer_types(&i->map, lt, sizeof lt) < 0) lt[0] = 0;
    fprintf(f, "KV map: %s %s (layer_types %s)\n", kind_name(i->map.kind), i->map.name, lt);
    fprintf(f, "KV cache per token (%s): %zu bytes, %d of %d layer slots\n", kv_dtype_name(i->cache_dtype),
            i->kv_bytes_per_token, i->slots, c->n_layers);
    if (fclose(f) != 0) { free(text); return NULL; }
    return text;
}

char *convert_info_json(const convert_info *i) {
    const hf_config *c = &i->cfg;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "dir", i->dir);
    cJSON_AddStringToObject(r, "architecture", c->architecture);
    cJSON_AddStringToObject(r, "model_type", c->model_type);
    cJSON_AddNumberToObject(r, "layers", c->n_layers);
    cJSON_AddNumberToObject(r, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(r, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(r, "heads", c->n_heads);
    cJSON_AddNumberToObject(r, "kv_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(r, "head_dim", c->head_dim);
    cJSON_AddNumberToObject(r, "vocab_size", c->vocab_size);
    cJSON_AddBoolToObject(r, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddNumberToObject(r, "parameters", (double)i->params);
    cJSON_AddNumberToObject(r, "parameters_config", (double)i->params_config);
    cJSON_AddNumberToObject(r, "tensors", i->n_tensors);
    cJSON_AddNumberToObject(r, "files", i->n_files);
    cJSON_AddNumberToObject(r, "weight_bytes", (double)i->weight_bytes);
    cJSON *by = cJSON_AddObjectToObject(r, "bytes_per_dtype");
    for (int t = 0; t < KV_DTYPE_COUNT; t++)
        if (i->bytes_per_dtype[t]) cJSON_AddNumberToObject(by, kv_dtype_name((kv_dtype)t), (double)i->bytes_per_dtype[t]);
    cJSON *m = cJSON_AddObjectToObject(r, "kv_map");
    cJSON_AddStringToObject(m, "kind", kind_name(i->map.kind));
    cJSON_AddStringToObject(m, "name", i->map.name);
    char lt[HF_MAX_LAYERS * 5 + 1];
    if (kvmap_layer_types(&i->map, lt, sizeof lt) >= 0) cJSON_AddStringToObject(m, "layer_types", lt);
    if (i->map.kind == KVMAP_SWIFTKV) {
        cJSON_AddNumberToObject(m, "num_key_value_layers", i->map.swiftkv_l);
        cJSON_AddNumberToObject(m, "key_value_group_size", i->map.swiftkv_g);
    }
    cJSON_AddNumberToObject(r, "kv_cache_slots", i->slots);
    cJSON_AddStringToObject(r, "kv_cache_dtype", kv_dtype_name(i->cache_dtype));
    cJSON_AddNumberToObject(r, "kv_cache_bytes_per_token", (double)i->kv_bytes_per_token);
    char *text = cJSON_Print(r);
    cJSON_Delete(r);
    return text;
}
