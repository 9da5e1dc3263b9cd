/* Mistral and Qwen2 configs (docs/INTEROP.md): read as Llama-family
 * models with their biases and window fields checked; the schemas their SwiftKV and cross-layer
 * outputs are written in (Mistral: llama_swiftkv / lckv-llama without sliding_window, mistral
 * when unchanged; Qwen2: qwen2_swiftkv / qwen2 + layer_types, qwen2 when unchanged), read back
 * as the same map; parameter counts with Qwen2's q/k/v biases and no o bias. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/hfconfig.h"
#include "formats/kvmap.h"
#include "tests/check.h"

#define L 4

static const char *const mistral_cfg =
    "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\", \"hidden_size\": "
    "64, \"intermediate_size\": 128, \"num_hidden_layers\": 4, \"num_attention_heads\": 8, "
    "\"num_key_value_heads\": 2, \"head_dim\": 16, \"vocab_size\": 300, "
    "\"max_position_embeddings\": 1024, \"sliding_window\": %s, \"tie_word_embeddings\": false}";

static const char *const qwen2_cfg =
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", \"hidden_size\": 64, "
    "\"intermediate_size\": 128, \"num_hidden_layers\": 4, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 2, \"vocab_size\": 300, \"max_position_embeddings\": 1024, "
    "\"rope_theta\": 1000000.0, \"use_sliding_window\": false, \"sliding_window\": 1024, "
    "\"max_window_layers\": 2, \"tie_word_embeddings\": true%s}";

static const char *field_str(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(it) ? it->valuestring : "";
}

/* writes SRC with MAP, checks model_type / architecture, that it reads back with the map, and
 * whether sliding_window survived */
static void check_written(const char *src, const kv_map *map, const char *type, const char *arch,
                          int window_kept, const char *what) {
    hf_config *c = malloc(sizeof *c), *back = malloc(sizeof *back);
    kv_error err = {0};
    char *out = NULL;
    CHECK(hf_config_parse(c, src, what, &err) == 0, "%s: %s", what, err.msg);
    c->map = *map;
    CHECK(hf_config_write_json(c, src, what, &out, &err) == 0, "%s: write: %s", what, err.msg);
    cJSON *o = out ? cJSON_Parse(out) : NULL;
    CHECK(o && !strcmp(field_str(o, "model_type"), type), "%s: model_type %s, want %s", what,
          o ? field_str(o, "model_type") : "?", type);
    const cJSON *archs = o ? cJSON_GetObjectItemCaseSensitive(o, "architectures") : NULL;
    const cJSON *a0 = cJSON_GetArrayItem(archs, 0);
    CHECK(cJSON_IsString(a0) && !strcmp(a0->valuestring, arch), "%s: architecture, want %s", what,
          arch);
    CHECK(o && (cJSON_GetObjectItemCaseSensitive(o, "sliding_window") != NULL) == window_kept,
          "%s: sliding_window %s", what, window_kept ? "dropped" : "kept");
    CHECK(out && hf_config_parse(back, out, what, &err) == 0 && kvmap_equal(&back->map, map),
          "%s: reads back: %s", what, err.msg);
    cJSON_Delete(o);
    free(out);
    free(c);
    free(back);
}

static void test_mistral(void) {
    hf_config c;
    kv_error err = {0};
    char text[2048];
    static const char *const ok_windows[] = {"null", "1024", "4096"};
    for (int k = 0; k < 3; k++) {
        snprintf(text, sizeof text, mistral_cfg, ok_windows[k]);
        CHECK(hf_config_parse(&c, text, "m", &err) == 0, "sliding_window %s: %s", ok_windows[k],
              err.msg);
        CHECK(c.family == HF_FAMILY_MISTRAL && c.head_dim == 16 && !c.attention_bias && !c.o_bias &&
                  !strcmp(hf_config_schema(&c), "mistral"),
              "mistral read as a Llama family model");
    }
    snprintf(text, sizeof text, mistral_cfg, "1023");
    CHECK(hf_config_parse(&c, text, "m", &err) == 0 && c.sliding_window == 1023 &&
              c.layer_window[0] == 1023 && c.layer_window[L - 1] == 1023,
          "window below max_position_embeddings: every layer's: %s", err.msg);
    snprintf(text, sizeof text, mistral_cfg, "null");
    kv_map map;
    kvmap_swiftkv(&map, L, 2, 1, &err);
    check_written(text, &map, "llama_swiftkv", "LlamaSwiftKVForCausalLM", 0, "mistral swiftkv");
    kvmap_parse(&map, "0_0_2_2", L, &err);
    check_written(text, &map, "lckv-llama", "LCKVLlamaForCausalLM", 0, "mistral cross-layer");
    kvmap_identity(&map, L);
    check_written(text, &map, "mistral", "MistralForCausalLM", 1, "mistral identity");
}

