/* llama_view binds stories260K completely; missing, mis-shaped, mistyped and unknown tensors are
 * reported by name; cross-layer and SwiftKV layouts (hand-built and from kvconvert) bind with
 * the documented optional tensors; model_info numbers derived by hand from the shapes. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "formats/hfconfig.h"
#include "formats/llama_view.h"
#include "transform/convert/model_info.h"
#include "formats/safetensors.h"
#include "transform/synth/synth.h"
#include "transform/convert/convert.h"
#include "formats/kvmap.h"
#include "tests/check.h"

#define SRC            SHARED_DIR "/models/stories260K"
#define STORIES_PARAMS 260032 /* 1,040,128 F32 data bytes / 4 */

static char tmp[64];
static char *stories_config; /* config.json text */
static st_checkpoint stories;

/* ---- building variants of stories260K ---- */

typedef struct {
    const char *name;
    int n_dims;
    int64_t shape[2];
    kv_dtype dtype;
} edit;

/* DIR/{config.json, model.safetensors}: stories tensors minus DROP (names; a trailing '*' drops a
 * prefix), with EDITS replacing a tensor (zeros of the new shape/dtype) or adding one */
static int write_variant(const char *dir, const char *config, const char *const *drop, int n_drop,
                         const edit *edits, int n_edits) {
    kv_error err = {0};
    int cap = stories.n_tensors + n_edits;
    st_spec *specs = calloc((size_t)cap, sizeof *specs);
    const void **data = calloc((size_t)cap, sizeof *data);
    void **owned = calloc((size_t)cap, sizeof *owned);
    int n = 0, rc = 0;
    for (int i = 0; i < stories.n_tensors; i++) {
        const st_tensor *t = stories.tensors[i];
        int dropped = 0;
        for (int d = 0; d < n_drop; d++) {
            size_t len = strlen(drop[d]);
            if (len && drop[d][len - 1] == '*') dropped |= strncmp(t->name, drop[d], len - 1) == 0;
            else dropped |= strcmp(t->name, drop[d]) == 0;
        }
        int edited = 0;
        for (int e = 0; e < n_edits; e++) edited |= strcmp(edits[e].name, t->name) == 0;
        if (dropped || edited) continue;
        specs[n] = (st_spec){.name = t->name, .dtype = t->dtype, .n_dims = t->n_dims};
        memcpy(specs[n].shape, t->shape, sizeof t->shape);
        data[n++] = t->data;
    }
    for (int e = 0; e < n_edits; e++) {
        specs[n] =
            (st_spec){.name = edits[e].name, .dtype = edits[e].dtype, .n_dims = edits[e].n_dims};
        specs[n].shape[0] = edits[e].shape[0];
        specs[n].shape[1] = edits[e].shape[1];
        owned[n] = calloc(st_spec_bytes(&specs[n]) + 1, 1);
        data[n] = owned[n];
        n++;
    }
    char path[256];
    rc = kv_mkdir_p(dir, &err);
    if (!rc) rc = kv_join(path, sizeof path, dir, "model.safetensors", &err);
    const char *meta[] = {"format", "pt"};
    if (!rc) rc = st_write_file(path, specs, data, n, meta, 1, &err);
    if (!rc) rc = kv_join(path, sizeof path, dir, "config.json", &err);
    if (!rc) rc = kv_write_file_atomic(path, config, strlen(config), &err);
    CHECK(rc == 0, "writing variant %s: %s", dir, err.msg);
    for (int i = 0; i < cap; i++) free(owned[i]);
    free(owned);
    free(data);
    free(specs);
    return rc;
}

/* stories config with KV fields / dtype set through the writer under test's sibling */
static char *config_with(void (*edit_fn)(hf_config *)) {
    hf_config c;
    kv_error err = {0};
    if (hf_config_parse(&c, stories_config, "config.json", &err)) return NULL;
    edit_fn(&c);
    char *out = NULL;
    CHECK(hf_config_write_json(&c, stories_config, "config.json", &out, &err) == 0, "config: %s",
          err.msg);
    return out;
}

/* stories config.json text with `"key": value` text replaced (first occurrence) */
static char *config_replace(const char *from, const char *to) {
    const char *hit = strstr(stories_config, from);
    if (!hit) {
        CHECK(0, "'%s' not in the stories config", from);
        return strdup(stories_config);
    }
    size_t a = (size_t)(hit - stories_config), nf = strlen(from), nt = strlen(to);
    char *out = malloc(strlen(stories_config) - nf + nt + 1);
    memcpy(out, stories_config, a);
    memcpy(out + a, to, nt);
    strcpy(out + a + nt, hit + nf);
    return out;
}

