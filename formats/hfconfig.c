#include "formats/hfconfig.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "formats/hfwindow.h"
#include "formats/json_field.h"

#define ARCH_LLAMA            "LlamaForCausalLM"
#define ARCH_SWIFTKV          "LlamaSwiftKVForCausalLM"
#define ARCH_LCKV             "LCKVLlamaForCausalLM"
#define ARCH_MISTRAL          "MistralForCausalLM"
#define ARCH_QWEN2            "Qwen2ForCausalLM"
#define ARCH_QWEN2_SWIFTKV    "Qwen2SwiftKVForCausalLM"
#define TYPE_LLAMA            "llama"
#define TYPE_SWIFTKV          "llama_swiftkv"
#define TYPE_LCKV             "lckv-llama"
#define TYPE_MISTRAL          "mistral"
#define TYPE_QWEN2            "qwen2"
#define TYPE_QWEN2_SWIFTKV    "qwen2_swiftkv"
#define LCKV_DEFAULT_FORWARD  7 /* LCKV's m */
#define LCKV_DEFAULT_BACKWARD 2 /* LCKV's b */

/* the schemas kvforge reads: 0 Llama, 1 SwiftKV (Snowflake), 2 LCKV (whyNLP), 3 Mistral,
 * 4 Qwen2, 5 Qwen2 SwiftKV (Snowflake's ArcticTraining) */
enum { S_LLAMA, S_SWIFTKV, S_LCKV, S_MISTRAL, S_QWEN2, S_QWEN2_SWIFTKV, N_SCHEMAS };
static const char *const arch_names[] = {ARCH_LLAMA,   ARCH_SWIFTKV, ARCH_LCKV,
                                         ARCH_MISTRAL, ARCH_QWEN2,   ARCH_QWEN2_SWIFTKV};
static const char *const type_names[] = {TYPE_LLAMA,   TYPE_SWIFTKV, TYPE_LCKV,
                                         TYPE_MISTRAL, TYPE_QWEN2,   TYPE_QWEN2_SWIFTKV};
static const hf_family schema_family[] = {HF_FAMILY_LLAMA,   HF_FAMILY_LLAMA, HF_FAMILY_LLAMA,
                                          HF_FAMILY_MISTRAL, HF_FAMILY_QWEN2, HF_FAMILY_QWEN2};
#define READ_ARCHS                                                                                 \
    ARCH_LLAMA ", " ARCH_LCKV ", " ARCH_SWIFTKV ", " ARCH_MISTRAL ", " ARCH_QWEN2                  \
               " and " ARCH_QWEN2_SWIFTKV
#define READ_TYPES                                                                                 \
    TYPE_LLAMA ", " TYPE_LCKV ", " TYPE_SWIFTKV ", " TYPE_MISTRAL ", " TYPE_QWEN2                  \
               " and " TYPE_QWEN2_SWIFTKV

static int schema_of(const char *name, const char *const *names) {
    for (int k = 0; k < N_SCHEMAS; k++)
        if (strcmp(name, names[k]) == 0) return k;
    return -1;
}

static int is_swiftkv_arch(const char *arch) {
    return strcmp(arch, ARCH_SWIFTKV) == 0 || strcmp(arch, ARCH_QWEN2_SWIFTKV) == 0;
}

/* ---- sections ---- */

static int parse_architecture(hf_config *c, const cJSON *root, const char *label, kv_error *err) {
    const char *arch = NULL, *type = NULL;
    const cJSON *archs = json_field(root, "architectures");
    if (archs) {
        if (!cJSON_IsArray(archs) || cJSON_GetArraySize(archs) < 1)
            return kv_fail(err, KV_EFORMAT,
                           "%s: field 'architectures' is %s, expected a non-empty list of strings",
                           label, cJSON_IsArray(archs) ? "an empty list" : json_kind(archs));
        const cJSON *first = cJSON_GetArrayItem(archs, 0);
        if (!cJSON_IsString(first))
            return kv_fail(err, KV_EFORMAT, "%s: field 'architectures[0]' is %s, expected a string",
                           label, json_kind(first));
        arch = first->valuestring;
        if (schema_of(arch, arch_names) < 0)
            return kv_fail(err, KV_EUNSUPPORTED,
                           "%s: architecture '%.200s' is not supported (kvforge reads " READ_ARCHS
                           ")",
                           label, arch);
    }
    int rc = json_get_string(root, label, "model_type", sizeof c->model_type, &type, err);
    if (rc) return rc;
    if (type && schema_of(type, type_names) < 0)
        return kv_fail(err, KV_EUNSUPPORTED,
                       "%s: model_type '%s' is not supported (kvforge reads " READ_TYPES ")", label,
                       type);
    if (!arch && !type)
        return kv_fail(err, KV_EFORMAT, "%s: missing field 'architectures' (and 'model_type')",
                       label);
    int kind = arch ? schema_of(arch, arch_names) : schema_of(type, type_names);
    if (!type) type = type_names[kind];
    if (!arch) arch = arch_names[kind];
    if (kind != schema_of(type, type_names))
        return kv_fail(err, KV_EFORMAT, "%s: architecture '%s' does not match model_type '%s'",
                       label, arch, type);
    snprintf(c->architecture, sizeof c->architecture, "%s", arch);
    snprintf(c->model_type, sizeof c->model_type, "%s", type);
    c->family = schema_family[kind];
    return 0;
}

