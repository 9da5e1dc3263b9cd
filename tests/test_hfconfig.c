/* config.json parsing: the stories260K fixture, HF defaults, KV-map fields, ~75 malformed
 * configs (each must fail naming the field), parameter counts derived by hand, and the
 * config writer used by kvconvert. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/hfconfig.h"
#include "tests/check.h"

#define STORIES_CONFIG SHARED_DIR "/models/stories260K/config.json"

/* a valid config shaped like stories260K, edited per case */
static const char *BASE =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 64,"
    " \"intermediate_size\": 172, \"num_hidden_layers\": 5, \"num_attention_heads\": 8,"
    " \"num_key_value_heads\": 4, \"head_dim\": 8, \"vocab_size\": 512,"
    " \"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0,"
    " \"rope_scaling\": null, \"tie_word_embeddings\": true, \"hidden_act\": \"silu\","
    " \"attention_bias\": false, \"mlp_bias\": false, \"torch_dtype\": \"float32\","
    " \"bos_token_id\": 1, \"eos_token_id\": 2}";

/* stories260K by hand: embed 512*64 = 32768; per layer 2*64 norms + q 64*64 + k,v 2*32*64 +
 * o 64*64 + gate,up,down 3*172*64 = 128 + 4096 + 4096 + 4096 + 33024 = 45440; final norm 64 */
#define STORIES_LAYER  45440
#define STORIES_PARAMS (32768 + 5 * STORIES_LAYER + 64)

