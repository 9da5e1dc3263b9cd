/* config.json -> hf_config: every field type-checked, sizes range-checked, errors name the field */
#include "formats/hfconfig.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/fileio.h"

#define MAX_DIM (1 << 24)

static const cJSON *field(const cJSON *root, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    return cJSON_IsNull(v) ? NULL : v;
}

/* whole number in [lo, hi]; absent -> *out = dflt unless required */
static int get_int(const cJSON *root, const char *name, int required, long lo, long hi, int dflt, int *out,
                   const char *label, kv_error *err) {
    const cJSON *v = field(root, name);
    if (!v) {
        if (required) return kv_fail(err, KV_EFORMAT, "%s: missing required field '%s'", label, name);
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(v)) return kv_fail(err, KV_EFORMAT, "%s: field '%s' must be an integer", label, name);
    double d = v->valuedouble;
    if (floor(d) != d) return kv_fail(err, KV_EFORMAT, "%s: field '%s' = %g is not a whole number", label, name, d);
    if (d < (double)lo || d > (double)hi) return kv_fail(err, KV_EFORMAT, "%s: field '%s' = %g outside [%ld, %ld]", label, name, d, lo, hi);
    *out = (int)d;
    return 0;
}

static int get_double(const cJSON *root, const char *name, int required, double dflt, double *out, const char *label, kv_error *err) {
    const cJSON *v = field(root, name);
    if (!v) {
        if (required) return kv_fail(err, KV_EFORMAT, "%s: missing required field '%s'", label, name);
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return kv_fail(err, KV_EFORMAT, "%s: field '%s' must be a number", label, name);
    *out = v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *root, const char *name, int dflt, int *out, const char *label, kv_error *err) {
    const cJSON *v = field(root, name);
    if (!v) { *out = dflt; return 0; }
    if (!cJSON_IsBool(v)) return kv_fail(err, KV_EFORMAT, "%s: field '%s' must be true or false", label, name);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int parse_rope_scaling(hf_config *c, const cJSON *root, const char *label, kv_error *err) {
    const cJSON *rs = field(root, "rope_scaling");
    c->rope_type = HF_ROPE_NONE;
    if (!rs) return 0;
    if (!cJSON_IsObject(rs)) return kv_fail(err, KV_EFORMAT, "%s: field 'rope_scaling' must be null or an object", label);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!type) type = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!cJSON_IsString(type)) return kv_fail(err, KV_EFORMAT, "%s: rope_scaling.rope_type missing or not a string", label);
    if (strcmp(type->valuestring, "default") == 0) return 0;
    if (strcmp(type->valuestring, "llama3") != 0)
        return kv_fail(err, KV_EUNSUPPORTED, "%s: rope_scaling.rope_type '%s' is not supported (only llama3)", label, type->valuestring);
    c->rope_type = HF_ROPE_LLAMA3;
    int rc;
    if ((rc = get_double(rs, "factor", 1, 0, &c->rope_factor, label, err)) ||
        (rc = get_double(rs, "low_freq_factor", 1, 0, &c->rope_low_freq_factor, label, err)) ||
        (rc = get_double(rs, "high_freq_factor", 1, 0, &c->rope_high_freq_factor, label, err)) ||
        (rc = get_int(rs, "original_max_position_embeddings", 1, 1, 1 << 30, 0, &c->rope_original_max_position, label, err)))
        return kv_wrap(err, "rope_scaling");
    if (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) || !(c->rope_high_freq_factor > c->rope_low_freq_factor))
        return kv_fail(err, KV_EFORMAT, "%s: rope_scaling: need factor > 0 and high_freq_factor > low_freq_factor > 0", label);
    return 0;
}