/* Biases: Qwen2 has q/k/v biases and no o_proj or MLP bias (Qwen2Attention / Qwen2MLP),
 * whatever attention_bias says. (Windows: hf_parse_windows, once the map is read.) */
static int parse_family(hf_config *c, const cJSON *root, const char *label, kv_error *err) {
    (void)root;
    c->o_bias = c->attention_bias;
    if (c->family == HF_FAMILY_QWEN2) {
        if (c->mlp_bias)
            return kv_fail(err, KV_EFORMAT,
                           "%s: field 'mlp_bias' is true, but Qwen2's MLP has no biases", label);
        c->attention_bias = 1; /* q/k/v */
        c->o_bias = 0;
    }
    return 0;
}

static int parse_sizes(hf_config *c, const cJSON *root, const char *label, kv_error *err) {
    int rc;
    if ((rc = json_get_int(root, label, "hidden_size", 1, 0, 1, INT_MAX, &c->hidden_size, err)) ||
        (rc = json_get_int(root, label, "intermediate_size", 1, 0, 1, INT_MAX,
                           &c->intermediate_size, err)) ||
        (rc =
             json_get_int(root, label, "num_hidden_layers", 1, 0, 1, INT_MAX, &c->n_layers, err)) ||
        (rc = json_get_int(root, label, "num_attention_heads", 1, 0, 1, INT_MAX, &c->n_heads,
                           err)) ||
        (rc = json_get_int(root, label, "num_key_value_heads", 0, c->n_heads, 1, INT_MAX,
                           &c->n_kv_heads, err)) ||
        (rc = json_get_int(root, label, "vocab_size", 1, 0, 1, INT_MAX, &c->vocab_size, err)) ||
        (rc = json_get_int(root, label, "max_position_embeddings", 0, 2048, 1, INT_MAX,
                           &c->max_position_embeddings, err)))
        return rc;
    if (c->n_layers > HF_MAX_LAYERS)
        return kv_fail(err, KV_EUNSUPPORTED,
                       "%s: field 'num_hidden_layers' is %d, more than the %d supported", label,
                       c->n_layers, HF_MAX_LAYERS);
    if (c->n_heads % c->n_kv_heads != 0)
        return kv_fail(err, KV_EFORMAT,
                       "%s: field 'num_attention_heads' (%d) is not a multiple of "
                       "'num_key_value_heads' (%d)",
                       label, c->n_heads, c->n_kv_heads);
    if (json_field(root, "head_dim")) {
        if ((rc = json_get_int(root, label, "head_dim", 1, 0, 1, INT_MAX, &c->head_dim, err)))
            return rc;
    } else {
        if (c->hidden_size % c->n_heads != 0)
            return kv_fail(err, KV_EFORMAT,
                           "%s: field 'hidden_size' (%d) is not a multiple of "
                           "'num_attention_heads' (%d) and 'head_dim' is absent",
                           label, c->hidden_size, c->n_heads);
        c->head_dim = c->hidden_size / c->n_heads;
    }
    if (c->head_dim % 2 != 0)
        return kv_fail(err, KV_EFORMAT, "%s: field 'head_dim' is %d, RoPE needs an even size",
                       label, c->head_dim);
    int q_rows;
    if (__builtin_mul_overflow(c->n_heads, c->head_dim, &q_rows))
        return kv_fail(err, KV_ENOMEM,
                       "%s: fields 'num_attention_heads' x 'head_dim' (%d x %d) overflow", label,
                       c->n_heads, c->head_dim);
    return 0;
}

/* the keys rope_scaling may hold for each kind (besides rope_type / type) */
static const char *const rope_keys[][9] = {
    [KV_ROPE_LLAMA3] = {"factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings"},
    [KV_ROPE_LINEAR] = {"factor"},
    [KV_ROPE_DYNAMIC] = {"factor", "original_max_position_embeddings"},
    [KV_ROPE_YARN] = {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                      "mscale", "mscale_all_dim", "attention_factor", "truncate"},
    [KV_ROPE_LONGROPE] = {"short_factor", "long_factor", "factor", "attention_factor",
                          "original_max_position_embeddings"},
};

static int rope_key_known(kv_rope_scaling kind, const char *key) {
    if (strcmp(key, "rope_type") == 0 || strcmp(key, "type") == 0) return 1;
    for (int k = 0; k < 9 && rope_keys[kind][k]; k++)
        if (strcmp(key, rope_keys[kind][k]) == 0) return 1;
    return 0;
}

/* rope_scaling.NAME: a finite number >= lo (lo_open: > lo); dflt when absent or null */
static int rope_number(const cJSON *rs, const char *label, const char *name, double lo, int lo_open,
                       double dflt, double *out, kv_error *err) {
    const cJSON *it = json_field(rs, name);
    *out = dflt;
    if (!it) return 0;
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) ||
        (lo_open ? !(it->valuedouble > lo) : !(it->valuedouble >= lo)))
        return kv_fail(
            err, KV_EFORMAT, "%s: field 'rope_scaling.%s' is %s, expected a number %s %g", label,
            name, cJSON_IsNumber(it) ? "out of range" : json_kind(it), lo_open ? ">" : ">=", lo);
    *out = it->valuedouble;
    return 0;
}