/* BASE with OVERRIDES (a JSON object) merged in; the string "__DELETE__" removes a key */
static char *edited(const char *overrides) {
    cJSON *root = cJSON_Parse(BASE), *ov = cJSON_Parse(overrides);
    if (!root || !ov) {
        fprintf(stderr, "bad test JSON: %s\n", overrides);
        exit(2);
    }
    for (cJSON *it = ov->child; it; it = it->next) {
        if (cJSON_IsString(it) && strcmp(it->valuestring, "__DELETE__") == 0) {
            cJSON_DeleteItemFromObjectCaseSensitive(root, it->string);
            continue;
        }
        cJSON *copy = cJSON_Duplicate(it, 1);
        if (cJSON_GetObjectItemCaseSensitive(root, it->string))
            cJSON_ReplaceItemInObjectCaseSensitive(root, it->string, copy);
        else cJSON_AddItemToObject(root, it->string, copy);
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    cJSON_Delete(ov);
    return text;
}

static int parse_edited(hf_config *c, const char *overrides, kv_error *err) {
    char *text = edited(overrides);
    int rc = hf_config_parse(c, text, "config.json", err);
    free(text);
    return rc;
}

typedef struct {
    const char *overrides; /* merged into BASE; NULL: raw text below */
    const char *raw;
    const char *must_name; /* substring the message must contain */
} bad_case;

static const bad_case BAD[] = {
    {"{\"hidden_size\": \"__DELETE__\"}", NULL, "missing field 'hidden_size'"},
    {"{\"intermediate_size\": \"__DELETE__\"}", NULL, "'intermediate_size'"},
    {"{\"vocab_size\": \"__DELETE__\"}", NULL, "'vocab_size'"},
    {"{\"hidden_size\": null}", NULL, "'hidden_size'"},
    {"{\"hidden_size\": \"64\"}", NULL, "'hidden_size' is a string"},
    {"{\"hidden_size\": 64.5}", NULL, "'hidden_size' is 64.5"},
    {"{\"hidden_size\": -64}", NULL, "'hidden_size'"},
    {"{\"hidden_size\": 1e30}", NULL, "'hidden_size'"},
    {"{\"num_hidden_layers\": 0}", NULL, "'num_hidden_layers'"},
    {"{\"num_hidden_layers\": 2000}", NULL, "'num_hidden_layers' is 2000"},
    {"{\"num_attention_heads\": [8]}", NULL, "'num_attention_heads' is a list"},
    {"{\"num_key_value_heads\": 3}", NULL, "'num_key_value_heads' (3)"},
    {"{\"head_dim\": 7}", NULL, "'head_dim'"},
    {"{\"head_dim\": \"__DELETE__\", \"hidden_size\": 60}", NULL, "'hidden_size' (60)"},
    {"{\"architectures\": [\"MixtralForCausalLM\"]}", NULL,
     "config.json: architecture 'MixtralForCausalLM' is not supported"},
    {"{\"architectures\": [\"MistralForCausalLM\"]}", NULL,
     "config.json: architecture 'MistralForCausalLM' does not match model_type 'llama'"},
    {"{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\", "
     "\"sliding_window\": \"x\"}",
     NULL, "'sliding_window' is a string"},
    {"{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", "
     "\"use_sliding_window\": 1}",
     NULL, "'use_sliding_window'"},
    {"{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", "
     "\"mlp_bias\": true}",
     NULL, "field 'mlp_bias' is true, but Qwen2"},
    {"{\"architectures\": [\"Qwen2SwiftKVForCausalLM\"], \"model_type\": \"qwen2_swiftkv\", "
     "\"swiftkv\": false}",
     NULL, "missing field 'num_key_value_layers'"},
    {"{\"architectures\": \"LlamaForCausalLM\"}", NULL, "'architectures'"},
    {"{\"architectures\": []}", NULL, "'architectures'"},
    {"{\"architectures\": [7]}", NULL, "'architectures[0]'"},
    {"{\"model_type\": \"mistral\"}", NULL, "model_type 'mistral'"},
    {"{\"architectures\": \"__DELETE__\", \"model_type\": \"__DELETE__\"}", NULL,
     "'architectures'"},
    {"{\"model_type\": \"llama_swiftkv\"}", NULL, "model_type 'llama_swiftkv'"},
    {"{\"rms_norm_eps\": 0}", NULL, "'rms_norm_eps'"},
    {"{\"rms_norm_eps\": 2}", NULL, "'rms_norm_eps'"},
    {"{\"rms_norm_eps\": \"1e-5\"}", NULL, "'rms_norm_eps' is a string"},
    {"{\"hidden_act\": \"gelu\"}", NULL, "'hidden_act' is 'gelu'"},
    {"{\"hidden_act\": 1}", NULL, "'hidden_act'"},
    {"{\"rope_scaling\": 7}", NULL, "'rope_scaling' is a number"},
    {"{\"layer_types\": \"0-0-2-2-4\"}", NULL, "'layer_types'"},
    {"{\"layer_types\": \"0_0_2_2_-4\"}", NULL, "'layer_types'"},
    {"{\"rms_norm_eps\": 1e-300}", NULL, "'rms_norm_eps'"},
    {"{\"rope_theta\": -1}", NULL, "'rope_theta'"},
    {"{\"tie_word_embeddings\": \"true\"}", NULL, "'tie_word_embeddings'"},
    {"{\"attention_bias\": 1}", NULL, "'attention_bias'"},
    {"{\"mlp_bias\": \"no\"}", NULL, "'mlp_bias'"},
    {"{\"torch_dtype\": \"int8\"}", NULL, "'torch_dtype' is 'int8'"},
    {"{\"torch_dtype\": 16}", NULL, "'torch_dtype'"},
    {"{\"eos_token_id\": 512}", NULL, "'eos_token_id'"},
    {"{\"eos_token_id\": [2, \"3\"]}", NULL, "'eos_token_id'"},
    {"{\"eos_token_id\": []}", NULL, "'eos_token_id'"},
    {"{\"bos_token_id\": 1.5}", NULL, "'bos_token_id'"},
    {"{\"bos_token_id\": -1}", NULL, "'bos_token_id'"},
    {"{\"rope_scaling\": \"llama3\"}", NULL, "'rope_scaling'"},
    {"{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}", NULL,
     "'rope_scaling.low_freq_factor'"},
    {"{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
     " \"high_freq_factor\": 4.0}}",
     NULL, "'rope_scaling.original_max_position_embeddings'"},
    {"{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
     " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192.5}}",
     NULL, "'rope_scaling.original_max_position_embeddings' is 8192.5"},
    {"{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": \"8\", \"low_freq_factor\": 1.0,"
     " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}",
     NULL, "'rope_scaling.factor'"},
    {"{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 4.0,"
     " \"high_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192}}",
     NULL, "'rope_scaling.high_freq_factor'"},
    {"{\"rope_scaling\": {\"type\": \"su\", \"factor\": 2.0}}", NULL,
     "'rope_scaling.type' is 'su', supported"},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 0.5}}", NULL,
     "'rope_scaling.factor' is out of range"},
    {"{\"rope_scaling\": {\"type\": \"yarn\"}}", NULL, "missing field 'rope_scaling.factor'"},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"beta_fast\": 1, "
     "\"beta_slow\": 2}}",
     NULL, "'rope_scaling.beta_fast' (1) is below"},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"beta_fast\": \"32\"}}", NULL,
     "'rope_scaling.beta_fast' is a string"},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"truncate\": 1}}", NULL,
     "'truncate'"},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"mscale\": -1}}", NULL,
     "'rope_scaling.mscale' is out of range"},
    {"{\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4, \"low_freq_factor\": 1}}", NULL,
     "'rope_scaling.low_freq_factor' is not read for rope_type 'yarn'"},
    {"{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2, "
     "\"original_max_position_embeddings\": 8}}",
     NULL, "'rope_scaling.original_max_position_embeddings' is not read for rope_type 'linear'"},
    {"{\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": -2}}", NULL,
     "'rope_scaling.factor' is out of range"},
    {"{\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2, "
     "\"original_max_position_embeddings\": 0}}",
     NULL, "'rope_scaling.original_max_position_embeddings'"},
    {"{\"rope_scaling\": {\"rope_type\": \"longrope\", \"short_factor\": [1, 1, 1, 1], "
     "\"long_factor\": [1, 2, 3]}}",
     NULL, "'rope_scaling.long_factor' lists 3 numbers, head_dim/2 = 4"},
    {"{\"rope_scaling\": {\"rope_type\": \"longrope\", \"short_factor\": [1, 1, 0, 1], "
     "\"long_factor\": [1, 2, 3, 4]}}",
     NULL, "'rope_scaling.short_factor[2]' is not positive"},
    {"{\"rope_scaling\": {\"rope_type\": \"longrope\", \"short_factor\": [1, 1, 1, 1], "
     "\"long_factor\": {}}}",
     NULL, "'rope_scaling.long_factor' is an object"},
    {"{\"rope_scaling\": {\"rope_type\": \"longrope\", \"long_factor\": [1, 1, 1, 1]}}", NULL,
     "missing field 'rope_scaling.short_factor'"},
    {"{\"rope_scaling\": {\"rope_type\": \"longrope\", \"short_factor\": [1, 1, 1, 1], "
     "\"long_factor\": [1, 2, 3, 4]}, \"original_max_position_embeddings\": 1.5}",
     NULL, "'original_max_position_embeddings' is 1.5"},
    {"{\"rope_scaling\": {\"factor\": 2.0}}", NULL, "'rope_scaling.rope_type'"},
    {"{\"layer_types\": \"0_0_2_2\"}", NULL, "'layer_types' has 4 entries"},
    {"{\"layer_types\": \"0_0_2_2_4_4\"}", NULL, "'layer_types' has more than"},
    {"{\"layer_types\": \"0_0_1_2_4\"}", NULL, "'layer_types': layer 2 reads layer 1"},
    {"{\"layer_types\": \"0_0_2_2_9\"}", NULL, "'layer_types': layer 4 reads layer 9"},
    {"{\"layer_types\": \"0_a_2_2_4\"}", NULL, "'layer_types'"},
    {"{\"layer_types\": \"0__2_2_4\"}", NULL, "'layer_types'"},
    {"{\"layer_types\": \"0_0_2_2_4_\"}", NULL, "'layer_types'"},
    {"{\"layer_types\": \"\"}", NULL, "'layer_types'"},
    {"{\"layer_types\": [0, 0, 2, 2, 4.5]}", NULL, "'layer_types' is 4.5"},
    {"{\"layer_types\": [0, 0, 2, 2]}", NULL, "'layer_types' has 4 entries"},
    {"{\"layer_types\": [0, \"full_attention\", 2, 2, 4]}", NULL, "'layer_types' mixes"},
    {"{\"layer_types\": 5}", NULL, "'layer_types' is a number"},
    {"{\"swiftkv\": true}", NULL, "missing field 'num_key_value_layers'"},
    {"{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": \"llama_swiftkv\","
     " \"swiftkv\": false, \"num_key_value_layers\": 5}",
     NULL, "'swiftkv' = false"},
    {"{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": \"llama_swiftkv\","
     " \"swiftkv\": false}",
     NULL, "missing field 'num_key_value_layers'"},
    {"{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": \"llama_swiftkv\","
     " \"swiftkv\": false, \"num_key_value_layers\": 2, \"layer_types\": \"0_0_2_2_4\"}",
     NULL, "'swiftkv' = false"},
    {"{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": \"llama_swiftkv\"}", NULL,
     "missing field 'num_key_value_layers'"},
    {"{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": \"llama_swiftkv\","
     " \"swiftkv\": true}",
     NULL, "missing field 'num_key_value_layers'"},
    {"{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": \"llama_swiftkv\","
     " \"swiftkv\": true, \"num_key_value_layers\": 5}",
     NULL, "'num_key_value_layers' is 5"},
    {"{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": \"llama_swiftkv\","
     " \"swiftkv\": true, \"num_key_value_layers\": 2, \"key_value_group_size\": 2}",
     NULL, "'key_value_group_size' (2)"},
    {"{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": \"llama_swiftkv\","
     " \"swiftkv\": true, \"num_key_value_layers\": 2, \"key_value_group_size\": 0}",
     NULL, "'key_value_group_size'"},
    {"{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": \"llama_swiftkv\","
     " \"swiftkv\": \"yes\", \"num_key_value_layers\": 2}",
     NULL, "'swiftkv'"},
    {"{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": \"llama_swiftkv\","
     " \"swiftkv\": true, \"num_key_value_layers\": 2, \"layer_types\": \"0_0_2_2_4\"}",
     NULL, "'layer_types'"},
    /* every shape fits an int, the parameter count does not fit int64 */
    {"{\"hidden_size\": 2000000000, \"intermediate_size\": 2000000000, \"vocab_size\": 2000000000,"
     " \"num_hidden_layers\": 1024, \"num_attention_heads\": 1, \"num_key_value_heads\": 1,"
     " \"head_dim\": 2}",
     NULL, "overflows"},
    {"{\"num_attention_heads\": 2000000, \"num_key_value_heads\": 2000000, \"head_dim\": 2000}",
     NULL, "overflow"},
    {NULL, "{\"hidden_size\": 64, \"hidden_size\": 32}", "key 'hidden_size' appears twice"},
    {NULL, "{\"architectures\": [\"LlamaForCausalLM\"]", "not valid JSON"},
    {NULL, "[1, 2, 3]", "top level is a list"},
    {NULL, "", "not valid JSON"},
    {NULL, "{} trailing", "not valid JSON"},
};