/* opens DIR expecting failure whose message contains every needle */
static void expect_fail(const char *dir, int code, const char *n1, const char *n2) {
    llama_model_dir *m = malloc(sizeof *m);
    kv_error err = {0};
    int rc = llama_view_open_dir(m, dir, &err);
    CHECK(rc != 0, "%s: bound but should not", dir);
    if (rc == 0) llama_view_close_dir(m);
    CHECK(code == 0 || rc == code, "%s: rc %d want %d (%s)", dir, rc, code, err.msg);
    CHECK(strstr(err.msg, n1) != NULL, "%s: '%s' lacks '%s'", dir, err.msg, n1);
    CHECK(!n2 || strstr(err.msg, n2) != NULL, "%s: '%s' lacks '%s'", dir, err.msg, n2);
    free(m);
}

static llama_model_dir *expect_open(const char *dir) {
    llama_model_dir *m = malloc(sizeof *m);
    kv_error err = {0};
    int rc = llama_view_open_dir(m, dir, &err);
    CHECK(rc == 0, "%s: %s", dir, err.msg);
    if (rc) {
        free(m);
        return NULL;
    }
    return m;
}

static void close_dir(llama_model_dir *m) {
    if (!m) return;
    llama_view_close_dir(m);
    free(m);
}

static const st_tensor *find(const llama_model_dir *m, const char *fmt, int layer) {
    char name[160];
    snprintf(name, sizeof name, fmt, layer);
    return st_checkpoint_find(&m->ckpt, name);
}

/* ---- tests ---- */

static void test_stories(void) {
    llama_model_dir *m = expect_open(SRC);
    if (!m) return;
    const llama_view *v = &m->view;
    CHECK(v->n_layers == 5 && v->n_bound == 47 && v->n_ignored == 0, "bound %d ignored %d",
          v->n_bound, v->n_ignored);
    CHECK(v->n_params == STORIES_PARAMS && v->n_params_bound == STORIES_PARAMS, "params %lld",
          (long long)v->n_params);
    CHECK(v->bytes_by_dtype[KV_F32] == 1040128, "F32 bytes %zu", v->bytes_by_dtype[KV_F32]);
    CHECK(v->embed == st_checkpoint_find(&m->ckpt, "model.embed_tokens.weight"), "embed");
    CHECK(v->norm == st_checkpoint_find(&m->ckpt, "model.norm.weight"), "norm");
    CHECK(v->lm_head == NULL && llama_view_output(v) == v->embed, "tied output is embed");
    CHECK(v->norm_swiftkv == NULL, "no swiftkv norm");
    for (int i = 0; i < 5; i++) {
        const llama_layer_view *L = &v->layers[i];
        CHECK(L->input_norm == find(m, "model.layers.%d.input_layernorm.weight", i), "in norm %d",
              i);
        CHECK(L->post_norm == find(m, "model.layers.%d.post_attention_layernorm.weight", i),
              "post %d", i);
        CHECK(L->q == find(m, "model.layers.%d.self_attn.q_proj.weight", i), "q %d", i);
        CHECK(L->k == find(m, "model.layers.%d.self_attn.k_proj.weight", i), "k %d", i);
        CHECK(L->v == find(m, "model.layers.%d.self_attn.v_proj.weight", i), "v %d", i);
        CHECK(L->o == find(m, "model.layers.%d.self_attn.o_proj.weight", i), "o %d", i);
        CHECK(L->gate == find(m, "model.layers.%d.mlp.gate_proj.weight", i), "gate %d", i);
        CHECK(L->up == find(m, "model.layers.%d.mlp.up_proj.weight", i), "up %d", i);
        CHECK(L->down == find(m, "model.layers.%d.mlp.down_proj.weight", i), "down %d", i);
        CHECK(L->q && L->k && L->k->shape[0] == 32 && L->k->shape[1] == 64 && L->down &&
                  L->down->shape[0] == 64 && L->down->shape[1] == 172,
              "shapes %d", i);
        CHECK(!L->q_bias && !L->k_bias && !L->o_bias && !L->gate_bias && !L->q_swiftkv &&
                  !L->k_swiftkv,
              "no biases / swiftkv on %d", i);
    }

    /* model_info by hand: KV cache 2 * 5 slots * 4 heads * 8 * 4 bytes = 1280 */
    model_info mi;
    kv_error err = {0};
    CHECK(model_info_fill(&mi, v, &err) == 0, "info: %s", err.msg);
    CHECK(mi.n_params == STORIES_PARAMS && mi.n_params_config == STORIES_PARAMS, "info params");
    CHECK(mi.kv_slots == 5 && mi.kv_bytes_per_token == 1280 && mi.kv_bytes_per_token_full == 1280,
          "kv bytes %zu", mi.kv_bytes_per_token);
    CHECK(mi.kv_kind == MODEL_KV_IDENTITY && strcmp(mi.kv_map, "0_1_2_3_4") == 0, "map %s",
          mi.kv_map);
    CHECK(mi.bytes_total == 1040128 && mi.n_tensors == 47 && mi.n_files == 1, "bytes/tensors");
    char *text = NULL, *json = NULL;
    CHECK(model_info_text(&mi, "stories260K", &text, &err) == 0 && text, "text: %s", err.msg);
    CHECK(text && strstr(text, "LlamaForCausalLM") && strstr(text, "260032") &&
              strstr(text, "1280 bytes/token"),
          "text: %s", text ? text : "");
    CHECK(model_info_json(&mi, &json, &err) == 0 && json, "json: %s", err.msg);
    cJSON *j = json ? cJSON_Parse(json) : NULL;
    CHECK(j != NULL, "json parses: %s", json ? json : "");
    if (j) {
        CHECK(cJSON_GetObjectItem(j, "parameters")->valuedouble == STORIES_PARAMS, "json params");
        CHECK(cJSON_GetObjectItem(j, "kv_cache_bytes_per_token")->valuedouble == 1280, "json kv");
        CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "bytes_per_dtype"), "F32")->valuedouble ==
                  1040128,
              "json bytes");
        CHECK(strcmp(cJSON_GetObjectItem(j, "kv_map_kind")->valuestring, "identity") == 0, "kind");
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(j, "tied")), "tied");
        cJSON_Delete(j);
    }
    free(text);
    free(json);
    close_dir(m);

    /* model_info_load_dir does the same from a path */
    CHECK(model_info_load_dir(&mi, SRC, &err) == 0 && mi.kv_bytes_per_token == 1280, "load dir");
}