static int rope_required(const cJSON *rs, const char *label, const char *name, kv_error *err) {
    if (json_field(rs, name)) return 0;
    return kv_fail(err, KV_EFORMAT, "%s: missing field 'rope_scaling.%s'", label, name);
}

/* rope_scaling.original_max_position_embeddings (else the top-level field of that name, else
 * max_position_embeddings), an integer >= 1 */
static int rope_original_max(const cJSON *root, const cJSON *rs, const char *label, int dflt,
                             int *out, kv_error *err) {
    const cJSON *it = json_field(rs, "original_max_position_embeddings");
    const char *name = "rope_scaling.original_max_position_embeddings";
    if (!it) {
        it = json_field(root, "original_max_position_embeddings");
        name = "original_max_position_embeddings";
    }
    *out = dflt;
    return it ? json_number_int(it, label, name, 1, INT_MAX, out, err) : 0;
}

/* longrope's short_factor / long_factor: numbers > 0, head_dim/2 of them */
static int rope_factor_list(const cJSON *rs, const char *label, const char *name, int want,
                            double *out, kv_error *err) {
    const cJSON *it = json_field(rs, name);
    if (!it) return kv_fail(err, KV_EFORMAT, "%s: missing field 'rope_scaling.%s'", label, name);
    if (!cJSON_IsArray(it))
        return kv_fail(err, KV_EFORMAT, "%s: field 'rope_scaling.%s' is %s, expected a list", label,
                       name, json_kind(it));
    int n = cJSON_GetArraySize(it);
    if (n != want)
        return kv_fail(err, KV_EFORMAT,
                       "%s: field 'rope_scaling.%s' lists %d numbers, head_dim/2 = %d expected",
                       label, name, n, want);
    int i = 0;
    for (const cJSON *e = it->child; e; e = e->next, i++) {
        if (!cJSON_IsNumber(e) || !(e->valuedouble > 0.0) || !isfinite(e->valuedouble))
            return kv_fail(err, KV_EFORMAT,
                           "%s: field 'rope_scaling.%s[%d]' is %s, expected a number > 0", label,
                           name, i, cJSON_IsNumber(e) ? "not positive" : json_kind(e));
        out[i] = e->valuedouble;
    }
    return 0;
}

static int parse_rope_kind(hf_config *c, const cJSON *root, const cJSON *rs, const char *label,
                           kv_error *err) {
    kv_rope_config *r = &c->rope;
    const kv_rope_scaling kind = r->scaling;
    const int maxpos = c->max_position_embeddings;
    int rc = 0;
    if (kind != KV_ROPE_LONGROPE && (rc = rope_required(rs, label, "factor", err))) return rc;
    switch (kind) {
    case KV_ROPE_LLAMA3: {
        static const char *const names[] = {"factor", "low_freq_factor", "high_freq_factor"};
        double *dst[] = {&r->factor, &r->low_freq_factor, &r->high_freq_factor};
        for (int i = 0; i < 3; i++) {
            char full[64];
            snprintf(full, sizeof full, "rope_scaling.%s", names[i]);
            const cJSON *it = json_field(rs, names[i]);
            if (!it) return kv_fail(err, KV_EFORMAT, "%s: missing field '%s'", label, full);
            if ((rc = json_number_positive(it, label, full, dst[i], err))) return rc;
        }
        const cJSON *orig = json_field(rs, "original_max_position_embeddings");
        if (!orig)
            return kv_fail(err, KV_EFORMAT,
                           "%s: missing field 'rope_scaling.original_max_position_embeddings'",
                           label);
        if ((rc = json_number_int(orig, label, "rope_scaling.original_max_position_embeddings", 1,
                                  INT_MAX, &r->original_max_position, err)))
            return rc;
        if (r->high_freq_factor <= r->low_freq_factor)
            return kv_fail(err, KV_EFORMAT,
                           "%s: field 'rope_scaling.high_freq_factor' (%g) must exceed "
                           "'rope_scaling.low_freq_factor' (%g)",
                           label, r->high_freq_factor, r->low_freq_factor);
        return 0;
    }
    case KV_ROPE_LINEAR: return rope_number(rs, label, "factor", 1.0, 0, 1.0, &r->factor, err);
    case KV_ROPE_DYNAMIC:
        if ((rc = rope_number(rs, label, "factor", 1.0, 0, 1.0, &r->factor, err))) return rc;
        return json_field(rs, "original_max_position_embeddings")
                   ? json_number_int(json_field(rs, "original_max_position_embeddings"), label,
                                     "rope_scaling.original_max_position_embeddings", 1, INT_MAX,
                                     &r->original_max_position, err)
                   : (r->original_max_position = maxpos, 0);
    case KV_ROPE_YARN: {
        int truncate = 1;
        if ((rc = rope_number(rs, label, "factor", 1.0, 0, 1.0, &r->factor, err)) ||
            (rc = json_field(rs, "original_max_position_embeddings")
                      ? json_number_int(json_field(rs, "original_max_position_embeddings"), label,
                                        "rope_scaling.original_max_position_embeddings", 1, INT_MAX,
                                        &r->original_max_position, err)
                      : (r->original_max_position = maxpos, 0)) ||
            (rc = rope_number(rs, label, "beta_fast", 0.0, 1, 32.0, &r->beta_fast, err)) ||
            (rc = rope_number(rs, label, "beta_slow", 0.0, 1, 1.0, &r->beta_slow, err)) ||
            (rc = rope_number(rs, label, "mscale", 0.0, 0, 0.0, &r->mscale, err)) ||
            (rc = rope_number(rs, label, "mscale_all_dim", 0.0, 0, 0.0, &r->mscale_all_dim, err)) ||
            (rc = rope_number(rs, label, "attention_factor", 0.0, 1, 0.0, &r->attention_factor,
                              err)) ||
            (rc = json_get_bool(rs, label, "truncate", 1, &truncate, err)))
            return rc;
        r->truncate = truncate;
        if (r->beta_fast < r->beta_slow)
            return kv_fail(err, KV_EFORMAT,
                           "%s: field 'rope_scaling.beta_fast' (%g) is below "
                           "'rope_scaling.beta_slow' (%g)",
                           label, r->beta_fast, r->beta_slow);
        return 0;
    }
    case KV_ROPE_LONGROPE: {
        const int half = c->head_dim / 2;
        if (half > KV_ROPE_MAX_FACTORS)
            return kv_fail(err, KV_EUNSUPPORTED,
                           "%s: longrope with head_dim %d: at most %d factors are supported", label,
                           c->head_dim, KV_ROPE_MAX_FACTORS);
        r->n_factors = half;
        if ((rc = rope_factor_list(rs, label, "short_factor", half, r->short_factor, err)) ||
            (rc = rope_factor_list(rs, label, "long_factor", half, r->long_factor, err)) ||
            (rc = rope_original_max(root, rs, label, maxpos, &r->original_max_position, err)) ||
            (rc = rope_number(rs, label, "factor", 0.0, 1,
                              (double)maxpos / r->original_max_position, &r->factor, err)) ||
            (rc = rope_number(rs, label, "attention_factor", 0.0, 1, 0.0, &r->attention_factor,
                              err)))
            return rc;
        if (r->original_max_position < 2)
            return kv_fail(err, KV_EFORMAT,
                           "%s: longrope needs 'original_max_position_embeddings' >= 2, got %d",
                           label, r->original_max_position);
        return 0;
    }
    default: return 0;
    }
}