static void test_bad_cases(void) {
    int n = (int)(sizeof BAD / sizeof BAD[0]);
    for (int i = 0; i < n; i++) {
        hf_config c;
        kv_error err = {0};
        char *text = BAD[i].overrides ? edited(BAD[i].overrides) : strdup(BAD[i].raw);
        int rc = hf_config_parse(&c, text, "config.json", &err);
        CHECK(rc < 0, "case %d (%s) parsed", i, text);
        CHECK(err.code == rc, "case %d: err.code %d rc %d", i, err.code, rc);
        CHECK(strstr(err.msg, BAD[i].must_name) != NULL, "case %d: message '%s' lacks '%s'", i,
              err.msg, BAD[i].must_name);
        CHECK(strncmp(err.msg, "config.json: ", 13) == 0, "case %d: message '%s' lacks the label",
              i, err.msg);
        CHECK(c.hidden_size == 0 && c.n_layers == 0, "case %d: struct not cleared on failure", i);
        free(text);
    }
    printf("%d malformed configs refused\n", n);
    kv_error err = {0};
    hf_config c;
    CHECK(parse_edited(&c, "{\"architectures\": [\"MixtralForCausalLM\"]}", &err) ==
              KV_EUNSUPPORTED,
          "unsupported architecture gives KV_EUNSUPPORTED");
    CHECK(strcmp(err.msg, "config.json: architecture 'MixtralForCausalLM' is not supported "
                          "(kvforge reads LlamaForCausalLM, LCKVLlamaForCausalLM, "
                          "LlamaSwiftKVForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and "
                          "Qwen2SwiftKVForCausalLM)") == 0,
          "exact message: %s", err.msg);
}

