/* config.json parsing: the real stories260K config, KV-map fields, and malformed configs that
 * must each fail with a message naming the field */
#include <string.h>

#include "formats/hfconfig.h"
#include "tests/check.h"

#define BASE "\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":172," \
             "\"num_hidden_layers\":5,\"num_attention_heads\":8,\"num_key_value_heads\":4,\"vocab_size\":512," \
             "\"rms_norm_eps\":1e-5,\"eos_token_id\":2"

/* BASE with one field replaced (or added): {"key": value} */
static const char *with(const char *key, const char *value) {
    static char buf[2048];
    char base[] = BASE, *out = buf, pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    char *hit = strstr(base, pat);
    out += sprintf(out, "{");
    if (hit) {
        char *end = hit + strlen(pat);
        int depth = 0;
        while (*end && !(depth == 0 && *end == ',')) { if (*end == '[' || *end == '{') depth++; if (*end == ']' || *end == '}') depth--; end++; }
        *hit = 0;
        out += sprintf(out, "%s%s%s%s", base, pat, value, end);
    } else {
        out += sprintf(out, "%s,%s%s", base, pat, value);
    }
    sprintf(out, "}");
    return buf;
}

static void expect_bad(const char *json, const char *needle) {
    hf_config c;
    kv_error err = {0};
    int rc = hf_config_parse(&c, json, "config.json", &err);
    CHECK(rc != 0, "accepted: %s", json);
    CHECK(rc != 0 && strstr(err.msg, needle) && strstr(err.msg, "config.json"), "message '%s' lacks '%s'", err.msg, needle);
}