static int parse_token_ids(hf_config *c, const cJSON *root, const char *label, kv_error *err) {
    const cJSON *bos = field(root, "bos_token_id"), *eos = field(root, "eos_token_id");
    c->bos_token_id = -1;
    if (bos) {
        if (cJSON_IsArray(bos)) bos = cJSON_GetArrayItem(bos, 0);
        if (!cJSON_IsNumber(bos) || floor(bos->valuedouble) != bos->valuedouble || bos->valuedouble < 0 || bos->valuedouble >= c->vocab_size)
            return kv_fail(err, KV_EFORMAT, "%s: field 'bos_token_id' must be a token id below vocab_size %d", label, c->vocab_size);
        c->bos_token_id = (int)bos->valuedouble;
    }
    c->n_eos = 0;
    if (!eos) return 0;
    int n = cJSON_IsArray(eos) ? cJSON_GetArraySize(eos) : 1;
    if (n > HF_MAX_EOS) return kv_fail(err, KV_EFORMAT, "%s: field 'eos_token_id' lists more than %d ids", label, HF_MAX_EOS);
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_IsArray(eos) ? cJSON_GetArrayItem(eos, i) : eos;
        if (!cJSON_IsNumber(e) || floor(e->valuedouble) != e->valuedouble || e->valuedouble < 0 || e->valuedouble >= c->vocab_size)
            return kv_fail(err, KV_EFORMAT, "%s: field 'eos_token_id' must be token ids below vocab_size %d", label, c->vocab_size);
        c->eos_token_ids[c->n_eos++] = (int)e->valuedouble;
    }
    return 0;
}

/* layer_types: "0_0_2_2_4" or [0, 0, 2, 2, 4]; a list of strings ("full_attention") carries no map */
static int parse_layer_map(hf_config *c, const cJSON *root, const char *label, kv_error *err) {
    const cJSON *lt = field(root, "layer_types");
    c->has_layer_map = 0;
    for (int i = 0; i < c->n_layers; i++) c->kv_layer_of[i] = i;
    if (!lt) return 0;
    int n = 0;
    if (cJSON_IsString(lt)) {
        const char *p = lt->valuestring;
        while (*p) {
            char *end;
            if (*p < '0' || *p > '9') return kv_fail(err, KV_EFORMAT, "%s: layer_types '%s' is not integers joined by '_'", label, lt->valuestring);
            long v = strtol(p, &end, 10);
            if (n >= c->n_layers) return kv_fail(err, KV_EFORMAT, "%s: layer_types has more than num_hidden_layers=%d entries", label, c->n_layers);
            if (v >= c->n_layers) return kv_fail(err, KV_EFORMAT, "%s: layer_types entry %d = %ld is not a layer (L=%d)", label, n, v, c->n_layers);
            c->kv_layer_of[n++] = (int)v;
            p = end;
            if (*p == '_') { p++; if (!*p) return kv_fail(err, KV_EFORMAT, "%s: layer_types ends with '_'", label); }
            else if (*p) return kv_fail(err, KV_EFORMAT, "%s: layer_types '%s' is not integers joined by '_'", label, lt->valuestring);
        }
    } else if (cJSON_IsArray(lt)) {
        const cJSON *first = cJSON_GetArrayItem(lt, 0);
        if (cJSON_IsString(first)) return 0; /* attention kinds, not a KV map */
        const cJSON *e;
        cJSON_ArrayForEach(e, lt) {
            if (!cJSON_IsNumber(e) || floor(e->valuedouble) != e->valuedouble || e->valuedouble < 0 || e->valuedouble >= c->n_layers)
                return kv_fail(err, KV_EFORMAT, "%s: layer_types entry %d is not a layer index below %d", label, n, c->n_layers);
            if (n >= c->n_layers) return kv_fail(err, KV_EFORMAT, "%s: layer_types has more than num_hidden_layers=%d entries", label, c->n_layers);
            c->kv_layer_of[n++] = (int)e->valuedouble;
        }
    } else {
        return kv_fail(err, KV_EFORMAT, "%s: field 'layer_types' must be a string or a list", label);
    }
    if (n != c->n_layers) return kv_fail(err, KV_EFORMAT, "%s: layer_types has %d entries but num_hidden_layers is %d", label, n, c->n_layers);
    for (int i = 0; i < n; i++)
        if (c->kv_layer_of[c->kv_layer_of[i]] != c->kv_layer_of[i])
            return kv_fail(err, KV_EFORMAT, "%s: layer_types: layer %d reads layer %d, which is not a KV layer", label, i, c->kv_layer_of[i]);
    c->has_layer_map = 1;
    return 0;
}