static void test_stories260K(void) {
    hf_config c;
    kv_error err = {0};
    int rc = hf_config_load(&c, STORIES_CONFIG, &err);
    CHECK(rc == 0, "load: %s", err.msg);
    if (rc) return;
    CHECK(strcmp(c.architecture, "LlamaForCausalLM") == 0, "arch %s", c.architecture);
    CHECK(strcmp(c.model_type, "llama") == 0, "model_type %s", c.model_type);
    CHECK(c.hidden_size == 64, "H %d", c.hidden_size);
    CHECK(c.intermediate_size == 172, "F %d", c.intermediate_size);
    CHECK(c.n_layers == 5, "L %d", c.n_layers);
    CHECK(c.n_heads == 8, "nh %d", c.n_heads);
    CHECK(c.n_kv_heads == 4, "nkv %d", c.n_kv_heads);
    CHECK(c.head_dim == 8, "hd %d", c.head_dim);
    CHECK(c.vocab_size == 512, "V %d", c.vocab_size);
    CHECK(c.max_position_embeddings == 512, "maxpos %d", c.max_position_embeddings);
    CHECK(c.rms_norm_eps == 1e-5f, "eps %g", c.rms_norm_eps);
    CHECK(c.rope.theta == 10000.0, "theta %g", c.rope.theta);
    CHECK(c.rope.scaling == KV_ROPE_PLAIN, "rope type %d", (int)c.rope.scaling);
    CHECK(c.tie_word_embeddings == 1, "tied");
    CHECK(c.attention_bias == 0 && c.mlp_bias == 0, "biases");
    CHECK(c.torch_dtype == KV_F32, "dtype %d", c.torch_dtype);
    CHECK(c.bos_token_id == 1, "bos %d", c.bos_token_id);
    CHECK(c.n_eos == 1 && c.eos_token_ids[0] == 2, "eos %d %d", c.n_eos, c.eos_token_ids[0]);
    CHECK(c.map.kind == KVMAP_IDENTITY, "plain model");
    for (int i = 0; i < 5; i++) CHECK(c.map.kv_layer_of[i] == i, "identity map at %d", i);
    CHECK(kvmap_n_slots(&c.map) == 5, "kv slots %d", kvmap_n_slots(&c.map));
    CHECK(hf_config_param_count(&c) == STORIES_PARAMS, "params %lld",
          (long long)hf_config_param_count(&c));
    /* independent: model.safetensors holds 1,040,128 bytes of F32 data */
    CHECK(STORIES_PARAMS == 1040128 / 4, "hand count matches the fixture's data bytes");

    hf_config b;
    CHECK(hf_config_parse(&b, BASE, NULL, &err) == 0, "base: %s", err.msg);
    CHECK(memcmp(&b, &c, sizeof b) == 0, "BASE parses like the fixture");

    rc = hf_config_load(&c, "/nonexistent/dir/config.json", &err);
    CHECK(rc == KV_EIO && strstr(err.msg, "/nonexistent/dir/config.json"), "missing file: %s",
          err.msg);
}