static int parse_rope(hf_config *c, const cJSON *root, const char *label, kv_error *err) {
    memset(&c->rope, 0, sizeof c->rope);
    int rc = json_get_positive(root, label, "rope_theta", 0, 10000.0, &c->rope.theta, err);
    if (rc) return rc;
    c->rope.scaling = KV_ROPE_PLAIN;
    const cJSON *rs = json_field(root, "rope_scaling");
    if (!rs) return 0;
    if (!cJSON_IsObject(rs))
        return kv_fail(err, KV_EFORMAT,
                       "%s: field 'rope_scaling' is %s, expected an object or null", label,
                       json_kind(rs));
    if ((rc = json_unique_keys(rs, label, "rope_scaling: ", err))) return rc;
    const char *type = NULL, *type_key = "rope_scaling.rope_type";
    if ((rc = json_get_string(rs, label, "rope_type", 64, &type, err))) return rc;
    if (!type) {
        type_key = "rope_scaling.type";
        if ((rc = json_get_string(rs, label, "type", 64, &type, err))) return rc;
    }
    if (!type) return kv_fail(err, KV_EFORMAT, "%s: missing field 'rope_scaling.rope_type'", label);
    if (strcmp(type, "default") == 0) return 0;
    kv_rope_scaling kind = KV_ROPE_PLAIN;
    for (int k = KV_ROPE_LLAMA3; k <= KV_ROPE_LONGROPE; k++)
        if (strcmp(type, kv_rope_scaling_name((kv_rope_scaling)k)) == 0) kind = (kv_rope_scaling)k;
    if (kind == KV_ROPE_PLAIN)
        return kv_fail(err, KV_EUNSUPPORTED,
                       "%s: field '%s' is '%s', supported: default, llama3, linear, dynamic, "
                       "yarn, longrope",
                       label, type_key, type);
    for (const cJSON *it = rs->child; it; it = it->next)
        if (!rope_key_known(kind, it->string))
            return kv_fail(err, KV_EUNSUPPORTED,
                           "%s: field 'rope_scaling.%s' is not read for rope_type '%s'", label,
                           it->string, type);
    c->rope.scaling = kind;
    if ((rc = parse_rope_kind(c, root, rs, label, err))) return rc;
    if ((rc = kv_rope_check(c->head_dim, &c->rope, err))) {
        kv_wrap(err, "%s", label);
        return err ? (err->code = KV_EFORMAT) : KV_EFORMAT;
    }
    return 0;
}

/* "bos_token_id" / "eos_token_id": an integer or a list of integers, each in [0, vocab) */
static int parse_token_ids(const cJSON *root, const char *label, const char *name, int vocab,
                           int *ids, int cap, int *n_out, kv_error *err) {
    const cJSON *it = json_field(root, name);
    *n_out = 0;
    if (!it) return 0;
    const cJSON *one = it;
    int n = 1;
    if (cJSON_IsArray(it)) {
        n = cJSON_GetArraySize(it);
        if (n < 1 || n > cap)
            return kv_fail(err, KV_EFORMAT, "%s: field '%s' lists %d ids, expected 1 to %d", label,
                           name, n, cap);
        one = it->child;
    } else if (!cJSON_IsNumber(it)) {
        return kv_fail(err, KV_EFORMAT, "%s: field '%s' is %s, expected an integer or a list",
                       label, name, json_kind(it));
    }
    for (int i = 0; i < n; i++, one = one->next) {
        int rc = json_number_int(one, label, name, 0, (long)vocab - 1, &ids[i], err);
        if (rc) return rc;
    }
    *n_out = n;
    return 0;
}

