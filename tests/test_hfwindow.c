/* Sliding windows in config.json (formats/hfwindow.h): which layers get which window for
 * Mistral, Qwen2 (use_sliding_window, max_window_layers, an HF layer_types list), LCKV's 's'
 * suffix and HF's "sliding_attention" kinds; windows that reach every position read as none;
 * SwiftKV with windows refused; and the writer keeping them: LCKV's 's' suffix with
 * sliding_window (also for the identity and for Mistral's cross-layer output), Mistral's and
 * Qwen2's own fields unchanged, each output read back with the same windows and written again
 * to the same text. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/hfconfig.h"
#include "formats/kvmap.h"
#include "tests/check.h"

#define L 4

/* a config of 4 layers with FAMILY's architecture / model_type, max_position_embeddings MAXPOS
 * and EXTRA fields appended (", \"k\": v" or "") */
static void make(char *buf, size_t cap, const char *arch, const char *type, int maxpos,
                 const char *extra) {
    snprintf(buf, cap,
             "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"hidden_size\": 64, "
             "\"intermediate_size\": 128, \"num_hidden_layers\": 4, \"num_attention_heads\": 4, "
             "\"num_key_value_heads\": 2, \"vocab_size\": 300, \"max_position_embeddings\": %d%s}",
             arch, type, maxpos, extra);
}

/* parses TEXT and checks its per-layer windows against WANT [L] */
static void expect_windows(const char *text, const int *want, const char *what) {
    hf_config *c = malloc(sizeof *c);
    kv_error err = {0};
    int rc = hf_config_parse(c, text, what, &err);
    CHECK(rc == 0, "%s: %s", what, err.msg);
    int w = 0;
    for (int i = 0; i < L; i++)
        if (want[i]) w = want[i];
    if (!rc) {
        for (int i = 0; i < L; i++)
            CHECK(c->layer_window[i] == want[i], "%s: layer %d window %d, want %d", what, i,
                  c->layer_window[i], want[i]);
        CHECK(c->sliding_window == w, "%s: sliding_window %d, want %d", what, c->sliding_window, w);
    }
    free(c);
}

static void expect_refused(const char *text, int code, const char *want, const char *what) {
    hf_config *c = malloc(sizeof *c);
    kv_error err = {0};
    CHECK(hf_config_parse(c, text, what, &err) == code && strstr(err.msg, want),
          "%s: want %d '%s', got '%s'", what, code, want, err.msg);
    free(c);
}

static void test_read(void) {
    char t[2048];
    const int none[L] = {0}, all64[L] = {64, 64, 64, 64}, all4k[L] = {4096, 4096, 4096, 4096};
    const int top2[L] = {0, 0, 64, 64}, mid[L] = {0, 64, 64, 0};
    /* Mistral: every layer; absent 4096; null or >= max_position_embeddings: none */
    make(t, sizeof t, "MistralForCausalLM", "mistral", 1024, ", \"sliding_window\": 64");
    expect_windows(t, all64, "mistral 64");
    make(t, sizeof t, "MistralForCausalLM", "mistral", 8192, "");
    expect_windows(t, all4k, "mistral default");
    make(t, sizeof t, "MistralForCausalLM", "mistral", 1024, ", \"sliding_window\": null");
    expect_windows(t, none, "mistral null");
    make(t, sizeof t, "MistralForCausalLM", "mistral", 1024, ", \"sliding_window\": 1024");
    expect_windows(t, none, "mistral window = context");
    /* Qwen2: use_sliding_window, layers >= max_window_layers (default 28), or HF's list */
    make(t, sizeof t, "Qwen2ForCausalLM", "qwen2", 1024,
         ", \"use_sliding_window\": true, \"sliding_window\": 64, \"max_window_layers\": 2");
    expect_windows(t, top2, "qwen2 max_window_layers 2");
    make(t, sizeof t, "Qwen2ForCausalLM", "qwen2", 1024,
         ", \"use_sliding_window\": true, \"sliding_window\": 64");
    expect_windows(t, none, "qwen2 default max_window_layers 28 > L");
    make(t, sizeof t, "Qwen2ForCausalLM", "qwen2", 1024,
         ", \"use_sliding_window\": false, \"sliding_window\": 64, \"max_window_layers\": 0");
    expect_windows(t, none, "qwen2 use_sliding_window false");
    make(t, sizeof t, "Qwen2ForCausalLM", "qwen2", 1024,
         ", \"use_sliding_window\": true, \"sliding_window\": 64, \"max_window_layers\": 3, "
         "\"layer_types\": [\"full_attention\", \"sliding_attention\", \"sliding_attention\", "
         "\"full_attention\"]");
    expect_windows(t, mid, "qwen2 layer_types list wins over max_window_layers");
    /* LCKV's 's' suffix (sliding_window absent: LCKV's 4096) and HF's kinds on a Llama */
    make(t, sizeof t, "LCKVLlamaForCausalLM", "lckv-llama", 1024,
         ", \"layer_types\": \"0_1s_2s_3\", \"sliding_window\": 64");
    expect_windows(t, mid, "lckv 's'");
    const int mid4k[L] = {0, 4096, 4096, 0};
    make(t, sizeof t, "LCKVLlamaForCausalLM", "lckv-llama", 8192,
         ", \"layer_types\": \"0_1s_1s_3\"");
    expect_windows(t, mid4k, "lckv 's' default window, cross-layer map");
    make(t, sizeof t, "LlamaForCausalLM", "llama", 1024,
         ", \"sliding_window\": 64, \"layer_types\": [\"full_attention\", "
         "\"sliding_attention\", \"sliding_attention\", \"full_attention\"]");
    expect_windows(t, mid, "llama with HF kinds");
    /* refused */
    make(t, sizeof t, "LlamaForCausalLM", "llama", 1024,
         ", \"layer_types\": [\"full_attention\", \"sliding_attention\", \"full_attention\", "
         "\"full_attention\"]");
    expect_refused(t, KV_EFORMAT, "layer 1 attends over a sliding window", "llama no width");
    make(t, sizeof t, "LlamaForCausalLM", "llama", 1024,
         ", \"sliding_window\": 64, \"layer_types\": [\"full_attention\", \"sliding_attention\"]");
    expect_refused(t, KV_EFORMAT, "has 2 entries but the model has 4 layers", "short kinds list");
    make(t, sizeof t, "Qwen2SwiftKVForCausalLM", "qwen2_swiftkv", 1024,
         ", \"use_sliding_window\": true, \"sliding_window\": 64, \"max_window_layers\": 0, "
         "\"swiftkv\": true, \"num_key_value_layers\": 2");
    expect_refused(t, KV_EUNSUPPORTED, "together with SwiftKV", "swiftkv with windows");
    make(t, sizeof t, "MistralForCausalLM", "mistral", 1024, ", \"sliding_window\": 0");
    expect_refused(t, KV_EFORMAT, "'sliding_window'", "window 0");
}