static void test_files(void) {
    char dir[] = "/tmp/kv_hfconfig_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = edited("{\"num_key_value_heads\": 3}");
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    free(text);
    hf_config c;
    kv_error err = {0};
    int rc = hf_config_load(&c, path, &err);
    CHECK(rc == KV_EFORMAT, "rc %d", rc);
    CHECK(strncmp(err.msg, path, strlen(path)) == 0 && strstr(err.msg, "num_key_value_heads"),
          "message names the file and field: %s", err.msg);
    f = fopen(path, "wb");
    fwrite("{\"a\": 1\0}", 1, 9, f);
    fclose(f);
    rc = hf_config_load(&c, path, &err);
    CHECK(rc == KV_EFORMAT && strstr(err.msg, "NUL"), "embedded NUL: %s", err.msg);
    rc = hf_config_load(&c, dir, &err);
    CHECK(rc == KV_EIO, "a directory is not a config: %s", err.msg);
    unlink(path);
    rmdir(dir);
}

static void test_defaults_and_variants(void) {
    hf_config c;
    kv_error err = {0};
    int rc = parse_edited(
        &c,
        "{\"num_key_value_heads\": \"__DELETE__\", \"head_dim\": \"__DELETE__\","
        " \"rope_theta\": \"__DELETE__\", \"tie_word_embeddings\": \"__DELETE__\","
        " \"torch_dtype\": \"__DELETE__\", \"bos_token_id\": \"__DELETE__\","
        " \"max_position_embeddings\": \"__DELETE__\", \"rope_scaling\": \"__DELETE__\","
        " \"attention_bias\": \"__DELETE__\", \"mlp_bias\": \"__DELETE__\","
        " \"rms_norm_eps\": \"__DELETE__\", \"eos_token_id\": \"__DELETE__\","
        " \"hidden_act\": \"__DELETE__\"}",
        &err);
    CHECK(rc == 0, "defaults: %s", err.msg);
    CHECK(c.n_kv_heads == 8 && c.head_dim == 8, "nkv %d hd %d", c.n_kv_heads, c.head_dim);
    CHECK(c.rope.theta == 10000.0 && c.tie_word_embeddings == 0, "theta/tie");
    CHECK(c.torch_dtype == KV_F32 && c.bos_token_id == -1, "dtype/bos");
    CHECK(c.max_position_embeddings == 2048, "maxpos default %d", c.max_position_embeddings);
    CHECK(c.rms_norm_eps == 1e-6f && c.n_eos == 0, "eps default %g, no eos", c.rms_norm_eps);
    /* nkv = 8: k, v are 64x64 now; untied: + lm_head 512*64 */
    CHECK(hf_config_param_count(&c) == STORIES_PARAMS + 5 * 4096 + 32768, "params %lld",
          (long long)hf_config_param_count(&c));

    rc = parse_edited(&c,
                      "{\"architectures\": \"__DELETE__\", \"head_dim\": null,"
                      " \"hidden_size\": 64.0, \"eos_token_id\": [2, 3], \"bos_token_id\": [1]}",
                      &err);
    CHECK(rc == 0, "variants: %s", err.msg);
    CHECK(strcmp(c.architecture, "LlamaForCausalLM") == 0, "arch from model_type");
    CHECK(c.hidden_size == 64 && c.head_dim == 8, "integral double / null head_dim");
    CHECK(c.n_eos == 2 && c.eos_token_ids[0] == 2 && c.eos_token_ids[1] == 3, "eos list");
    CHECK(c.bos_token_id == 1, "bos list");

    rc = parse_edited(&c, "{\"torch_dtype\": \"bfloat16\"}", &err);
    CHECK(rc == 0 && c.torch_dtype == KV_BF16, "bf16");
    rc = parse_edited(&c, "{\"torch_dtype\": \"__DELETE__\", \"dtype\": \"float16\"}", &err);
    CHECK(rc == 0 && c.torch_dtype == KV_F16, "dtype key");

    rc = parse_edited(&c, "{\"attention_bias\": true}", &err);
    /* q 64 + k 32 + v 32 + o 64 per layer */
    CHECK(rc == 0 && hf_config_param_count(&c) == STORIES_PARAMS + 5 * 192, "attention bias");
    rc = parse_edited(&c, "{\"mlp_bias\": true}", &err);
    /* gate 172 + up 172 + down 64 per layer */
    CHECK(rc == 0 && hf_config_param_count(&c) == STORIES_PARAMS + 5 * 408, "mlp bias");

    rc = parse_edited(&c,
                      "{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0,"
                      " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
                      " \"original_max_position_embeddings\": 8192}, \"rope_theta\": 500000.0}",
                      &err);
    CHECK(rc == 0, "llama3 rope: %s", err.msg);
    CHECK(c.rope.scaling == KV_ROPE_LLAMA3 && c.rope.factor == 8.0 &&
              c.rope.low_freq_factor == 1.0 && c.rope.high_freq_factor == 4.0 &&
              c.rope.original_max_position == 8192 && c.rope.theta == 500000.0,
          "llama3 fields");
    rc = parse_edited(&c,
                      "{\"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8,"
                      " \"low_freq_factor\": 1, \"high_freq_factor\": 4,"
                      " \"original_max_position_embeddings\": 8192}}",
                      &err);
    CHECK(rc == 0 && c.rope.scaling == KV_ROPE_LLAMA3, "legacy 'type' key: %s", err.msg);
    rc = parse_edited(&c, "{\"rope_scaling\": {\"rope_type\": \"default\"}}", &err);
    CHECK(rc == 0 && c.rope.scaling == KV_ROPE_PLAIN, "default rope type");
}