/* the MLP is SwiGLU: only SiLU gates */
static int parse_activation(const cJSON *root, const char *label, kv_error *err) {
    const char *act = NULL;
    int rc = json_get_string(root, label, "hidden_act", 64, &act, err);
    if (rc) return rc;
    if (act && strcmp(act, "silu") != 0)
        return kv_fail(err, KV_EUNSUPPORTED,
                       "%s: field 'hidden_act' is '%s', only 'silu' is supported", label, act);
    return 0;
}

static int parse_dtype(hf_config *c, const cJSON *root, const char *label, kv_error *err) {
    const char *name = NULL, *key = "torch_dtype";
    int rc = json_get_string(root, label, key, 64, &name, err);
    if (rc) return rc;
    if (!name) {
        key = "dtype"; /* newer transformers releases write this instead */
        if ((rc = json_get_string(root, label, key, 64, &name, err))) return rc;
    }
    if (!name || strcmp(name, "float32") == 0) c->torch_dtype = KV_F32;
    else if (strcmp(name, "float16") == 0) c->torch_dtype = KV_F16;
    else if (strcmp(name, "bfloat16") == 0) c->torch_dtype = KV_BF16;
    else
        return kv_fail(err, KV_EUNSUPPORTED,
                       "%s: field '%s' is '%s', expected float32, float16 or bfloat16", label, key,
                       name);
    return 0;
}

/* layer_types / SwiftKV fields (kvmap_read_config); a SwiftKV architecture implies swiftkv;
 * then the sliding windows (hf_parse_windows) */
static int parse_kv_map(hf_config *c, const cJSON *root, const char *label, kv_error *err) {
    const int arch_swiftkv = is_swiftkv_arch(c->architecture);
    unsigned char sliding[HF_MAX_LAYERS];
    int rc = kvmap_read_config(&c->map, root, c->n_layers, arch_swiftkv, sliding, label, err);
    if (!rc) rc = hf_parse_windows(c, root, sliding, label, err);
    if (rc) return rc;
    if (arch_swiftkv && c->map.kind != KVMAP_SWIFTKV) {
        /* "swiftkv": false (teacher mode): any integer layer_types is refused, the SwiftKV
         * fields must still describe a valid SwiftKV map of this model */
        if (!kvmap_is_identity(&c->map))
            return kv_fail(err, KV_EUNSUPPORTED,
                           "%s: field 'layer_types' sets a cross-layer map on a %s checkpoint "
                           "saved with 'swiftkv' = false",
                           label, c->architecture);
        int l, g;
        kv_map skv;
        if ((rc = json_get_int(root, label, "num_key_value_layers", 1, 0, INT_MIN, INT_MAX, &l,
                               err)) ||
            (rc = json_get_int(root, label, "key_value_group_size", 0, 1, INT_MIN, INT_MAX, &g,
                               err)))
            return rc;
        if (kvmap_swiftkv(&skv, c->n_layers, l, g, err))
            return kv_wrap(err,
                           "%s: fields 'num_key_value_layers' / 'key_value_group_size' "
                           "(read with 'swiftkv' = false)",
                           label);
        c->swiftkv_off_l = l;
        c->swiftkv_off_g = g;
    }
    if (strcmp(c->model_type, TYPE_LCKV) == 0 && c->map.kind == KVMAP_SWIFTKV)
        return kv_fail(err, KV_EFORMAT, "%s: model_type '%s' contradicts field 'swiftkv' = true",
                       label, c->model_type);
    return 0;
}

/* LCKV's iteration plan and attention switches (configuration_lckv.py): forward_passes m >= 0,
 * backward_passes b >= 1 (LCKV's defaults for an absent one when the other is given; both 0
 * when neither is), use_sequential kept; force_nodiag true (every layer masks its diagonal) is
 * not kvforge's attention and is refused */
static int parse_lckv(hf_config *c, const cJSON *root, const char *label, kv_error *err) {
    int rc, nodiag = 0;
    const int given = json_field(root, "forward_passes") || json_field(root, "backward_passes");
    if ((rc = json_get_int(root, label, "forward_passes", 0, given ? LCKV_DEFAULT_FORWARD : 0, 0,
                           1000000, &c->lckv_forward_passes, err)) ||
        (rc = json_get_int(root, label, "backward_passes", 0, given ? LCKV_DEFAULT_BACKWARD : 0, 1,
                           1000000, &c->lckv_backward_passes, err)) ||
        (rc = json_get_bool(root, label, "use_sequential", 0, &c->lckv_use_sequential, err)) ||
        (rc = json_get_bool(root, label, "force_nodiag", 0, &nodiag, err)))
        return rc;
    if (nodiag)
        return kv_fail(err, KV_EUNSUPPORTED,
                       "%s: field 'force_nodiag' is true (every layer masks the diagonal); kvforge "
                       "masks it only on layers that read K/V from above (LCKV's default)",
                       label);
    return 0;
}