/* the config is wrong for the checkpoint: one problem per mis-shaped tensor */
static void test_config_mismatch(void) {
    hf_config c;
    kv_error err = {0};
    llama_view v;
    char *text = config_replace("\"num_key_value_heads\": 4", "\"num_key_value_heads\": 8");
    CHECK(hf_config_parse(&c, text, "config.json", &err) == 0, "nkv 8: %s", err.msg);
    int rc = llama_view_bind(&v, &c, &stories, &err);
    CHECK(rc == KV_EFORMAT, "rc %d", rc);
    CHECK(strstr(err.msg, "model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight': "
                          "shape [32, 64] but config.json implies [64, 64] "
                          "(num_key_value_heads=8, head_dim=8, hidden_size=64)") == err.msg,
          "message: %s", err.msg);
    CHECK(strstr(err.msg, "(and 9 more problems)"), "k and v of 5 layers: %s", err.msg);
    CHECK(v.layers == NULL && v.n_bound == 0, "view left empty");
    free(text);

    text = config_replace("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
    CHECK(hf_config_parse(&c, text, "config.json", &err) == 0, "untied");
    rc = llama_view_bind(&v, &c, &stories, &err);
    CHECK(rc == KV_EFORMAT &&
              strcmp(err.msg, "model.safetensors: missing tensor 'lm_head.weight'") == 0,
          "untied: %s", err.msg);
    free(text);

    text = config_replace("\"attention_bias\": false", "\"attention_bias\": true");
    CHECK(hf_config_parse(&c, text, "config.json", &err) == 0, "bias");
    rc = llama_view_bind(&v, &c, &stories, &err);
    CHECK(rc == KV_EFORMAT &&
              strstr(err.msg, "missing tensor 'model.layers.0.self_attn.q_proj.bias'") &&
              strstr(err.msg, "(and 19 more problems)"),
          "attention bias: %s", err.msg);
    free(text);

    text = config_replace("\"intermediate_size\": 172", "\"intermediate_size\": 128");
    CHECK(hf_config_parse(&c, text, "config.json", &err) == 0, "ffn");
    rc = llama_view_bind(&v, &c, &stories, &err);
    CHECK(rc == KV_EFORMAT &&
              strstr(err.msg, "'model.layers.0.mlp.gate_proj.weight': shape [172, 64] "
                              "but config.json implies [128, 64] "
                              "(intermediate_size=128, hidden_size=64) "
                              "(and 14 more problems)"),
          "ffn: %s", err.msg);
    free(text);

    text = config_replace("\"num_hidden_layers\": 5", "\"num_hidden_layers\": 4");
    CHECK(hf_config_parse(&c, text, "config.json", &err) == 0, "L 4");
    rc = llama_view_bind(&v, &c, &stories, &err);
    CHECK(rc == KV_EFORMAT && strstr(err.msg, "unexpected tensor 'model.layers.4.") &&
              strstr(err.msg, "(and 8 more problems)"),
          "extra layer: %s", err.msg);
    free(text);
}

static void test_broken_checkpoints(void) {
    char dir[128];
    snprintf(dir, sizeof dir, "%s/no_norm", tmp);
    const char *drop_norm[] = {"model.norm.weight"};
    if (!write_variant(dir, stories_config, drop_norm, 1, NULL, 0))
        expect_fail(dir, KV_EFORMAT, "model.safetensors: missing tensor 'model.norm.weight'", NULL);

    snprintf(dir, sizeof dir, "%s/no_k3", tmp);
    const char *drop_k[] = {"model.layers.3.self_attn.k_proj.weight"};
    if (!write_variant(dir, stories_config, drop_k, 1, NULL, 0))
        expect_fail(dir, KV_EFORMAT, "missing tensor 'model.layers.3.self_attn.k_proj.weight'",
                    NULL);

    snprintf(dir, sizeof dir, "%s/bad_q", tmp);
    edit q3 = {"model.layers.2.self_attn.q_proj.weight", 2, {64, 32}, KV_F32};
    if (!write_variant(dir, stories_config, NULL, 0, &q3, 1))
        expect_fail(
            dir, KV_EFORMAT,
            "tensor 'model.layers.2.self_attn.q_proj.weight': shape [64, 32] but "
            "config.json implies [64, 64] (num_attention_heads=8, head_dim=8, hidden_size=64)",
            NULL);

    snprintf(dir, sizeof dir, "%s/norm_2d", tmp);
    edit n2 = {"model.layers.1.input_layernorm.weight", 2, {64, 1}, KV_F32};
    if (!write_variant(dir, stories_config, NULL, 0, &n2, 1))
        expect_fail(dir, KV_EFORMAT, "shape [64, 1] but config.json implies [64] (hidden_size=64)",
                    NULL);

    snprintf(dir, sizeof dir, "%s/int_norm", tmp);
    edit i32 = {"model.layers.0.post_attention_layernorm.weight", 1, {64, 0}, KV_I32};
    if (!write_variant(dir, stories_config, NULL, 0, &i32, 1))
        expect_fail(dir, KV_EUNSUPPORTED,
                    "tensor 'model.layers.0.post_attention_layernorm.weight': dtype I32", NULL);

    snprintf(dir, sizeof dir, "%s/extra", tmp);
    edit extra = {"model.layers.0.self_attn.rotary_emb.inv_freq", 1, {4, 0}, KV_F32};
    if (!write_variant(dir, stories_config, NULL, 0, &extra, 1))
        expect_fail(dir, KV_EFORMAT,
                    "unexpected tensor 'model.layers.0.self_attn.rotary_emb.inv_freq'", NULL);

    /* two problems: both counted, the first named */
    snprintf(dir, sizeof dir, "%s/two", tmp);
    const char *drop_two[] = {"model.norm.weight", "model.layers.4.mlp.up_proj.weight"};
    if (!write_variant(dir, stories_config, drop_two, 2, NULL, 0))
        expect_fail(dir, KV_EFORMAT, "missing tensor 'model.norm.weight' (and 1 more problem)",
                    NULL);

    /* tied with a stored lm_head: accepted, ignored */
    snprintf(dir, sizeof dir, "%s/tied_head", tmp);
    edit head = {"lm_head.weight", 2, {512, 64}, KV_F32};
    if (!write_variant(dir, stories_config, NULL, 0, &head, 1)) {
        llama_model_dir *m = expect_open(dir);
        if (m) {
            CHECK(m->view.lm_head == NULL && m->view.n_ignored == 1 && m->view.n_bound == 47,
                  "tied lm_head ignored");
            CHECK(llama_view_output(&m->view) == m->view.embed, "output is embed");
            CHECK(m->view.n_params == STORIES_PARAMS + 512 * 64, "params count every tensor");
        }
        close_dir(m);
        /* untied: the same file binds it */
        char *untied =
            config_replace("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
        char path[256];
        kv_error err = {0};
        snprintf(path, sizeof path, "%s/config.json", dir);
        CHECK(kv_write_file_atomic(path, untied, strlen(untied), &err) == 0, "write");
        free(untied);
        m = expect_open(dir);
        if (m) {
            CHECK(m->view.lm_head == st_checkpoint_find(&m->ckpt, "lm_head.weight") &&
                      llama_view_output(&m->view) == m->view.lm_head && m->view.n_bound == 48,
                  "untied lm_head bound");
        }
        close_dir(m);
    }
    /* a bad tied lm_head is still an error */
    snprintf(dir, sizeof dir, "%s/tied_bad_head", tmp);
    edit bad_head = {"lm_head.weight", 2, {64, 512}, KV_F32};
    if (!write_variant(dir, stories_config, NULL, 0, &bad_head, 1))
        expect_fail(dir, KV_EFORMAT,
                    "'lm_head.weight': shape [64, 512] but config.json implies [512, 64]", NULL);

    /* no config.json / bad config.json: the config error comes through */
    snprintf(dir, sizeof dir, "%s/bad_config", tmp);
    char *bad = config_replace("\"hidden_size\": 64", "\"hidden_size\": 64.5");
    if (!write_variant(dir, bad, NULL, 0, NULL, 0))
        expect_fail(dir, KV_EFORMAT, "config.json: field 'hidden_size' is 64.5", NULL);
    free(bad);
}

static void set_lasagna(hf_config *c) {
    kv_error err = {0};
    CHECK(kvmap_parse(&c->map, "0_0_2_2_4", 5, &err) == 0, "map: %s", err.msg);
}

static void test_cross_layer(void) {
    char *cfg = config_with(set_lasagna);
    if (!cfg) return;
    char dir[128];
    /* the original checkpoint under a cross-layer config: k/v of layers 1, 3 ignored */
    snprintf(dir, sizeof dir, "%s/cross_full", tmp);
    if (!write_variant(dir, cfg, NULL, 0, NULL, 0)) {
        llama_model_dir *m = expect_open(dir);
        if (m) {
            const llama_view *v = &m->view;
            CHECK(v->n_bound == 43 && v->n_ignored == 4, "bound %d ignored %d", v->n_bound,
                  v->n_ignored);
            CHECK(v->layers[1].k == NULL && v->layers[1].v == NULL && v->layers[3].k == NULL,
                  "non-KV k/v unbound");
            CHECK(v->layers[2].k && v->layers[2].v && v->layers[0].k, "KV layers bound");
            CHECK(llama_view_used(v, 1, LLAMA_K) == NULL &&
                      llama_view_used(v, 3, LLAMA_V_BIAS) == NULL &&
                      llama_view_used(v, 2, LLAMA_K) == v->layers[2].k &&
                      llama_view_used(v, 1, LLAMA_Q) == v->layers[1].q &&
                      llama_view_used(v, 4, LLAMA_DOWN) == v->layers[4].down,
                  "a forward runs k/v of KV layers only");
            model_info mi;
            kv_error err = {0};
            CHECK(model_info_fill(&mi, v, &err) == 0, "info");
            /* 3 slots: 2 * 3 * 4 * 8 * 4 = 768 */
            CHECK(mi.kv_kind == MODEL_KV_CROSS && mi.kv_slots == 3 &&
                      mi.kv_bytes_per_token == 768 && strcmp(mi.kv_map, "0_0_2_2_4") == 0,
                  "cross info %zu %s", mi.kv_bytes_per_token, mi.kv_map);
            CHECK(mi.n_params == STORIES_PARAMS && mi.n_params_config == STORIES_PARAMS - 8192,
                  "actual vs deploy params");
        }
        close_dir(m);
    }
    /* deploy layout: k/v of non-KV layers gone */
    snprintf(dir, sizeof dir, "%s/cross_deploy", tmp);
    const char *drop[] = {
        "model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight",
        "model.layers.3.self_attn.k_proj.weight", "model.layers.3.self_attn.v_proj.weight"};
    if (!write_variant(dir, cfg, drop, 4, NULL, 0)) {
        llama_model_dir *m = expect_open(dir);
        CHECK(m && m->view.n_bound == 43 && m->view.n_ignored == 0 &&
                  m->view.n_params == STORIES_PARAMS - 8192,
              "deploy cross-layer");
        close_dir(m);
    }
    /* a KV layer must keep its k */
    snprintf(dir, sizeof dir, "%s/cross_no_k2", tmp);
    const char *drop_k2[] = {"model.layers.2.self_attn.k_proj.weight"};
    if (!write_variant(dir, cfg, drop_k2, 1, NULL, 0))
        expect_fail(dir, KV_EFORMAT, "missing tensor 'model.layers.2.self_attn.k_proj.weight'",
                    NULL);
    /* an ignored k on a non-KV layer is still shape-checked */
    snprintf(dir, sizeof dir, "%s/cross_bad_k1", tmp);
    edit k1 = {"model.layers.1.self_attn.k_proj.weight", 2, {16, 64}, KV_F32};
    if (!write_variant(dir, cfg, NULL, 0, &k1, 1))
        expect_fail(dir, KV_EFORMAT, "'model.layers.1.self_attn.k_proj.weight': shape [16, 64]",
                    NULL);
    free(cfg);
}

static void set_swiftkv(hf_config *c) {
    kv_error err = {0};
    CHECK(kvmap_swiftkv(&c->map, 5, 2, 3, &err) == 0, "map: %s", err.msg);
}

static void test_swiftkv_hand_built(void) {
    char *cfg = config_with(set_swiftkv);
    if (!cfg) return;
    /* SwiftKV l=2, g=3: layers 2..4 get q_proj_swiftkv; layer 2 leads: k/v_proj_swiftkv */
    edit add[] = {
        {"model.norm_swiftkv.weight", 1, {64, 0}, KV_F32},
        {"model.layers.2.self_attn.q_proj_swiftkv.weight", 2, {64, 64}, KV_F32},
        {"model.layers.3.self_attn.q_proj_swiftkv.weight", 2, {64, 64}, KV_F32},
        {"model.layers.4.self_attn.q_proj_swiftkv.weight", 2, {64, 64}, KV_F32},
        {"model.layers.2.self_attn.k_proj_swiftkv.weight", 2, {32, 64}, KV_F32},
        {"model.layers.2.self_attn.v_proj_swiftkv.weight", 2, {32, 64}, KV_F32},
    };
    const char *drop_teacher[] = {
        "model.layers.2.self_attn.q_proj*", "model.layers.3.self_attn.q_proj*",
        "model.layers.4.self_attn.q_proj*", "model.layers.2.self_attn.k_proj*",
        "model.layers.3.self_attn.k_proj*", "model.layers.4.self_attn.k_proj*",
        "model.layers.2.self_attn.v_proj*", "model.layers.3.self_attn.v_proj*",
        "model.layers.4.self_attn.v_proj*"};
    char dir[128];
    snprintf(dir, sizeof dir, "%s/swift_deploy", tmp);
    if (!write_variant(dir, cfg, drop_teacher, 9, add, 6)) {
        llama_model_dir *m = expect_open(dir);
        if (m) {
            const llama_view *v = &m->view;
            CHECK(v->norm_swiftkv && v->n_ignored == 0, "norm_swiftkv");
            CHECK(v->layers[1].q && v->layers[1].k && !v->layers[1].q_swiftkv, "layer 1 plain");
            CHECK(v->layers[2].q_swiftkv && v->layers[2].k_swiftkv && v->layers[2].v_swiftkv &&
                      !v->layers[2].q && !v->layers[2].k,
                  "layer 2 leader");
            CHECK(v->layers[4].q_swiftkv && !v->layers[4].k_swiftkv && !v->layers[4].q, "layer 4");
            CHECK(v->n_params == hf_config_param_count(&m->config), "deploy params = config count");
            model_info mi;
            kv_error err = {0};
            CHECK(model_info_fill(&mi, v, &err) == 0, "info");
            /* slots l + (L-l)/g = 2 + 1 = 3 */
            CHECK(mi.kv_kind == MODEL_KV_SWIFTKV && mi.kv_slots == 3 &&
                      mi.kv_bytes_per_token == 768 && strcmp(mi.kv_map, "l=2,g=3") == 0 &&
                      mi.swiftkv_group == 3,
                  "swiftkv info");
        }
        close_dir(m);
    }
    /* interop: teacher q/k/v kept and bound */
    snprintf(dir, sizeof dir, "%s/swift_interop", tmp);
    if (!write_variant(dir, cfg, NULL, 0, add, 6)) {
        llama_model_dir *m = expect_open(dir);
        if (m) {
            const llama_view *v = &m->view;
            CHECK(v->layers[3].q && v->layers[3].k && v->layers[3].v && v->layers[3].q_swiftkv &&
                      !v->layers[3].k_swiftkv,
                  "teacher bound beside swiftkv");
            CHECK(v->n_ignored == 0 && v->n_bound == 47 + 6, "bound %d", v->n_bound);
            CHECK(llama_view_used(v, 3, LLAMA_Q) == v->layers[3].q_swiftkv &&
                      llama_view_used(v, 3, LLAMA_K) == NULL &&
                      llama_view_used(v, 4, LLAMA_V) == NULL &&
                      llama_view_used(v, 2, LLAMA_K) == v->layers[2].k_swiftkv &&
                      llama_view_used(v, 2, LLAMA_V) == v->layers[2].v_swiftkv &&
                      llama_view_used(v, 1, LLAMA_K) == v->layers[1].k &&
                      llama_view_used(v, 1, LLAMA_ATTN_NORM) == v->layers[1].input_norm &&
                      llama_view_used(v, 5, LLAMA_Q) == NULL,
                  "a forward runs the *_swiftkv q/k/v on layers >= l, leaders' k/v only");
        }
        close_dir(m);
    }
    /* missing leader k, k on a non-leader, missing norm_swiftkv */
    snprintf(dir, sizeof dir, "%s/swift_no_leader_k", tmp);
    if (!write_variant(dir, cfg, NULL, 0, add, 4))
        expect_fail(dir, KV_EFORMAT,
                    "missing tensor 'model.layers.2.self_attn.k_proj_swiftkv.weight'",
                    "(and 1 more problem)");
    edit add_non_leader[7];
    memcpy(add_non_leader, add, sizeof add);
    add_non_leader[6] =
        (edit){"model.layers.3.self_attn.k_proj_swiftkv.weight", 2, {32, 64}, KV_F32};
    snprintf(dir, sizeof dir, "%s/swift_non_leader", tmp);
    if (!write_variant(dir, cfg, NULL, 0, add_non_leader, 7))
        expect_fail(dir, KV_EFORMAT,
                    "unexpected tensor 'model.layers.3.self_attn.k_proj_swiftkv.weight'", NULL);
    snprintf(dir, sizeof dir, "%s/swift_no_norm", tmp);
    if (!write_variant(dir, cfg, NULL, 0, add + 1, 5))
        expect_fail(dir, KV_EFORMAT, "missing tensor 'model.norm_swiftkv.weight'", NULL);
    /* the same swiftkv tensors under a plain config: unknown */
    snprintf(dir, sizeof dir, "%s/swift_plain_config", tmp);
    if (!write_variant(dir, stories_config, NULL, 0, add, 6))
        expect_fail(dir, KV_EFORMAT, "unexpected tensor 'model.", "(and 5 more problems)");
    free(cfg);
}

/* kvconvert's own outputs bind */
static void test_converter_outputs(void) {
    struct {
        const char *spec;
        int swift_l, swift_g;
        kv_swiftkv_layout layout;
        int out_dtype;
    } cases[] = {
        {"lasagna-top:3", 0, 0, KV_LAYOUT_DEPLOY, -1},
        {"pizza-bottom:2", 0, 0, KV_LAYOUT_DEPLOY, KV_BF16},
        {NULL, 2, 3, KV_LAYOUT_DEPLOY, -1},
        {NULL, 1, 2, KV_LAYOUT_HF_SWIFTKV, KV_F16},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        kv_convert_opts o = {.out_dtype = cases[k].out_dtype, .layout = cases[k].layout};
        kv_error err = {0};
        int rc = cases[k].spec ? kvmap_parse(&o.map, cases[k].spec, 5, &err)
                               : kvmap_swiftkv(&o.map, 5, cases[k].swift_l, cases[k].swift_g, &err);
        CHECK(rc == 0, "map: %s", err.msg);
        char dir[128];
        snprintf(dir, sizeof dir, "%s/conv%zu", tmp, k);
        kv_convert_report rep;
        rc = kv_convert_run(SRC, dir, &o, &rep, NULL, NULL, &err);
        CHECK(rc == 0, "convert %zu: %s", k, err.msg);
        if (rc) continue;
        llama_model_dir *m = expect_open(dir);
        if (!m) continue;
        const llama_view *v = &m->view;
        CHECK(v->n_params == rep.params_after, "case %zu: view params %lld vs converter %lld", k,
              (long long)v->n_params, (long long)rep.params_after);
        CHECK(v->n_bound + v->n_ignored == m->ckpt.n_tensors, "every tensor accounted");
        model_info mi;
        CHECK(model_info_fill(&mi, v, &err) == 0, "info");
        CHECK(mi.kv_bytes_per_token == rep.kv_bytes_after, "case %zu: kv bytes %zu vs %zu", k,
              mi.kv_bytes_per_token, rep.kv_bytes_after);
        if (cases[k].layout == KV_LAYOUT_HF_SWIFTKV)
            CHECK(v->layers[4].q && v->layers[4].q_swiftkv && v->layers[4].q->dtype == KV_F16,
                  "interop keeps teacher q");
        if (cases[k].out_dtype == KV_BF16)
            CHECK(mi.bytes_by_dtype[KV_BF16] == (size_t)mi.n_params * 2 && mi.dtype == KV_BF16,
                  "bf16 bytes");
        close_dir(m);
    }
}

/* one binder over any source: a table in memory (over the checkpoint, or alone) */
static void test_table_source(void) {
    static hf_config c;
    kv_error err = {0};
    CHECK(hf_config_parse(&c, stories_config, "config.json", &err) == 0, "config: %s", err.msg);
    kv_tensor_source base, src;
    kv_tensor_source_checkpoint(&base, &stories);
    kv_tensor_table table = {.base = &base, .label = "table"};
    kv_tensor_source_table(&src, &table);
    llama_view v;
    CHECK(llama_view_bind_source(&v, &c, &src, &err) == 0 && v.n_bound == 47 &&
              v.n_params == STORIES_PARAMS && v.ckpt == NULL &&
              v.embed == st_checkpoint_find(&stories, "model.embed_tokens.weight"),
          "empty table over the checkpoint: %s", err.msg);
    llama_view_free(&v);
    /* the tensors in memory alone: what is missing is named by the table's label */
    st_tensor items[2] = {*st_checkpoint_find(&stories, "model.norm.weight"),
                          *st_checkpoint_find(&stories, "model.embed_tokens.weight")};
    table = (kv_tensor_table){.items = items, .n_items = 2, .label = "table"};
    kv_tensor_source_table(&src, &table);
    CHECK(llama_view_bind_source(&v, &c, &src, &err) == KV_EFORMAT &&
              strstr(err.msg, "table: missing tensor 'model.layers.0.input_layernorm.weight'") ==
                  err.msg,
          "table alone: %s", err.msg);
    /* a mis-shaped item is named with the table's label too */
    items[0].shape[0] = 32;
    table.base = &base;
    items[0].name = "model.norm_swiftkv.weight";
    CHECK(kvmap_swiftkv(&c.map, 5, 4, 1, &err) == 0, "swiftkv: %s", err.msg);
    table.n_items = 1;
    kv_tensor_source_table(&src, &table);
    CHECK(llama_view_bind_source(&v, &c, &src, &err) == KV_EFORMAT &&
              strstr(err.msg, "table: tensor 'model.norm_swiftkv.weight': shape [32]"),
          "mis-shaped item: %s", err.msg);
}

/* a sharded BF16 synthetic model binds across files */
static void test_synth_sharded(void) {
    synth_spec s;
    CHECK(synth_preset(&s, "tiny") == 0, "tiny preset");
    s.dtype = KV_BF16;
    s.shard_bytes = 40000;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/synth", tmp);
    kv_error err = {0};
    int rc = synth_write(dir, &s, &err);
    CHECK(rc == 0, "synth: %s", err.msg);
    if (rc) return;
    llama_model_dir *m = expect_open(dir);
    if (!m) return;
    CHECK(m->ckpt.n_files > 1, "sharded: %d files", m->ckpt.n_files);
    CHECK(m->view.n_params == hf_config_param_count(&m->config), "params %lld",
          (long long)m->view.n_params);
    model_info mi;
    CHECK(model_info_fill(&mi, &m->view, &err) == 0, "info");
    /* tiny: L=4, nkv=4, hd=8, bf16: 2 * 4 * 4 * 8 * 2 = 512 */
    CHECK(mi.kv_bytes_per_token == 512 && mi.bytes_by_dtype[KV_BF16] == (size_t)mi.n_params * 2,
          "bf16 info: kv %zu", mi.kv_bytes_per_token);
    char *text = NULL;
    CHECK(model_info_text(&mi, NULL, &text, &err) == 0 && text && strstr(text, "files"), "text");
    free(text);
    close_dir(m);
}

static void remove_tree(const char *dir) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int main(void) {
    kv_error err = {0};
    size_t n;
    if (kv_read_file(SRC "/config.json", &stories_config, &n, 1 << 20, &err) ||
        st_checkpoint_open(&stories, SRC, &err)) {
        CHECK(0, "fixture: %s", err.msg);
        return check_done("test_llama_view");
    }
    snprintf(tmp, sizeof tmp, "/tmp/kv_view_XXXXXX");
    if (!mkdtemp(tmp)) {
        CHECK(0, "mkdtemp");
        return check_done("test_llama_view");
    }
    test_stories();
    test_config_mismatch();
    test_broken_checkpoints();
    test_cross_layer();
    test_swiftkv_hand_built();
    test_converter_outputs();
    test_table_source();
    test_synth_sharded();
    remove_tree(tmp);
    st_checkpoint_close(&stories);
    free(stories_config);
    return check_done("test_llama_view");
}