static void test_kv_maps(void) {
    hf_config c;
    kv_error err = {0};
    /* ArcticTraining's teacher mode: a SwiftKV checkpoint saved with swiftkv false reads as its
     * teacher, the SwiftKV fields kept */
    int rc0 = parse_edited(&c,
                           "{\"architectures\": [\"LlamaSwiftKVForCausalLM\"], \"model_type\": "
                           "\"llama_swiftkv\", \"swiftkv\": false, \"num_key_value_layers\": 1, "
                           "\"key_value_group_size\": 2}",
                           &err);
    CHECK(rc0 == 0 && kvmap_is_identity(&c.map) && c.swiftkv_off_l == 1 && c.swiftkv_off_g == 2 &&
              !strcmp(hf_config_schema(&c), "llama_swiftkv-off"),
          "swiftkv false: %s", err.msg);
    CHECK(rc0 || hf_config_param_count(&c) == STORIES_PARAMS, "swiftkv false counts the teacher");
    static const int lasagna[5] = {0, 0, 2, 2, 4};
    const char *forms[] = {"{\"layer_types\": \"0_0_2_2_4\"}",
                           "{\"layer_types\": [0, 0, 2, 2, 4]}"};
    for (int f = 0; f < 2; f++) {
        int rc = parse_edited(&c, forms[f], &err);
        CHECK(rc == 0, "%s: %s", forms[f], err.msg);
        CHECK(c.map.kind == KVMAP_CROSS, "has map");
        for (int i = 0; i < 5; i++) CHECK(c.map.kv_layer_of[i] == lasagna[i], "kv(%d)", i);
        CHECK(kvmap_n_slots(&c.map) == 3, "3 KV layers");
        CHECK(kvmap_is_kv_layer(&c.map, 2) && !kvmap_is_kv_layer(&c.map, 3), "kv layer test");
        /* layers 1 and 3 lose k and v (2 * 32*64 each) */
        CHECK(hf_config_param_count(&c) == STORIES_PARAMS - 2 * 4096, "params %lld",
              (long long)hf_config_param_count(&c));
        char s[64];
        CHECK(kvmap_layer_types(&c.map, s, sizeof s) == 9 && strcmp(s, "0_0_2_2_4") == 0,
              "map string %s", s);
        CHECK(kvmap_layer_types(&c.map, s, 5) >= 5, "small buffer: does not fit");
    }
    int rc = parse_edited(&c, "{\"layer_types\": \"1_1_3_3_4\"}", &err);
    CHECK(rc == 0 && c.map.kv_layer_of[0] == 1 && kvmap_n_slots(&c.map) == 3, "upward map: %s",
          err.msg);
    rc = parse_edited(&c,
                      "{\"layer_types\": [\"full_attention\", \"full_attention\","
                      " \"full_attention\", \"full_attention\", \"full_attention\"]}",
                      &err);
    CHECK(rc == 0 && c.map.kind == KVMAP_IDENTITY && kvmap_n_slots(&c.map) == 5,
          "HF kinds: no map");

    const char *swift = "{\"architectures\": [\"LlamaSwiftKVForCausalLM\"],"
                        " \"model_type\": \"llama_swiftkv\", \"swiftkv\": true,"
                        " \"num_key_value_layers\": 2, \"key_value_group_size\": 3}";
    rc = parse_edited(&c, swift, &err);
    CHECK(rc == 0, "swiftkv: %s", err.msg);
    CHECK(c.map.kind == KVMAP_SWIFTKV && c.map.swiftkv_l == 2 && c.map.swiftkv_g == 3,
          "swiftkv fields");
    CHECK(strcmp(c.model_type, "llama_swiftkv") == 0, "model type");
    CHECK(kvmap_n_slots(&c.map) == 2 + 3 / 3, "slots %d", kvmap_n_slots(&c.map));
    CHECK(kvmap_is_swiftkv_layer(&c.map, 2) && kvmap_is_kv_layer(&c.map, 2) &&
              kvmap_is_swiftkv_layer(&c.map, 3) && !kvmap_is_kv_layer(&c.map, 3) &&
              !kvmap_is_swiftkv_layer(&c.map, 1),
          "leaders");
    /* layers 0,1 unchanged; 2..4 trade q for q_proj_swiftkv (same size); only layer 2 keeps
     * k/v (as k/v_proj_swiftkv): layers 3,4 lose 4096 each; + norm_swiftkv 64 */
    CHECK(hf_config_param_count(&c) == STORIES_PARAMS - 2 * 4096 + 64, "swiftkv params %lld",
          (long long)hf_config_param_count(&c));
    rc = parse_edited(&c,
                      "{\"architectures\": [\"LlamaSwiftKVForCausalLM\"],"
                      " \"model_type\": \"llama_swiftkv\", \"swiftkv\": true,"
                      " \"num_key_value_layers\": 2}",
                      &err);
    CHECK(rc == 0 && c.map.swiftkv_g == 1 && kvmap_n_slots(&c.map) == 5, "group default 1");
    rc = parse_edited(&c,
                      "{\"architectures\": [\"LlamaSwiftKVForCausalLM\"],"
                      " \"model_type\": \"llama_swiftkv\", \"num_key_value_layers\": 3}",
                      &err);
    CHECK(rc == 0 && c.map.kind == KVMAP_SWIFTKV && c.map.swiftkv_l == 3,
          "architecture implies swiftkv: %s", err.msg);
    rc = parse_edited(&c,
                      "{\"swiftkv\": true, \"num_key_value_layers\": 2,"
                      " \"key_value_group_size\": 3}",
                      &err);
    CHECK(rc == 0 && c.map.kind == KVMAP_SWIFTKV && kvmap_n_slots(&c.map) == 3 &&
              strcmp(c.architecture, "LlamaForCausalLM") == 0,
          "explicit swiftkv fields under LlamaForCausalLM: %s", err.msg);
}

