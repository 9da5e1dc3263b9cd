/* HF Llama config.json -> struct, validated; plus the KV-sharing fields kvforge writes
 * (layer_types for cross-layer maps; swiftkv/num_key_value_layers/key_value_group_size). */
#ifndef KV_HFCONFIG_H
#define KV_HFCONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"

#define HF_MAX_LAYERS 1024
#define HF_MAX_EOS 8

typedef enum { HF_ROPE_NONE = 0, HF_ROPE_LLAMA3 = 1 } hf_rope_type;

typedef struct {
    char architecture[64];   /* "LlamaForCausalLM" or "LlamaSwiftKVForCausalLM" */
    char model_type[32];     /* "llama" or "llama_swiftkv" */
    int hidden_size;         /* H */
    int intermediate_size;   /* FFN */
    int n_layers;            /* L */
    int n_heads;             /* nh */
    int n_kv_heads;          /* nkv (default nh) */
    int head_dim;            /* hd (default H / nh) */
    int vocab_size;
    int max_position_embeddings;
    float rms_norm_eps;
    double rope_theta;
    hf_rope_type rope_type;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position;
    int tie_word_embeddings;
    int attention_bias, mlp_bias;
    int bos_token_id;        /* -1 if absent */
    int n_eos;
    int eos_token_ids[HF_MAX_EOS];
    kv_dtype torch_dtype;    /* F32 when absent */
    /* KV map: kv_layer_of[i] = layer whose K/V layer i reads (identity when absent) */
    int has_layer_map;       /* layer_types present as integers */
    int kv_layer_of[HF_MAX_LAYERS];
    /* SwiftKV */
    int swiftkv;             /* 0/1 */
    int swiftkv_layers;      /* l = num_key_value_layers */
    int swiftkv_group;       /* g = key_value_group_size */
} hf_config;

#define HF_MAX_CONFIG_BYTES (16u * 1024u * 1024u)

/* Required: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size,
 * and architectures or model_type. Everything else takes the HF LlamaConfig default
 * (max_position_embeddings 2048, rms_norm_eps 1e-6, rope_theta 10000, no biases, untied); an
 * absent eos_token_id gives n_eos = 0, an absent bos -1. hidden_act, when given, must be silu.
 * SwiftKV: the LlamaSwiftKV architecture implies swiftkv unless it says false (refused); swiftkv
 * true under LlamaForCausalLM is read as SwiftKV (architecture/model_type kept as written). JSON null counts as absent. Integers may be written
 * 64.0 but not 64.5. Duplicate keys are refused (Python keeps the last, cJSON the first).
 * Errors name LABEL and the field; on failure *c is zeroed. */
int hf_config_load(hf_config *c, const char *path, kv_error *err);  /* path to config.json */
int hf_config_parse(hf_config *c, const char *json, const char *label, kv_error *err);
/* of the model the config describes (deploy layout: no k/v on non-KV layers, no teacher q/k/v
 * on SwiftKV layers >= l); -1 if it overflows int64 */
int64_t hf_config_param_count(const hf_config *c);

/* layer i owns K/V projections and a KV-cache slot (kv(i) == i; SwiftKV: i < l or group leader) */
int hf_config_is_kv_layer(const hf_config *c, int layer);
/* KV-cache slots per token and layer kind: L, number of KV layers, or l + (L - l)/g */
int hf_config_kv_slots(const hf_config *c);
/* SwiftKV: layer j >= l leads its AcrossKV group ((j - l) % g == 0) */
int hf_config_swiftkv_leader(const hf_config *c, int layer);
/* "0_0_2_2_4" (identity map when has_layer_map is 0); 0, or KV_EINVAL if it does not fit */
int hf_config_layer_map_string(const hf_config *c, char *out, size_t cap, kv_error *err);
/* "float32" / "float16" / "bfloat16"; NULL for other dtypes */
const char *hf_torch_dtype_name(kv_dtype t);

/* Takes the ORIGINAL config.json text and returns it (malloc'd, cJSON_Print layout) with the
 * KV fields of C written in: layer_types = LCKV string when has_layer_map (an integer
 * layer_types is removed when not); swiftkv / num_key_value_layers / key_value_group_size +
 * model_type "llama_swiftkv" + architectures ["LlamaSwiftKVForCausalLM"] when swiftkv (removed,
 * and llama / LlamaForCausalLM restored, when not); torch_dtype (and dtype, if present) from
 * C->torch_dtype. Other keys keep their values and order; new keys are appended. The result is
 * re-parsed and must yield C's KV settings. */
int hf_config_write_json(const hf_config *c, const char *src_json, const char *label,
                         char **out_json, kv_error *err);

#endif