/* ---- public ---- */

int hf_config_parse(hf_config *c, const char *json, const char *label, kv_error *err) {
    memset(c, 0, sizeof *c);
    if (!label) label = "config.json";
    if (!json) return kv_fail(err, KV_EINVAL, "%s: no text given", label);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
    if (!root) {
        long at = end ? (long)(end - json) : -1;
        return kv_fail(err, KV_EFORMAT, "%s: not valid JSON (near byte %ld)", label, at);
    }
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = kv_fail(err, KV_EFORMAT, "%s: top level is %s, expected an object", label,
                     json_kind(root));
        goto done;
    }
    double eps = 0;
    int n_bos = 0, bos = -1;
    if ((rc = json_unique_keys(root, label, "", err)) ||
        (rc = parse_architecture(c, root, label, err)) || (rc = parse_sizes(c, root, label, err)) ||
        (rc = json_get_positive(root, label, "rms_norm_eps", 0, 1e-6, &eps, err)) ||
        (rc = parse_rope(c, root, label, err)) ||
        (rc = json_get_bool(root, label, "tie_word_embeddings", 0, &c->tie_word_embeddings, err)) ||
        (rc = json_get_bool(root, label, "attention_bias", 0, &c->attention_bias, err)) ||
        (rc = json_get_bool(root, label, "mlp_bias", 0, &c->mlp_bias, err)) ||
        (rc = parse_token_ids(root, label, "bos_token_id", c->vocab_size, &bos, 1, &n_bos, err)) ||
        (rc = parse_token_ids(root, label, "eos_token_id", c->vocab_size, c->eos_token_ids,
                              HF_MAX_EOS, &c->n_eos, err)) ||
        (rc = parse_activation(root, label, err)) || (rc = parse_dtype(c, root, label, err)) ||
        (rc = parse_family(c, root, label, err)) || (rc = parse_kv_map(c, root, label, err)) ||
        (rc = parse_lckv(c, root, label, err)))
        goto done;
    if ((float)eps <= 0.0f || eps > 1.0) {
        rc = kv_fail(err, KV_EFORMAT,
                     "%s: field 'rms_norm_eps' is %g, outside the float range (0, 1]", label, eps);
        goto done;
    }
    c->rms_norm_eps = (float)eps;
    c->bos_token_id = n_bos ? bos : -1;
    if (hf_config_param_count(c) < 0)
        rc = kv_fail(err, KV_ENOMEM,
                     "%s: fields 'hidden_size', 'intermediate_size', 'vocab_size', "
                     "'num_hidden_layers' give a parameter count that overflows",
                     label);
done:
    cJSON_Delete(root);
    if (rc) memset(c, 0, sizeof *c);
    return rc;
}

int hf_config_load(hf_config *c, const char *path, kv_error *err) {
    char *text;
    size_t n;
    memset(c, 0, sizeof *c);
    int rc = kv_read_file(path, &text, &n, HF_MAX_CONFIG_BYTES, err);
    if (rc) return rc;
    if (memchr(text, '\0', n)) {
        free(text);
        return kv_fail(err, KV_EFORMAT, "%s: contains a NUL byte", path);
    }
    rc = hf_config_parse(c, text, path, err);
    free(text);
    return rc;
}

/* acc += a * b (+ extra); returns 0 on overflow */
static int add_mul(int64_t *acc, int64_t a, int64_t b) {
    int64_t p;
    return !__builtin_mul_overflow(a, b, &p) && !__builtin_add_overflow(*acc, p, acc);
}

int64_t hf_config_param_count(const hf_config *c) {
    const int64_t H = c->hidden_size, F = c->intermediate_size, V = c->vocab_size;
    const int64_t q_rows = (int64_t)c->n_heads * c->head_dim;
    const int64_t kv_rows = (int64_t)c->n_kv_heads * c->head_dim;
    const int ab = c->attention_bias, ob = c->o_bias, mb = c->mlp_bias;
    int64_t n = 0;
    int ok = add_mul(&n, V, H); /* embed_tokens [V, H] */
    for (int i = 0; ok && i < c->n_layers; i++) {
        ok = ok && add_mul(&n, 2, H); /* two RMSNorms [H] */
        ok = ok && add_mul(&n, q_rows, H + ab); /* q (or q_proj_swiftkv) */
        if (kvmap_is_kv_layer(&c->map, i))
            ok = ok && add_mul(&n, 2 * kv_rows, H + ab); /* k, v (or *_swiftkv) */
        ok = ok && add_mul(&n, H, q_rows + ob); /* o [H, nh*hd] */
        ok = ok && add_mul(&n, 2 * F, H + mb); /* gate, up [F, H] */
        ok = ok && add_mul(&n, H, F + mb); /* down [H, F] */
    }
    ok = ok && add_mul(&n, 1, H); /* model.norm */
    if (c->map.kind == KVMAP_SWIFTKV) ok = ok && add_mul(&n, 1, H); /* norm_swiftkv */
    if (!c->tie_word_embeddings) ok = ok && add_mul(&n, V, H); /* lm_head */
    return ok ? n : -1;
}