static int count_occurrences(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++) n++;
    return n;
}

static void test_write_json(void) {
    hf_config c, back;
    kv_error err = {0};
    CHECK(hf_config_parse(&c, BASE, NULL, &err) == 0, "base");
    CHECK(kvmap_parse(&c.map, "0_0_2_2_4", 5, &err) == 0, "map: %s", err.msg);
    c.torch_dtype = KV_BF16;
    char *out = NULL, *again = NULL;
    int rc = hf_config_write_json(&c, BASE, "config.json", &out, &err);
    CHECK(rc == 0 && out, "write map: %s", err.msg);
    if (!out) return;
    CHECK(hf_config_parse(&back, out, "out", &err) == 0, "reparse: %s", err.msg);
    CHECK(back.map.kind == KVMAP_CROSS && back.map.kv_layer_of[1] == 0 &&
              back.torch_dtype == KV_BF16,
          "map and dtype written");
    CHECK(strstr(out, "\"layer_types\":\t\"0_0_2_2_4\""), "LCKV string in: %s", out);
    CHECK(strstr(out, "\"torch_dtype\":\t\"bfloat16\""), "dtype string");
    CHECK(strstr(out, "\"hidden_act\":\t\"silu\""), "other keys kept");
    const char *a = strstr(out, "\"architectures\""), *h = strstr(out, "\"hidden_size\""),
               *t = strstr(out, "\"torch_dtype\""), *e = strstr(out, "\"eos_token_id\""),
               *l = strstr(out, "\"layer_types\"");
    CHECK(a && h && t && e && l && a < h && h < t && t < e && e < l,
          "order kept (torch_dtype in place), new key appended");
    rc = hf_config_write_json(&c, BASE, "config.json", &again, &err);
    CHECK(rc == 0 && again && strcmp(out, again) == 0, "deterministic");
    free(again);

    /* SwiftKV from the cross-layer text: the integer layer_types goes away */
    hf_config s = c;
    CHECK(kvmap_swiftkv(&s.map, 5, 2, 3, &err) == 0, "swiftkv map: %s", err.msg);
    char *sw = NULL;
    rc = hf_config_write_json(&s, out, "config.json", &sw, &err);
    CHECK(rc == 0 && sw, "write swiftkv: %s", err.msg);
    if (sw) {
        CHECK(hf_config_parse(&back, sw, "out", &err) == 0 && back.map.kind == KVMAP_SWIFTKV &&
                  back.map.swiftkv_l == 2 && back.map.swiftkv_g == 3,
              "swiftkv reparse: %s", err.msg);
        CHECK(strcmp(back.architecture, "LlamaSwiftKVForCausalLM") == 0 &&
                  strcmp(back.model_type, "llama_swiftkv") == 0,
              "architecture rewritten");
        CHECK(!strstr(sw, "layer_types"), "integer layer_types removed");
        CHECK(count_occurrences(sw, "\"architectures\"") == 1, "one architectures key");
        /* and back to plain llama */
        hf_config p = s;
        kvmap_identity(&p.map, 5);
        p.torch_dtype = KV_F32;
        char *plain = NULL;
        rc = hf_config_write_json(&p, sw, "config.json", &plain, &err);
        CHECK(rc == 0 && plain && !strstr(plain, "swiftkv") &&
                  !strstr(plain, "num_key_value_layers") && strstr(plain, "\"LlamaForCausalLM\""),
              "swiftkv fields removed: %s", plain ? plain : err.msg);
        free(plain);
        free(sw);
    }
    free(out);

    /* HF's string layer_types survives a plain write */
    char *kinds = edited("{\"layer_types\": [\"full_attention\", \"full_attention\","
                         " \"full_attention\", \"full_attention\", \"full_attention\"]}");
    hf_config k;
    CHECK(hf_config_parse(&k, kinds, NULL, &err) == 0, "kinds parse");
    rc = hf_config_write_json(&k, kinds, "config.json", &out, &err);
    CHECK(rc == 0 && out && count_occurrences(out, "full_attention") == 5, "string kinds kept");
    free(out);
    free(kinds);

    /* an invalid map is refused by the re-parse */
    hf_config bad = c;
    bad.map.kv_layer_of[3] = 1; /* layer 1 is not a KV layer */
    out = NULL;
    rc = hf_config_write_json(&bad, BASE, "config.json", &out, &err);
    CHECK(rc < 0 && out == NULL && strstr(err.msg, "layer_types"), "invalid map: %s", err.msg);
    bad = c;
    bad.map.kind = KVMAP_SWIFTKV; /* SwiftKV marked over the cross-layer targets */
    bad.map.swiftkv_l = 2;
    bad.map.swiftkv_g = 1;
    rc = hf_config_write_json(&bad, BASE, "config.json", &out, &err);
    CHECK(rc == KV_EINVAL && out == NULL, "map + swiftkv refused");
    bad = c;
    bad.torch_dtype = KV_I32;
    rc = hf_config_write_json(&bad, BASE, "config.json", &out, &err);
    CHECK(rc == KV_EINVAL && out == NULL, "int dtype refused");
    rc = hf_config_write_json(&c, "[1]", "config.json", &out, &err);
    CHECK(rc == KV_EFORMAT && out == NULL, "non-object source refused");
}

int main(void) {
    test_stories260K();
    test_bad_cases();
    test_files();
    test_defaults_and_variants();
    test_kv_maps();
    test_write_json();
    return check_done("test_hfconfig");
}