/* TEXT written with MAP: model_type TYPE, layer_types (when LT) equal to LT, sliding_window
 * present as WINDOW_KEY says; reads back with the same map and windows; writes again the same */
static void check_write(const char *text, const char *map_spec, const char *type, const char *lt,
                        int window_key, const char *what) {
    hf_config *c = malloc(sizeof *c), *back = malloc(sizeof *back);
    kv_error err = {0};
    char *out = NULL, *again = NULL;
    CHECK(hf_config_parse(c, text, what, &err) == 0, "%s: %s", what, err.msg);
    CHECK(kvmap_parse(&c->map, map_spec, L, &err) == 0, "%s: map: %s", what, err.msg);
    CHECK(hf_config_write_json(c, text, what, &out, &err) == 0, "%s: write: %s", what, err.msg);
    cJSON *o = out ? cJSON_Parse(out) : NULL;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(o, "model_type");
    const cJSON *lts = cJSON_GetObjectItemCaseSensitive(o, "layer_types");
    CHECK(cJSON_IsString(mt) && !strcmp(mt->valuestring, type), "%s: model_type %s, want %s", what,
          cJSON_IsString(mt) ? mt->valuestring : "?", type);
    if (lt)
        CHECK(cJSON_IsString(lts) && !strcmp(lts->valuestring, lt), "%s: layer_types %s, want %s",
              what, cJSON_IsString(lts) ? lts->valuestring : "?", lt);
    CHECK((cJSON_GetObjectItemCaseSensitive(o, "sliding_window") != NULL) == window_key,
          "%s: sliding_window %s", what, window_key ? "missing" : "present");
    CHECK(out && hf_config_parse(back, out, what, &err) == 0 && kvmap_equal(&back->map, &c->map) &&
              !memcmp(back->layer_window, c->layer_window, sizeof(int) * L) &&
              back->sliding_window == c->sliding_window,
          "%s: does not read back with its map and windows: %s", what, err.msg);
    CHECK(out && hf_config_write_json(back, out, what, &again, &err) == 0 && again &&
              !strcmp(again, out),
          "%s: writing the output again changes it", what);
    cJSON_Delete(o);
    free(out), free(again), free(c), free(back);
}

static void test_write(void) {
    char t[2048];
    make(t, sizeof t, "LCKVLlamaForCausalLM", "lckv-llama", 1024,
         ", \"layer_types\": \"0_1s_2s_3\", \"sliding_window\": 64");
    check_write(t, "0_0_2_2", "lckv-llama", "0_0s_2s_2", 1, "lckv cross");
    check_write(t, "0_1_2_3", "lckv-llama", "0_1s_2s_3", 1, "lckv identity stays lckv");
    make(t, sizeof t, "MistralForCausalLM", "mistral", 1024, ", \"sliding_window\": 64");
    check_write(t, "0_0_2_2", "lckv-llama", "0s_0s_2s_2s", 1, "mistral cross: 's' everywhere");
    check_write(t, "0_1_2_3", "mistral", NULL, 1, "mistral identity");
    make(t, sizeof t, "Qwen2ForCausalLM", "qwen2", 1024,
         ", \"use_sliding_window\": true, \"sliding_window\": 64, \"max_window_layers\": 2");
    check_write(t, "0_0_2_2", "qwen2", "0_0_2_2", 1, "qwen2 cross keeps its own fields");
    make(t, sizeof t, "LlamaForCausalLM", "llama", 1024,
         ", \"sliding_window\": 64, \"layer_types\": [\"full_attention\", "
         "\"sliding_attention\", \"sliding_attention\", \"full_attention\"]");
    check_write(t, "0_1_2_3", "lckv-llama", "0_1s_2s_3", 1, "llama kinds -> lckv");
    /* SwiftKV over windows: refused by name */
    make(t, sizeof t, "MistralForCausalLM", "mistral", 1024, ", \"sliding_window\": 64");
    hf_config *c = malloc(sizeof *c);
    kv_error err = {0};
    char *out = NULL;
    CHECK(hf_config_parse(c, t, "m", &err) == 0, "%s", err.msg);
    kvmap_swiftkv(&c->map, L, 2, 1, &err);
    CHECK(hf_config_write_json(c, t, "m", &out, &err) == KV_EUNSUPPORTED && !out &&
              strstr(err.msg, "SwiftKV map on a model with sliding-window layers (window 64)"),
          "swiftkv over windows: %s", err.msg);
    free(c);
}

int main(void) {
    test_read();
    test_write();
    return check_done("test_hfwindow");
}
