/* config.json reading for the trainer (fields of hf_config it needs) and student config text. */
#include "transform/train_config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/fileio.h"

#define CONFIG_MAX_BYTES (16u * 1024u * 1024u)

static const cJSON *field(const cJSON *root, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* integer field in [lo, hi]; absent -> def (def < lo means required) */
static int get_int(const cJSON *root, const char *key, int def, int lo, int hi, int *out,
                   const char *label, kv_error *err) {
    const cJSON *v = field(root, key);
    if (!v) {
        if (def < lo) return kv_fail(err, KV_EFORMAT, "%s: field '%s' is missing", label, key);
        *out = def;
        return 0;
    }
    if (cJSON_IsBool(v)) {
        *out = cJSON_IsTrue(v);
    } else if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
               v->valuedouble < lo || v->valuedouble > hi) {
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' must be an integer in [%d, %d]", label,
                       key, lo, hi);
    } else {
        *out = (int)v->valuedouble;
    }
    if (*out < lo || *out > hi)
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' = %d, expected [%d, %d]", label, key,
                       *out, lo, hi);
    return 0;
}

static int get_double(const cJSON *root, const char *key, double def, double *out,
                      const char *label, kv_error *err) {
    const cJSON *v = field(root, key);
    if (!v) {
        if (isnan(def)) return kv_fail(err, KV_EFORMAT, "%s: field '%s' is missing", label, key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' must be a number", label, key);
    *out = v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *root, const char *key, int def, int *out, const char *label,
                    kv_error *err) {
    const cJSON *v = field(root, key);
    if (!v) return *out = def, 0;
    if (!cJSON_IsBool(v))
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' must be true or false", label, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* LCKV "0_0_2_2_4" or a list of integers -> kv_layer_of; a list of strings carries no map */
static int read_layer_types(hf_config *c, const cJSON *lt, const char *label, kv_error *err) {
    int L = c->n_layers, n = 0;
    if (cJSON_IsString(lt)) {
        const char *s = lt->valuestring;
        while (*s) {
            char *end;
            long v = strtol(s, &end, 10);
            if (end == s || v < 0 || v >= L || n >= L || (*end && *end != '_'))
                return kv_fail(err, KV_EFORMAT, "%s: layer_types '%s' is not a map of %d layers",
                               label, lt->valuestring, L);
            c->kv_layer_of[n++] = (int)v;
            s = *end ? end + 1 : end;
        }
    } else if (cJSON_IsArray(lt)) {
        const cJSON *e;
        if (cJSON_GetArraySize(lt) > 0 && cJSON_IsString(cJSON_GetArrayItem(lt, 0))) return 0;
        cJSON_ArrayForEach(e, lt) {
            if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
                e->valuedouble < 0 || e->valuedouble >= L || n >= L)
                return kv_fail(err, KV_EFORMAT, "%s: layer_types is not a map of %d layers",
                               label, L);
            c->kv_layer_of[n++] = (int)e->valuedouble;
        }
    } else {
        return kv_fail(err, KV_EFORMAT, "%s: layer_types must be a string or a list", label);
    }
    if (n != L)
        return kv_fail(err, KV_EFORMAT, "%s: layer_types has %d entries for %d layers", label, n,
                       L);
    c->has_layer_map = 1;
    return 0;
}

static int parse_root(hf_config *c, const cJSON *r, const char *label, kv_error *err) {
    memset(c, 0, sizeof *c);
    const int big = 1 << 30;
    int rc;
    const cJSON *arch = field(r, "architectures"), *mt = field(r, "model_type");
    if (cJSON_IsArray(arch) && cJSON_IsString(cJSON_GetArrayItem(arch, 0)))
        snprintf(c->architecture, sizeof c->architecture, "%s",
                 cJSON_GetArrayItem(arch, 0)->valuestring);
    if (cJSON_IsString(mt)) snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
    if ((rc = get_int(r, "hidden_size", -1, 1, big, &c->hidden_size, label, err)) ||
        (rc = get_int(r, "intermediate_size", -1, 1, big, &c->intermediate_size, label, err)) ||
        (rc = get_int(r, "num_hidden_layers", -1, 1, HF_MAX_LAYERS, &c->n_layers, label, err)) ||
        (rc = get_int(r, "num_attention_heads", -1, 1, big, &c->n_heads, label, err)) ||
        (rc = get_int(r, "num_key_value_heads", c->n_heads, 1, big, &c->n_kv_heads, label,
                      err)) ||
        (rc = get_int(r, "vocab_size", -1, 1, big, &c->vocab_size, label, err)) ||
        (rc = get_int(r, "max_position_embeddings", 2048, 1, big, &c->max_position_embeddings,
                      label, err)))
        return rc;
    if (c->hidden_size % c->n_heads)
        return kv_fail(err, KV_EFORMAT, "%s: hidden_size %d is not a multiple of %d heads", label,
                       c->hidden_size, c->n_heads);
    if ((rc = get_int(r, "head_dim", c->hidden_size / c->n_heads, 2, big, &c->head_dim, label,
                      err)))
        return rc;
    if (c->head_dim % 2)
        return kv_fail(err, KV_EFORMAT, "%s: head_dim %d is odd", label, c->head_dim);
    if (c->n_heads % c->n_kv_heads)
        return kv_fail(err, KV_EFORMAT, "%s: %d heads are not a multiple of %d KV heads", label,
                       c->n_heads, c->n_kv_heads);
    double eps = 0;
    if ((rc = get_double(r, "rms_norm_eps", 1e-6, &eps, label, err)) ||
        (rc = get_double(r, "rope_theta", 10000.0, &c->rope_theta, label, err)) ||
        (rc = get_bool(r, "tie_word_embeddings", 0, &c->tie_word_embeddings, label, err)) ||
        (rc = get_bool(r, "attention_bias", 0, &c->attention_bias, label, err)) ||
        (rc = get_bool(r, "mlp_bias", 0, &c->mlp_bias, label, err)) ||
        (rc = get_int(r, "bos_token_id", -1, -1, big, &c->bos_token_id, label, err)))
        return rc;
    if (!(eps > 0) || c->rope_theta <= 0)
        return kv_fail(err, KV_EFORMAT, "%s: rms_norm_eps and rope_theta must be positive", label);
    c->rms_norm_eps = (float)eps;
    const cJSON *eos = field(r, "eos_token_id");
    if (cJSON_IsNumber(eos)) c->eos_token_ids[c->n_eos++] = (int)eos->valuedouble;
    const cJSON *rs = field(r, "rope_scaling");
    if (rs) {
        const cJSON *t = field(rs, "rope_type");
        if (!t) t = field(rs, "type");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "llama3"))
            return kv_fail(err, KV_EUNSUPPORTED, "%s: rope_scaling: only llama3 is supported",
                           label);
        c->rope_type = HF_ROPE_LLAMA3;
        if ((rc = get_double(rs, "factor", NAN, &c->rope_factor, label, err)) ||
            (rc = get_double(rs, "low_freq_factor", NAN, &c->rope_low_freq_factor, label, err)) ||
            (rc = get_double(rs, "high_freq_factor", NAN, &c->rope_high_freq_factor, label,
                             err)) ||
            (rc = get_int(rs, "original_max_position_embeddings", -1, 1, big,
                          &c->rope_original_max_position, label, err)))
            return rc;
    }
    c->torch_dtype = KV_F32;
    const cJSON *td = field(r, "torch_dtype");
    if (cJSON_IsString(td)) {
        if (!strcmp(td->valuestring, "float16")) c->torch_dtype = KV_F16;
        else if (!strcmp(td->valuestring, "bfloat16")) c->torch_dtype = KV_BF16;
    }
    for (int i = 0; i < c->n_layers; i++) c->kv_layer_of[i] = i;
    const cJSON *lt = field(r, "layer_types");
    if (lt && (rc = read_layer_types(c, lt, label, err))) return rc;
    if ((rc = get_bool(r, "swiftkv", 0, &c->swiftkv, label, err))) return rc;
    if (c->swiftkv &&
        ((rc = get_int(r, "num_key_value_layers", -1, 1, c->n_layers, &c->swiftkv_layers, label,
                       err)) ||
         (rc = get_int(r, "key_value_group_size", 1, 1, c->n_layers, &c->swiftkv_group, label,
                       err))))
        return rc;
    return 0;
}

