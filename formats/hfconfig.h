/* HF Llama config.json -> struct, validated; plus the KV-sharing fields kvforge writes
 * (layer_types for cross-layer maps; swiftkv/num_key_value_layers/key_value_group_size). */
#ifndef KV_HFCONFIG_H
#define KV_HFCONFIG_H

#include <stdint.h>

#include "formats/dtype.h"
#include "formats/error.h"

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

int hf_config_load(hf_config *c, const char *path, kv_error *err);  /* path to config.json */
int hf_config_parse(hf_config *c, const char *json, const char *label, kv_error *err);
int64_t hf_config_param_count(const hf_config *c); /* of the model the config describes */

#endif