static void test_qwen2(void) {
    hf_config c;
    kv_error err = {0};
    char text[2048];
    snprintf(text, sizeof text, qwen2_cfg, "");
    CHECK(hf_config_parse(&c, text, "q", &err) == 0, "qwen2: %s", err.msg);
    CHECK(c.family == HF_FAMILY_QWEN2 && c.attention_bias && !c.o_bias && !c.mlp_bias &&
              c.rope.theta == 1e6 && !strcmp(hf_config_schema(&c), "qwen2"),
          "qwen2: q/k/v biases, no o bias");
    /* H=64, F=128, V=300, L=4, nh=4, nkv=2, hd=16, tied: embed 300*64; per layer 2*64 norms,
     * q 64*(64+1), k and v 2*32*(64+1), o 64*64, MLP 3*64*128; final norm 64 */
    const int64_t layer = 2 * 64 + 64 * 65 + 2 * 32 * 65 + 64 * 64 + 3 * 64 * 128;
    CHECK(hf_config_param_count(&c) == 300 * 64 + 4 * layer + 64, "qwen2 params %lld",
          (long long)hf_config_param_count(&c));
    snprintf(text, sizeof text, qwen2_cfg, ", \"attention_bias\": false");
    CHECK(hf_config_parse(&c, text, "q", &err) == 0 && c.attention_bias && !c.o_bias,
          "qwen2 biases whatever attention_bias says");
    snprintf(text, sizeof text, qwen2_cfg, ", \"use_sliding_window\": true");
    /* a duplicate key: refused as such; the window itself below */
    CHECK(hf_config_parse(&c, text, "q", &err) != 0, "duplicate use_sliding_window accepted");
    snprintf(text, sizeof text, qwen2_cfg, "");
    kv_map map;
    kvmap_swiftkv(&map, L, 2, 2, &err);
    check_written(text, &map, "qwen2_swiftkv", "Qwen2SwiftKVForCausalLM", 1, "qwen2 swiftkv");
    kvmap_parse(&map, "0_0_2_2", L, &err);
    check_written(text, &map, "qwen2", "Qwen2ForCausalLM", 1, "qwen2 cross-layer");
    kvmap_identity(&map, L);
    check_written(text, &map, "qwen2", "Qwen2ForCausalLM", 1, "qwen2 identity");
    /* ArcticTraining's own qwen2_swiftkv config (swiftkv implied by the architecture) */
    char skv[2048];
    snprintf(skv, sizeof skv,
             "{\"architectures\": [\"Qwen2SwiftKVForCausalLM\"], \"model_type\": "
             "\"qwen2_swiftkv\", \"num_key_value_layers\": 2, \"key_value_group_size\": 1, %s",
             strstr(text, "\"hidden_size\""));
    CHECK(hf_config_parse(&c, skv, "qs", &err) == 0 && c.map.kind == KVMAP_SWIFTKV &&
              c.map.swiftkv_l == 2 && c.attention_bias && !c.o_bias &&
              !strcmp(hf_config_schema(&c), "qwen2_swiftkv"),
          "qwen2_swiftkv read: %s", err.msg);
}

int main(void) {
    test_mistral();
    test_qwen2();
    return check_done("test_families");
}