int kvt_config_parse(hf_config *c, const char *json, const char *label, kv_error *err) {
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return kv_fail(err, KV_EFORMAT, "%s: not a JSON object", label);
    }
    int rc = parse_root(c, root, label, err);
    cJSON_Delete(root);
    return rc;
}

int kvt_config_load(hf_config *c, const char *path, kv_error *err) {
    char *text = NULL;
    size_t n = 0;
    int rc = kv_read_file(path, &text, &n, CONFIG_MAX_BYTES, err);
    if (rc) return rc;
    rc = kvt_config_parse(c, text, path, err);
    free(text);
    return rc;
}

static void set_item(cJSON *root, const char *key, cJSON *value) {
    if (cJSON_HasObjectItem(root, key)) cJSON_ReplaceItemInObjectCaseSensitive(root, key, value);
    else cJSON_AddItemToObject(root, key, value);
}

int kvt_config_student_json(const char *src_json, const kv_map *map, char **out, kv_error *err) {
    *out = NULL;
    cJSON *root = cJSON_Parse(src_json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return kv_fail(err, KV_EFORMAT, "config.json: not a JSON object");
    }
    cJSON_DeleteItemFromObjectCaseSensitive(root, "layer_types");
    cJSON_DeleteItemFromObjectCaseSensitive(root, "swiftkv");
    cJSON_DeleteItemFromObjectCaseSensitive(root, "num_key_value_layers");
    cJSON_DeleteItemFromObjectCaseSensitive(root, "key_value_group_size");
    if (map->kind == KVMAP_SWIFTKV) {
        set_item(root, "model_type", cJSON_CreateString("llama_swiftkv"));
        const char *arch = "LlamaSwiftKVForCausalLM";
        set_item(root, "architectures", cJSON_CreateStringArray(&arch, 1));
        cJSON_AddItemToObject(root, "swiftkv", cJSON_CreateBool(1));
        cJSON_AddItemToObject(root, "num_key_value_layers", cJSON_CreateNumber(map->swiftkv_l));
        cJSON_AddItemToObject(root, "key_value_group_size", cJSON_CreateNumber(map->swiftkv_g));
    } else if (map->kind == KVMAP_CROSS) {
        char types[HF_MAX_LAYERS * 6];
        int n = kvmap_layer_types(map, types, sizeof types);
        if (n < 0 || (size_t)n >= sizeof types) {
            cJSON_Delete(root);
            return kv_fail(err, KV_EINVAL, "config.json: layer map does not fit");
        }
        cJSON_AddItemToObject(root, "layer_types", cJSON_CreateString(types));
    }
    *out = cJSON_Print(root);
    cJSON_Delete(root);
    if (!*out) return kv_fail(err, KV_ENOMEM, "config.json: out of memory");
    return 0;
}