const char *hf_torch_dtype_name(kv_dtype t) {
    switch (t) {
    case KV_F32: return "float32";
    case KV_F16: return "float16";
    case KV_BF16: return "bfloat16";
    default: return NULL;
    }
}

const char *hf_config_schema(const hf_config *c) {
    const int lckv = strcmp(c->model_type, TYPE_LCKV) == 0;
    const int qwen2 = c->family == HF_FAMILY_QWEN2, mistral = c->family == HF_FAMILY_MISTRAL;
    switch (c->map.kind) {
    case KVMAP_SWIFTKV:
        if (strcmp(c->model_type, TYPE_SWIFTKV) == 0) return "llama_swiftkv";
        if (strcmp(c->model_type, TYPE_QWEN2_SWIFTKV) == 0) return "qwen2_swiftkv";
        return qwen2 ? "qwen2+swiftkv" : mistral ? "mistral+swiftkv" : "llama+swiftkv";
    case KVMAP_CROSS:
        if (lckv) return "lckv-llama";
        return qwen2 ? "qwen2+layer_types" : mistral ? "mistral+layer_types" : "llama+layer_types";
    default:
        if (c->swiftkv_off_l > 0) return qwen2 ? "qwen2_swiftkv-off" : "llama_swiftkv-off";
        return lckv ? "lckv-llama" : qwen2 ? "qwen2" : mistral ? "mistral" : "llama";
    }
}

/* replaces obj[key] in place (keeping its position) or appends it; takes ownership of val */
static int set_key(cJSON *obj, const char *key, cJSON *val) {
    if (!val) return 0;
    cJSON *old = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (old)
        return cJSON_ReplaceItemInObjectCaseSensitive(obj, key, val) ? 1 : (cJSON_Delete(val), 0);
    if (cJSON_AddItemToObject(obj, key, val)) return 1;
    cJSON_Delete(val);
    return 0;
}

static void drop_key(cJSON *obj, const char *key) {
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
}

/* layer_types holding integers (a string, or a list without strings) */
static int is_integer_layer_types(const cJSON *lt) {
    if (!lt) return 0;
    if (cJSON_IsString(lt)) return 1;
    if (!cJSON_IsArray(lt)) return 0;
    for (const cJSON *e = lt->child; e; e = e->next)
        if (cJSON_IsString(e)) return 0;
    return 1;
}