int main(void) {
    hf_config c;
    kv_error err = {0};
    int rc = hf_config_load(&c, SHARED_DIR "/models/stories260K/config.json", &err);
    CHECK(rc == 0, "stories260K config: %s", err.msg);
    if (rc == 0) {
        CHECK(c.hidden_size == 64 && c.intermediate_size == 172 && c.n_layers == 5, "sizes");
        CHECK(c.n_heads == 8 && c.n_kv_heads == 4 && c.head_dim == 8 && c.vocab_size == 512, "heads");
        CHECK(c.max_position_embeddings == 512 && fabsf(c.rms_norm_eps - 1e-5f) < 1e-12f && c.rope_theta == 10000.0, "eps/theta");
        CHECK(c.tie_word_embeddings == 1 && !c.attention_bias && !c.mlp_bias && c.rope_type == HF_ROPE_NONE, "flags");
        CHECK(c.bos_token_id == 1 && c.n_eos == 1 && c.eos_token_ids[0] == 2 && c.torch_dtype == KV_F32, "ids/dtype");
        CHECK(!c.has_layer_map && !c.swiftkv && hf_config_kv_slots(&c) == 5, "no map");
        /* 47 F32 tensors, 1,040,128 data bytes in model.safetensors */
        CHECK(hf_config_param_count(&c) == 1040128 / 4, "param count %lld", (long long)hf_config_param_count(&c));
    }
    /* defaults, KV maps, swiftkv, rope scaling, eos lists */
    rc = hf_config_parse(&c, "{" BASE ",\"layer_types\":\"0_0_2_2_4\"}", "config.json", &err);
    CHECK(rc == 0 && c.has_layer_map && c.kv_layer_of[1] == 0 && c.kv_layer_of[4] == 4 && hf_config_kv_slots(&c) == 3, "layer_types string: %s", err.msg);
    CHECK(hf_config_param_count(&c) == 1040128 / 4 + 512 * 64 - 2 * 2 * 32 * 64, "untied, cross-layer: lm_head added, 2 layers of k/v dropped");
    rc = hf_config_parse(&c, "{" BASE ",\"layer_types\":[1,1,3,3,4]}", "config.json", &err);
    CHECK(rc == 0 && c.has_layer_map && c.kv_layer_of[0] == 1, "layer_types list: %s", err.msg);
    rc = hf_config_parse(&c, "{" BASE ",\"layer_types\":[\"full_attention\",\"full_attention\"]}", "config.json", &err);
    CHECK(rc == 0 && !c.has_layer_map, "attention kinds carry no map");
    rc = hf_config_parse(&c, "{" BASE ",\"swiftkv\":true,\"num_key_value_layers\":1,\"key_value_group_size\":2}", "config.json", &err);
    CHECK(rc == 0 && c.swiftkv && c.swiftkv_layers == 1 && c.swiftkv_group == 2 && hf_config_kv_slots(&c) == 3, "swiftkv: %s", err.msg);
    CHECK(hf_config_swiftkv_leader(&c, 1) && !hf_config_swiftkv_leader(&c, 2) && hf_config_swiftkv_leader(&c, 3), "leaders");
    rc = hf_config_parse(&c, "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":172,"
                         "\"num_hidden_layers\":2,\"num_attention_heads\":8,\"vocab_size\":128256,\"rope_scaling\":{\"rope_type\":\"llama3\","
                         "\"factor\":32.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192},"
                         "\"eos_token_id\":[128001,128008]}",
                         "config.json", &err);
    CHECK(rc == 0 && c.rope_type == HF_ROPE_LLAMA3 && c.rope_factor == 32.0 && c.rope_original_max_position == 8192 && c.n_eos == 2 && c.eos_token_ids[1] == 128008, "llama3 rope: %s", err.msg);
    rc = hf_config_parse(&c, "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":1,\"num_hidden_layers\":1,"
                         "\"num_attention_heads\":4,\"vocab_size\":10}", "config.json", &err);
    CHECK(rc == 0 && c.n_kv_heads == 4 && c.head_dim == 16 && c.bos_token_id == -1 && c.max_position_embeddings == 2048, "defaults: %s", err.msg);

    /* write_json: KV fields written in, re-parsed */
    const char *src = "{" BASE ",\"torch_dtype\":\"float32\",\"custom\":7}";
    hf_config w;
    hf_config_parse(&w, src, "config.json", &err);
    w.swiftkv = 1, w.swiftkv_layers = 3, w.swiftkv_group = 1, w.torch_dtype = KV_BF16;
    char *out = NULL;
    rc = hf_config_write_json(&w, src, "config.json", &out, &err);
    CHECK(rc == 0 && out && strstr(out, "\"custom\"") && strstr(out, "llama_swiftkv") && strstr(out, "bfloat16"), "swiftkv json: %s", err.msg);
    if (out) {
        hf_config back;
        CHECK(hf_config_parse(&back, out, "out", &err) == 0 && back.swiftkv && back.swiftkv_layers == 3 && back.torch_dtype == KV_BF16, "re-parse");
        free(out);
    }
    hf_config_parse(&w, src, "config.json", &err);
    w.has_layer_map = 1;
    int map[5] = {0, 0, 2, 2, 4};
    memcpy(w.kv_layer_of, map, sizeof map);
    rc = hf_config_write_json(&w, src, "config.json", &out, &err);
    CHECK(rc == 0 && strstr(out, "\"layer_types\":\t\"0_0_2_2_4\""), "layer_types json: %s", out ? out : err.msg);
    free(out);

    /* malformed */
    expect_bad("[1]", "not a JSON object");
    expect_bad("{", "not valid JSON");
    expect_bad("{\"architectures\":[\"LlamaForCausalLM\"]}", "hidden_size");
    expect_bad(with("architectures", "[\"MistralForCausalLM\"]"), "MistralForCausalLM");
    expect_bad("{\"hidden_size\":64}", "architectures");
    expect_bad(with("hidden_size", "\"64\""), "hidden_size");
    expect_bad(with("hidden_size", "64.5"), "whole number");
    expect_bad(with("hidden_size", "-64"), "hidden_size");
    expect_bad(with("num_key_value_heads", "3"), "multiple");
    expect_bad(with("num_hidden_layers", "5000"), "num_hidden_layers");
    expect_bad(with("layer_types", "\"0_0_2\""), "3 entries");
    expect_bad(with("layer_types", "\"0_0_9_2_4\""), "not a layer");
    expect_bad(with("layer_types", "\"1_0_2_2_4\""), "not a KV layer");
    expect_bad(with("layer_types", "\"0-0-2-2-4\""), "joined");
    expect_bad(with("rope_scaling", "{\"rope_type\":\"yarn\",\"factor\":2}"), "yarn");
    expect_bad(with("rope_scaling", "{\"rope_type\":\"llama3\",\"factor\":8}"), "low_freq_factor");
    expect_bad(with("rope_scaling", "7"), "rope_scaling");
    expect_bad(with("tie_word_embeddings", "1"), "tie_word_embeddings");
    expect_bad(with("eos_token_id", "9999"), "eos_token_id");
    expect_bad(with("torch_dtype", "\"float8\""), "torch_dtype");
    expect_bad(with("rms_norm_eps", "0"), "rms_norm_eps");
    expect_bad(with("hidden_act", "\"gelu\""), "hidden_act");
    expect_bad(with("swiftkv", "true"), "num_key_value_layers");
    expect_bad(with("swiftkv", "true,\"num_key_value_layers\":2,\"key_value_group_size\":2"), "multiple of key_value_group_size");
    expect_bad(with("swiftkv", "true,\"num_key_value_layers\":5"), "num_key_value_layers");
    expect_bad(with("head_dim", "7"), "head_dim");
    expect_bad("{" BASE ",\"hidden_size\":64}", "appears twice");
    CHECK(hf_config_load(&c, "/nonexistent/config.json", &err) != 0 && strstr(err.msg, "/nonexistent/config.json"), "missing file named");
    return check_done("test_hfconfig");
}