int hf_config_parse(hf_config *c, const char *json, const char *label, kv_error *err) {
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_Parse(json);
    if (!root) return kv_fail(err, KV_EFORMAT, "%s: not valid JSON", label);
    int rc = 0;
    if (!cJSON_IsObject(root)) { rc = kv_fail(err, KV_EFORMAT, "%s: not a JSON object", label); goto done; }
    for (const cJSON *a = root->child; a; a = a->next)
        for (const cJSON *b = root->child; b != a; b = b->next)
            if (strcmp(a->string, b->string) == 0) { rc = kv_fail(err, KV_EFORMAT, "%s: field '%s' appears twice", label, a->string); goto done; }
    const cJSON *arch = field(root, "architectures"), *mt = field(root, "model_type");
    if (arch) {
        const cJSON *a0 = cJSON_IsArray(arch) ? cJSON_GetArrayItem(arch, 0) : NULL;
        if (!cJSON_IsString(a0)) { rc = kv_fail(err, KV_EFORMAT, "%s: field 'architectures' must be a list of names", label); goto done; }
        snprintf(c->architecture, sizeof c->architecture, "%s", a0->valuestring);
    }
    if (mt) {
        if (!cJSON_IsString(mt)) { rc = kv_fail(err, KV_EFORMAT, "%s: field 'model_type' must be a string", label); goto done; }
        snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
    }
    if (!arch && !mt) { rc = kv_fail(err, KV_EFORMAT, "%s: missing required field 'architectures' (or 'model_type')", label); goto done; }
    if (!c->architecture[0]) snprintf(c->architecture, sizeof c->architecture, "%s", strcmp(c->model_type, "llama_swiftkv") == 0 ? "LlamaSwiftKVForCausalLM" : strcmp(c->model_type, "llama") == 0 ? "LlamaForCausalLM" : c->model_type);
    if (strcmp(c->architecture, "LlamaForCausalLM") != 0 && strcmp(c->architecture, "LlamaSwiftKVForCausalLM") != 0) {
        rc = kv_fail(err, KV_EUNSUPPORTED, "%s: architecture '%s' is not supported (LlamaForCausalLM, LlamaSwiftKVForCausalLM)", label, c->architecture);
        goto done;
    }
    if (!c->model_type[0]) snprintf(c->model_type, sizeof c->model_type, "%s", strcmp(c->architecture, "LlamaForCausalLM") == 0 ? "llama" : "llama_swiftkv");
    if (strcmp(c->model_type, "llama") != 0 && strcmp(c->model_type, "llama_swiftkv") != 0) {
        rc = kv_fail(err, KV_EUNSUPPORTED, "%s: model_type '%s' is not supported (llama, llama_swiftkv)", label, c->model_type);
        goto done;
    }
    if ((rc = get_int(root, "hidden_size", 1, 1, MAX_DIM, 0, &c->hidden_size, label, err)) ||
        (rc = get_int(root, "intermediate_size", 1, 1, MAX_DIM, 0, &c->intermediate_size, label, err)) ||
        (rc = get_int(root, "num_hidden_layers", 1, 1, HF_MAX_LAYERS, 0, &c->n_layers, label, err)) ||
        (rc = get_int(root, "num_attention_heads", 1, 1, 65536, 0, &c->n_heads, label, err)) ||
        (rc = get_int(root, "num_key_value_heads", 0, 1, 65536, c->n_heads, &c->n_kv_heads, label, err)) ||
        (rc = get_int(root, "vocab_size", 1, 1, 1 << 28, 0, &c->vocab_size, label, err)) ||
        (rc = get_int(root, "max_position_embeddings", 0, 1, 1 << 30, 2048, &c->max_position_embeddings, label, err)))
        goto done;
    if (c->n_heads % c->n_kv_heads) {
        rc = kv_fail(err, KV_EFORMAT, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", label, c->n_heads, c->n_kv_heads);
        goto done;
    }
    int dflt_hd = c->hidden_size / c->n_heads;
    if ((rc = get_int(root, "head_dim", 0, 1, 65536, dflt_hd, &c->head_dim, label, err))) goto done;
    if (c->head_dim < 2 || c->head_dim % 2) { rc = kv_fail(err, KV_EFORMAT, "%s: head_dim %d must be even and at least 2", label, c->head_dim); goto done; }
    if ((long long)c->n_heads * c->head_dim > MAX_DIM) { rc = kv_fail(err, KV_EFORMAT, "%s: num_attention_heads x head_dim too large", label); goto done; }
    double eps, theta;
    if ((rc = get_double(root, "rms_norm_eps", 0, 1e-6, &eps, label, err)) ||
        (rc = get_double(root, "rope_theta", 0, 10000.0, &theta, label, err)))
        goto done;
    if (!(eps > 0) || eps > 1) { rc = kv_fail(err, KV_EFORMAT, "%s: field 'rms_norm_eps' = %g must be in (0, 1]", label, eps); goto done; }
    if (!(theta > 0)) { rc = kv_fail(err, KV_EFORMAT, "%s: field 'rope_theta' must be positive", label); goto done; }
    c->rms_norm_eps = (float)eps;
    c->rope_theta = theta;
    if ((rc = parse_rope_scaling(c, root, label, err)) ||
        (rc = get_bool(root, "tie_word_embeddings", 0, &c->tie_word_embeddings, label, err)) ||
        (rc = get_bool(root, "attention_bias", 0, &c->attention_bias, label, err)) ||
        (rc = get_bool(root, "mlp_bias", 0, &c->mlp_bias, label, err)) ||
        (rc = parse_token_ids(c, root, label, err)))
        goto done;
    const cJSON *hidden_act = field(root, "hidden_act");
    if (hidden_act && (!cJSON_IsString(hidden_act) || strcmp(hidden_act->valuestring, "silu") != 0)) {
        rc = kv_fail(err, KV_EUNSUPPORTED, "%s: hidden_act must be \"silu\"", label);
        goto done;
    }
    const cJSON *td = field(root, "torch_dtype");
    if (!td) td = field(root, "dtype");
    c->torch_dtype = KV_F32;
    if (td) {
        if (!cJSON_IsString(td)) { rc = kv_fail(err, KV_EFORMAT, "%s: field 'torch_dtype' must be a string", label); goto done; }
        if (strcmp(td->valuestring, "float32") == 0) c->torch_dtype = KV_F32;
        else if (strcmp(td->valuestring, "float16") == 0) c->torch_dtype = KV_F16;
        else if (strcmp(td->valuestring, "bfloat16") == 0) c->torch_dtype = KV_BF16;
        else { rc = kv_fail(err, KV_EUNSUPPORTED, "%s: torch_dtype '%s' is not supported (float32, float16, bfloat16)", label, td->valuestring); goto done; }
    }
    if ((rc = parse_layer_map(c, root, label, err))) goto done;
    if ((rc = get_bool(root, "swiftkv", 0, &c->swiftkv, label, err))) goto done;
    if (strcmp(c->model_type, "llama_swiftkv") == 0 && !field(root, "swiftkv")) c->swiftkv = 1;
    if (c->swiftkv) {
        if (c->has_layer_map) { rc = kv_fail(err, KV_EFORMAT, "%s: both swiftkv and an integer layer_types map", label); goto done; }
        if ((rc = get_int(root, "num_key_value_layers", 1, 1, c->n_layers - 1, 0, &c->swiftkv_layers, label, err)) ||
            (rc = get_int(root, "key_value_group_size", 0, 1, c->n_layers, 1, &c->swiftkv_group, label, err)))
            goto done;
        if ((c->n_layers - c->swiftkv_layers) % c->swiftkv_group) {
            rc = kv_fail(err, KV_EFORMAT, "%s: (num_hidden_layers %d - num_key_value_layers %d) is not a multiple of key_value_group_size %d",
                         label, c->n_layers, c->swiftkv_layers, c->swiftkv_group);
            goto done;
        }
    }
done:
    cJSON_Delete(root);
    return rc;
}

int hf_config_load(hf_config *c, const char *path, kv_error *err) {
    char *text;
    int rc = kv_read_file(path, &text, NULL, HF_MAX_CONFIG_BYTES, err);
    if (rc) return rc;
    rc = hf_config_parse(c, text, path, err);
    free(text);
    return rc;
}

int hf_config_swiftkv_leader(const hf_config *c, int layer) {
    return c->swiftkv && layer >= c->swiftkv_layers && (layer - c->swiftkv_layers) % c->swiftkv_group == 0;
}

int hf_config_is_kv_layer(const hf_config *c, int layer) {
    if (c->swiftkv) return layer < c->swiftkv_layers || hf_config_swiftkv_leader(c, layer);
    return !c->has_layer_map || c->kv_layer_of[layer] == layer;
}

int hf_config_kv_slots(const hf_config *c) {
    int n = 0;
    for (int i = 0; i < c->n_layers; i++) n += hf_config_is_kv_layer(c, i);
    return n;
}

int64_t hf_config_param_count(const hf_config *c) {
    int64_t H = c->hidden_size, F = c->intermediate_size, q = (int64_t)c->n_heads * c->head_dim,
            kv = (int64_t)c->n_kv_heads * c->head_dim, V = c->vocab_size;
    int64_t total = V * H + H + (c->tie_word_embeddings ? 0 : V * H);
    if (c->swiftkv) total += H; /* norm_swiftkv */
    for (int i = 0; i < c->n_layers; i++) {
        total += 2 * H + q * H + H * q + 3 * H * F + (c->attention_bias ? q + H : 0) + (c->mlp_bias ? 2 * F + H : 0);
        if (hf_config_is_kv_layer(c, i)) total += 2 * kv * H + (c->attention_bias ? 2 * kv : 0);
    }
    return total;
}

int hf_config_layer_map_string(const hf_config *c, char *out, size_t cap, kv_error *err) {
    size_t len = 0;
    for (int i = 0; i < c->n_layers; i++) {
        int n = snprintf(out + len, cap > len ? cap - len : 0, i ? "_%d" : "%d", c->has_layer_map ? c->kv_layer_of[i] : i);
        if (n < 0 || len + (size_t)n >= cap) return kv_fail(err, KV_EINVAL, "layer map string does not fit %zu bytes", cap);
        len += (size_t)n;
    }
    return 0;
}

const char *hf_torch_dtype_name(kv_dtype t) {
    return t == KV_F32 ? "float32" : t == KV_F16 ? "float16" : t == KV_BF16 ? "bfloat16" : NULL;
}

static void set_item(cJSON *root, const char *name, cJSON *value) {
    if (cJSON_GetObjectItemCaseSensitive(root, name)) cJSON_ReplaceItemInObjectCaseSensitive(root, name, value);
    else cJSON_AddItemToObject(root, name, value);
}

int hf_config_write_json(const hf_config *c, const char *src_json, const char *label, char **out_json, kv_error *err) {
    *out_json = NULL;
    cJSON *root = cJSON_Parse(src_json);
    if (!cJSON_IsObject(root)) { cJSON_Delete(root); return kv_fail(err, KV_EFORMAT, "%s: not a JSON object", label); }
    char map[HF_MAX_LAYERS * 5 + 1];
    int rc = 0;
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    int lt_is_kinds = cJSON_IsArray(lt) && cJSON_IsString(cJSON_GetArrayItem(lt, 0));
    if (c->has_layer_map) {
        if ((rc = hf_config_layer_map_string(c, map, sizeof map, err))) goto done;
        set_item(root, "layer_types", cJSON_CreateString(map));
    } else if (lt && !lt_is_kinds) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, "layer_types");
    }
    if (c->swiftkv) {
        set_item(root, "model_type", cJSON_CreateString("llama_swiftkv"));
        const char *arch[] = {"LlamaSwiftKVForCausalLM"};
        set_item(root, "architectures", cJSON_CreateStringArray(arch, 1));
        set_item(root, "swiftkv", cJSON_CreateTrue());
        set_item(root, "num_key_value_layers", cJSON_CreateNumber(c->swiftkv_layers));
        set_item(root, "key_value_group_size", cJSON_CreateNumber(c->swiftkv_group));
    } else {
        if (cJSON_GetObjectItemCaseSensitive(root, "model_type")) set_item(root, "model_type", cJSON_CreateString("llama"));
        const char *arch[] = {"LlamaForCausalLM"};
        set_item(root, "architectures", cJSON_CreateStringArray(arch, 1));
        cJSON_DeleteItemFromObjectCaseSensitive(root, "swiftkv");
        cJSON_DeleteItemFromObjectCaseSensitive(root, "num_key_value_layers");
        cJSON_DeleteItemFromObjectCaseSensitive(root, "key_value_group_size");
    }
    const char *dt = hf_torch_dtype_name(c->torch_dtype);
    if (!dt) { rc = kv_fail(err, KV_EINVAL, "%s: output dtype must be F32, F16 or BF16", label); goto done; }
    set_item(root, "torch_dtype", cJSON_CreateString(dt));
    if (cJSON_GetObjectItemCaseSensitive(root, "dtype")) set_item(root, "dtype", cJSON_CreateString(dt));
    char *text = cJSON_Print(root);
    if (!text) { rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label); goto done; }
    hf_config check;
    if ((rc = hf_config_parse(&check, text, label, err))) { free(text); goto done; }
    *out_json = text;
done:
    cJSON_Delete(root);
    return rc;
}