int hf_config_write_json(const hf_config *c, const char *src_json, const char *label,
                         char **out_json, kv_error *err) {
    *out_json = NULL;
    if (!label) label = "config.json";
    const char *dtype = hf_torch_dtype_name(c->torch_dtype);
    if (!dtype)
        return kv_fail(err, KV_EINVAL, "%s: torch_dtype %s cannot be written", label,
                       kv_dtype_name(c->torch_dtype));
    int rc = kvmap_validate(&c->map, err);
    if (rc) return kv_wrap(err, "%s: KV map to write as layer_types / swiftkv", label);
    cJSON *root = cJSON_Parse(src_json ? src_json : "");
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return kv_fail(err, KV_EFORMAT, "%s: source text is not a JSON object", label);
    }
    int ok = 1;
    char *map = NULL;
    /* a "cross-layer" map in which every layer reads itself is the plain model */
    const int swift = c->map.kind == KVMAP_SWIFTKV;
    const int windows = hf_has_windows(c);
    if (swift && windows) {
        cJSON_Delete(root);
        return kv_fail(err, KV_EUNSUPPORTED,
                       "%s: a SwiftKV map on a model with sliding-window layers (window %d) "
                       "cannot be written: kvforge does not run SwiftKV with windows",
                       label, c->sliding_window);
    }
    /* windows on a Llama / LCKV model: LCKV's schema (its 's' suffix), even for the identity */
    const int lckv_windows = windows && c->family == HF_FAMILY_LLAMA;
    const int cross = (c->map.kind == KVMAP_CROSS && !kvmap_is_identity(&c->map)) || lckv_windows;
    const cJSON *src_type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const int src_lckv = cJSON_IsString(src_type) && strcmp(src_type->valuestring, TYPE_LCKV) == 0;
    const int b = c->lckv_backward_passes >= 1 ? c->lckv_backward_passes : LCKV_DEFAULT_BACKWARD;
    const int m = c->lckv_backward_passes >= 1 ? c->lckv_forward_passes : LCKV_DEFAULT_FORWARD;
    if (cross) {
        int n = kvmap_layer_types(&c->map, NULL, 0);
        /* Mistral's and Qwen2's windows stay in their own fields; Llama's go in the suffix */
        if (lckv_windows) map = hf_layer_types_with_windows(c);
        else if (n >= 0 && (map = malloc((size_t)n + 1)))
            kvmap_layer_types(&c->map, map, (size_t)n + 1);
        if (!map) {
            rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
            goto done;
        }
        ok = ok && set_key(root, "layer_types", cJSON_CreateString(map));
    } else if (is_integer_layer_types(cJSON_GetObjectItemCaseSensitive(root, "layer_types"))) {
        drop_key(root, "layer_types");
    }
    /* Qwen2 keeps its schema (SwiftKV: ArcticTraining's qwen2_swiftkv; cross-layer: kvforge's
     * layer_types under qwen2, as LCKV has no Qwen2 model); Mistral is a Llama, written in
     * Llama's SwiftKV / LCKV schemas (its window as LCKV's 's'; mistral when unchanged) */
    const hf_family fam = c->family;
    const int kind = fam == HF_FAMILY_QWEN2     ? (swift ? S_QWEN2_SWIFTKV : S_QWEN2)
                     : swift                    ? S_SWIFTKV
                     : cross                    ? S_LCKV
                     : fam == HF_FAMILY_MISTRAL ? S_MISTRAL
                                                : S_LLAMA;
    /* a Mistral written as LCKV keeps its window on every layer: 's' suffixes (below) */
    const int mistral_lckv = fam == HF_FAMILY_MISTRAL && kind == S_LCKV && windows;
    if (fam == HF_FAMILY_MISTRAL && kind != S_MISTRAL && !mistral_lckv)
        drop_key(root, "sliding_window");
    if (mistral_lckv) {
        free(map);
        if (!(map = hf_layer_types_with_windows(c))) {
            rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
            goto done;
        }
        ok = ok && set_key(root, "layer_types", cJSON_CreateString(map));
    }
    if (kind == S_LCKV && windows)
        ok = ok && set_key(root, "sliding_window", cJSON_CreateNumber(c->sliding_window));
    const char *arch_name = arch_names[kind];
    cJSON *archs = cJSON_CreateStringArray(&arch_name, 1);
    ok = ok && set_key(root, "architectures", archs);
    ok = ok && set_key(root, "model_type", cJSON_CreateString(type_names[kind]));
    if (cross) { /* LCKV's fields (configuration_lckv.py) */
        ok = ok && set_key(root, "forward_passes", cJSON_CreateNumber(m));
        ok = ok && set_key(root, "backward_passes", cJSON_CreateNumber(b));
        ok = ok && set_key(root, "use_sequential", cJSON_CreateBool(c->lckv_use_sequential));
        ok = ok && set_key(root, "force_nodiag", cJSON_CreateFalse());
    } else {
        static const char *const lckv_keys[] = {"forward_passes", "backward_passes",
                                                "use_sequential", "force_nodiag"};
        for (int k = 0; k < 4; k++) drop_key(root, lckv_keys[k]);
        if (src_lckv) drop_key(root, "sliding_window"); /* LCKV's, for its 's' layers */
    }
    if (swift) {
        ok = ok && set_key(root, "swiftkv", cJSON_CreateTrue());
        ok = ok && set_key(root, "num_key_value_layers", cJSON_CreateNumber(c->map.swiftkv_l));
        ok = ok && set_key(root, "key_value_group_size", cJSON_CreateNumber(c->map.swiftkv_g));
    } else {
        drop_key(root, "swiftkv");
        drop_key(root, "num_key_value_layers");
        drop_key(root, "key_value_group_size");
    }
    ok = ok && set_key(root, "torch_dtype", cJSON_CreateString(dtype));
    if (cJSON_GetObjectItemCaseSensitive(root, "dtype"))
        ok = ok && set_key(root, "dtype", cJSON_CreateString(dtype));
    if (!ok) {
        rc = kv_fail(err, KV_ENOMEM, "%s: out of memory while editing", label);
        goto done;
    }
    char *text = cJSON_Print(root);
    if (!text) {
        rc = kv_fail(err, KV_ENOMEM, "%s: out of memory while printing", label);
        goto done;
    }
    hf_config *check = malloc(sizeof *check);
    if (!check) {
        cJSON_free(text);
        rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
        goto done;
    }
    rc = hf_config_parse(check, text, label, err);
    if (rc) {
        kv_wrap(err, "%s: written config does not parse", label);
    } else if (!kvmap_equal(&c->map, &check->map) || c->torch_dtype != check->torch_dtype ||
               memcmp(c->layer_window, check->layer_window, sizeof(int) * (size_t)c->n_layers) !=
                   0 ||
               (cross && (check->lckv_forward_passes != m || check->lckv_backward_passes != b))) {
        rc = kv_fail(err, KV_EINVAL, "%s: written config does not carry the requested KV settings",
                     label);
    }
    free(check);
    if (rc) {
        cJSON_free(text);
        goto done;
    }
    *out_json = strdup(text);
    cJSON_free(text);
    if (!*out_json) rc = kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
done:
    free(map);
    cJSON_Delete(root);
    return rc;
}

int hf_config_set_lckv_plan(char **json, int passes, int grad_passes, const char *label,
                            kv_error *err) {
    if (!label) label = "config.json";
    if (!json || !*json) return kv_fail(err, KV_EINVAL, "%s: no config text", label);
    if (grad_passes < 1 || grad_passes > passes)
        return kv_fail(err, KV_EINVAL, "%s: %d passes with gradient of %d is not a plan", label,
                       grad_passes, passes);
    hf_config *c = malloc(sizeof *c);
    if (!c) return kv_fail(err, KV_ENOMEM, "%s: out of memory", label);
    char *out = NULL;
    int rc = hf_config_parse(c, *json, label, err);
    if (!rc && c->map.kind == KVMAP_CROSS) {
        c->lckv_forward_passes = passes - grad_passes;
        c->lckv_backward_passes = grad_passes;
        rc = hf_config_write_json(c, *json, label, &out, err);
        if (!rc) {
            free(*json);
            *json = out;
        }
    }
    free(c);
    return rc;
}
