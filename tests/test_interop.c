/* Interoperability with the reference systems (docs/INTEROP.md):
 *   - every KV map's config.json follows LCKV's schema (lckv-llama, LCKVLlamaForCausalLM,
 *     layer_types, forward_passes, backward_passes, use_sequential, force_nodiag), reads back as
 *     the same map with LCKV's own parsing rules, and writes back byte-identical;
 *   - configs as LCKV's code saves them are read, their fields kept; the identity is a plain
 *     Llama again;
 *   - what kvforge does not support is refused by name: sliding-window layers without a width,
 *     force_nodiag, HF attention kinds other than full / sliding in layer_types, other
 *     architectures, unknown rope_scaling types (windows themselves: tests/test_hfwindow.c);
 *   - SwiftKV outputs (g = 1 and g = 2, deploy and hf-swiftkv layouts) hold exactly the tensors
 *     the llama_swiftkv loader of ArcticInference maps, layer by layer, and the serving warning
 *     (kvmap_swiftkv_serving_limits) names exactly what one of its versions cannot load. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/hfconfig.h"
#include "formats/kvmap.h"
#include "formats/safetensors.h"
#include "tests/check.h"
#include "transform/convert/convert.h"

#define STORIES SHARED_DIR "/models/stories260K"
#define L12     12

static const char *base_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 64,"
    " \"intermediate_size\": 128, \"num_hidden_layers\": 12, \"num_attention_heads\": 8,"
    " \"num_key_value_heads\": 4, \"vocab_size\": 256, \"rms_norm_eps\": 1e-05,"
    " \"torch_dtype\": \"float32\", \"tie_word_embeddings\": true}";

/* obj[key] as a string, NULL if absent or not one */
static const char *str_field(const cJSON *o, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

static int int_field(const cJSON *o, const char *key, int absent) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(it) ? (int)it->valuedouble : absent;
}

/* LCKV's reading of layer_types (utils.LayerType and its check), written here independently:
 * integers joined by '_', one per layer, each in range and a target that reads itself */
static int lckv_reads(const char *lt, int L, int *kv) {
    int n = 0;
    const char *p = lt;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || n >= L || v < 0 || v >= L) return 0;
        kv[n++] = (int)v;
        p = end;
        if (*p == '_') p++;
        else if (*p) return 0;
    }
    if (n != L) return 0;
    for (int i = 0; i < L; i++)
        if (kv[kv[i]] != kv[i]) return 0;
    return 1;
}

/* the config of MAP (passes m/b, 0/0 for unset) written from base_config; checks the schema and
 * the round trip */
static void check_map_config(const kv_map *map, int m, int b) {
    kv_error err = {0};
    hf_config *c = malloc(sizeof *c), *back = malloc(sizeof *back);
    char *out = NULL, *again = NULL;
    if (!c || !back) goto done;
    CHECK(hf_config_parse(c, base_config, "base", &err) == 0, "base: %s", err.msg);
    c->map = *map;
    c->lckv_forward_passes = m;
    c->lckv_backward_passes = b;
    int rc = hf_config_write_json(c, base_config, "out", &out, &err);
    CHECK(rc == 0, "%s: write: %s", map->name, err.msg);
    if (rc) goto done;
    cJSON *o = cJSON_Parse(out);
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(o, "architectures");
    const char *arch =
        cJSON_GetArraySize(archs) == 1 && cJSON_IsString(cJSON_GetArrayItem(archs, 0))
            ? cJSON_GetArrayItem(archs, 0)->valuestring
            : "";
    const char *type = str_field(o, "model_type");
    const int cross = map->kind == KVMAP_CROSS && !kvmap_is_identity(map),
              swift = map->kind == KVMAP_SWIFTKV;
    if (cross) {
        int kv[KVMAP_MAX_LAYERS];
        const char *lt = str_field(o, "layer_types");
        CHECK(type && !strcmp(type, "lckv-llama"), "%s: model_type %s", map->name,
              type ? type : "-");
        CHECK(!strcmp(arch, "LCKVLlamaForCausalLM"), "%s: architectures %s", map->name, arch);
        CHECK(lt && lckv_reads(lt, map->n_layers, kv), "%s: layer_types %s", map->name,
              lt ? lt : "-");
        int same = lt != NULL;
        for (int i = 0; same && i < map->n_layers; i++) same = kv[i] == kvmap_target(map, i);
        CHECK(same, "%s: layer_types %s is not the map", map->name, lt ? lt : "-");
        CHECK(int_field(o, "forward_passes", -1) == (b ? m : 7), "%s: forward_passes", map->name);
        CHECK(int_field(o, "backward_passes", -1) == (b ? b : 2), "%s: backward_passes", map->name);
        CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(o, "use_sequential")),
              "%s: use_sequential", map->name);
        CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(o, "force_nodiag")),
              "%s: force_nodiag", map->name);
        CHECK(!cJSON_GetObjectItemCaseSensitive(o, "swiftkv"), "%s: swiftkv field", map->name);
    } else {
        /* never "llama" for a model a plain Llama loader would run wrongly */
        CHECK(type && !strcmp(type, swift ? "llama_swiftkv" : "llama"), "%s: model_type %s",
              map->name, type ? type : "-");
        CHECK(!strcmp(arch, swift ? "LlamaSwiftKVForCausalLM" : "LlamaForCausalLM"),
              "%s: architectures %s", map->name, arch);
        CHECK(!cJSON_GetObjectItemCaseSensitive(o, "forward_passes") &&
                  !cJSON_GetObjectItemCaseSensitive(o, "force_nodiag") &&
                  !cJSON_GetObjectItemCaseSensitive(o, "layer_types"),
              "%s: LCKV fields on a non-LCKV config", map->name);
    }
    cJSON_Delete(o);
    /* kvforge -> reference schema -> kvforge */
    rc = hf_config_parse(back, out, "written", &err);
    CHECK(rc == 0, "%s: reparse: %s", map->name, err.msg);
    if (rc) goto done;
    CHECK(kvmap_equal(map, &back->map), "%s: map after the round trip", map->name);
    CHECK(!cross || (back->lckv_forward_passes == (b ? m : 7) &&
                     back->lckv_backward_passes == (b ? b : 2)),
          "%s: passes after the round trip", map->name);
    CHECK(!strcmp(hf_config_schema(back), cross   ? "lckv-llama"
                                          : swift ? "llama_swiftkv"
                                                  : "llama"),
          "%s: schema %s", map->name, hf_config_schema(back));
    rc = hf_config_write_json(back, out, "written", &again, &err);
    CHECK(rc == 0 && again && !strcmp(out, again), "%s: written twice differs", map->name);
done:
    free(out);
    free(again);
    free(c);
    free(back);
}

static void test_every_map(void) {
    static const char *const cfgs[] = {"pizza", "sandwich", "lasagna"};
    static const char *const tgts[] = {"bottom", "top", "middle"};
    char spec[64];
    kv_error err = {0};
    kv_map m;
    int n = 0;
    for (int c = 0; c < 3; c++)
        for (int t = 0; t < 3; t++)
            for (int l = 1; l <= L12; l++) {
                snprintf(spec, sizeof spec, "%s-%s:%d", cfgs[c], tgts[t], l);
                if (kvmap_parse(&m, spec, L12, &err)) {
                    CHECK(0, "%s: %s", spec, err.msg);
                    continue;
                }
                check_map_config(&m, 0, 0);
                n++;
            }
    for (int f = 1; f <= L12; f++) {
        snprintf(spec, sizeof spec, "cla:%d", f);
        if (!kvmap_parse(&m, spec, L12, &err)) check_map_config(&m, 0, 0), n++;
    }
    for (int w = 0; w < L12; w++) {
        snprintf(spec, sizeof spec, "lckv:%d", w);
        if (!kvmap_parse(&m, spec, L12, &err)) check_map_config(&m, 0, 0), n++;
    }
    static const char *const more[] = {"yoco",        "identity",  "0_0_0_3_3_3_11_11_11_11_10_11",
                                       "swiftkv:6,2", "swiftkv:4", "swiftkv:11"};
    for (size_t k = 0; k < sizeof more / sizeof *more; k++) {
        int rc = !strncmp(more[k], "swiftkv:", 8) ? kvmap_parse_swiftkv(&m, more[k] + 8, L12, &err)
                                                  : kvmap_parse(&m, more[k], L12, &err);
        CHECK(rc == 0, "%s: %s", more[k], err.msg);
        if (!rc) check_map_config(&m, 0, 0), n++;
    }
    /* the plan kvdistill used: --passes N --grad-passes b -> m = N - b, b */
    CHECK(kvmap_parse(&m, "pizza-top:3", L12, &err) == 0, "pizza-top:3");
    check_map_config(&m, 8, 1);
    check_map_config(&m, 0, 3);
    check_map_config(&m, 1, 2);
    printf("%d maps round-tripped through LCKV's schema\n", n);
}

/* a config as LCKV's save_pretrained writes it (sorted keys, every LCKV field) */
static const char *lckv_written =
    "{\n  \"architectures\": [\n    \"LCKVLlamaForCausalLM\"\n  ],\n  \"backward_passes\": 3,\n"
    "  \"force_nodiag\": false,\n  \"forward_passes\": 5,\n  \"hidden_size\": 64,\n"
    "  \"intermediate_size\": 128,\n  \"layer_types\": \"0_11_11_11_11_11_11_11_11_11_11_11\",\n"
    "  \"model_type\": \"lckv-llama\",\n  \"num_attention_heads\": 8,\n  \"num_hidden_layers\": "
    "12,\n"
    "  \"num_key_value_heads\": 4,\n  \"rms_norm_eps\": 1e-05,\n  \"sliding_window\": 4096,\n"
    "  \"tie_word_embeddings\": true,\n  \"torch_dtype\": \"float32\",\n"
    "  \"transformers_version\": \"4.46.3\",\n  \"use_sequential\": true,\n  \"vocab_size\": "
    "256\n}\n";

static void test_lckv_written(void) {
    kv_error err = {0};
    hf_config *c = malloc(sizeof *c), *c2 = malloc(sizeof *c2);
    char *out = NULL, *again = NULL, *plain = NULL;
    if (!c || !c2) goto done;
    int rc = hf_config_parse(c, lckv_written, "lckv", &err);
    CHECK(rc == 0, "LCKV-written config: %s", err.msg);
    if (rc) goto done;
    CHECK(c->map.kind == KVMAP_CROSS && kvmap_target(&c->map, 0) == 0 &&
              kvmap_target(&c->map, 5) == 11 && kvmap_is_upward(&c->map, 1),
          "LCKV map read");
    CHECK(c->lckv_forward_passes == 5 && c->lckv_backward_passes == 3 &&
              c->lckv_use_sequential == 1,
          "LCKV plan read: %d %d %d", c->lckv_forward_passes, c->lckv_backward_passes,
          c->lckv_use_sequential);
    CHECK(!strcmp(c->architecture, "LCKVLlamaForCausalLM") &&
              !strcmp(hf_config_schema(c), "lckv-llama"),
          "LCKV schema");
    /* LCKV -> kvforge -> kvforge: the second write changes nothing */
    rc = hf_config_write_json(c, lckv_written, "lckv", &out, &err);
    CHECK(rc == 0, "rewrite: %s", err.msg);
    if (rc) goto done;
    CHECK(strstr(out, "\"sliding_window\":\t4096") && strstr(out, "\"use_sequential\":\ttrue") &&
              strstr(out, "\"forward_passes\":\t5") &&
              strstr(out, "\"transformers_version\":\t\"4.46.3\""),
          "LCKV's fields kept: %s", out);
    rc = hf_config_parse(c2, out, "rewritten", &err);
    CHECK(rc == 0 && kvmap_equal(&c->map, &c2->map), "rewritten map: %s", err.msg);
    if (!rc) rc = hf_config_write_json(c2, out, "rewritten", &again, &err);
    CHECK(rc == 0 && again && !strcmp(out, again), "LCKV config written twice differs");
    /* the identity of an LCKV model is a plain Llama without LCKV's fields */
    kvmap_identity(&c->map, L12);
    rc = hf_config_write_json(c, lckv_written, "lckv", &plain, &err);
    CHECK(rc == 0 && plain && strstr(plain, "\"model_type\":\t\"llama\"") &&
              !strstr(plain, "sliding_window") && !strstr(plain, "passes") &&
              !strstr(plain, "layer_types") && !strstr(plain, "nodiag") && !strstr(plain, "LCKV"),
          "identity from LCKV: %s", plain ? plain : err.msg);
    /* an LCKV config without layer_types is LCKV's default, the identity */
    char *text = strdup(lckv_written);
    if (text) {
        char *lt = strstr(text, "\"layer_types\"");
        memcpy(lt, "\"layer_typez\"", 13);
        rc = hf_config_parse(c2, text, "no layer_types", &err);
        CHECK(rc == 0 && kvmap_is_identity(&c2->map) && !strcmp(hf_config_schema(c2), "lckv-llama"),
              "LCKV without layer_types: %s", err.msg);
        free(text);
    }
done:
    free(out);
    free(again);
    free(plain);
    free(c);
    free(c2);
}

/* the base config with EDIT spliced in after its opening brace */
static int parse_with(hf_config *c, const char *edit, kv_error *err) {
    char text[2048];
    snprintf(text, sizeof text, "{%s, %s", edit, base_config + 1);
    return hf_config_parse(c, text, "config.json", err);
}

static void test_refusals(void) {
    static const struct {
        const char *edit, *want;
        int code;
    } cases[] = {
        /* windowed layers without a width (only LCKV's schema defaults it) */
        {"\"layer_types\": \"0_1s_2_3_4_5_6_7_8_9_10_11\"",
         "layer 1 attends over a sliding window (field 'layer_types') but field 'sliding_window' "
         "is missing",
         KV_EFORMAT},
        {"\"layer_types\": \"11s_11_11_11_11_11_11_11_11_11_11_11\", \"sliding_window\": null",
         "layer 0 attends over a sliding window but field 'sliding_window' is null", KV_EFORMAT},
        {"\"layer_types\": [\"full_attention\", \"full_attention\", \"chunked_attention\", "
         "\"full_attention\","
         " \"full_attention\", \"full_attention\", \"full_attention\", \"full_attention\", "
         "\"full_attention\","
         " \"full_attention\", \"full_attention\", \"full_attention\"]",
         "different meaning from LCKV's KV map string); layer 2 is 'chunked_attention'",
         KV_EUNSUPPORTED},
        {"\"force_nodiag\": true", "field 'force_nodiag' is true", KV_EUNSUPPORTED},
        {"\"backward_passes\": 0", "backward_passes", KV_EFORMAT},
        {"\"forward_passes\": -1", "forward_passes", KV_EFORMAT},
        {"\"use_sequential\": 3", "use_sequential", KV_EFORMAT},
        {"\"rope_scaling\": {\"rope_type\": \"su\", \"factor\": 4.0}",
         "'su', supported:", KV_EUNSUPPORTED},
        {"\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0, \"mscale\": 1}",
         "'rope_scaling.mscale' is not read for rope_type 'dynamic'", KV_EUNSUPPORTED},
    };
    kv_error err;
    hf_config c;
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        memset(&err, 0, sizeof err);
        int rc = parse_with(&c, cases[k].edit, &err);
        CHECK(rc == cases[k].code && strstr(err.msg, cases[k].want), "%s: rc %d, message %s",
              cases[k].edit, rc, err.msg);
    }
    /* other architectures and model types, named */
    static const char *const archs[][2] = {{"Phi3ForCausalLM", "phi3"},
                                           {"Qwen3ForCausalLM", "qwen3"},
                                           {"MixtralForCausalLM", "mixtral"},
                                           {"Gemma2ForCausalLM", "gemma2"}};
    for (int k = 0; k < 4; k++) {
        char text[2048];
        snprintf(
            text, sizeof text,
            "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"sliding_window\": 4096, %s",
            archs[k][0], archs[k][1], strstr(base_config, "\"hidden_size\""));
        memset(&err, 0, sizeof err);
        CHECK(hf_config_parse(&c, text, "config.json", &err) == KV_EUNSUPPORTED &&
                  strstr(err.msg, archs[k][0]),
              "%s: %s", archs[k][0], err.msg);
        snprintf(text, sizeof text, "{\"model_type\": \"%s\", %s", archs[k][1],
                 strstr(base_config, "\"hidden_size\""));
        CHECK(hf_config_parse(&c, text, "config.json", &err) == KV_EUNSUPPORTED &&
                  strstr(err.msg, archs[k][1]),
              "%s: %s", archs[k][1], err.msg);
    }
    /* the schemas do not mix */
    char text[2048];
    snprintf(text, sizeof text, "{\"architectures\": [\"LCKVLlamaForCausalLM\"], %s",
             strstr(base_config, "\"model_type\""));
    CHECK(hf_config_parse(&c, text, "config.json", &err) == KV_EFORMAT &&
              strstr(err.msg, "does not match"),
          "LCKV architecture with model_type llama: %s", err.msg);
    snprintf(text, sizeof text,
             "{\"model_type\": \"lckv-llama\", \"swiftkv\": true, \"num_key_value_layers\": 6, %s",
             strstr(base_config, "\"hidden_size\""));
    CHECK(hf_config_parse(&c, text, "config.json", &err) == KV_EFORMAT &&
              strstr(err.msg, "contradicts"),
          "lckv-llama with swiftkv: %s", err.msg);
    /* all "full_attention" is a plain model, and the kinds stay as written */
    CHECK(parse_with(
              &c,
              "\"layer_types\": [\"full_attention\", \"full_attention\", \"full_attention\", "
              "\"full_attention\", \"full_attention\", \"full_attention\", \"full_attention\", "
              "\"full_attention\", \"full_attention\", \"full_attention\", \"full_attention\", "
              "\"full_attention\"]",
              &err) == 0 &&
              kvmap_is_identity(&c.map) && !strcmp(hf_config_schema(&c), "llama"),
          "all full_attention: %s", err.msg);
    /* the legacy form kvforge wrote before LCKV's schema is still read, and named as such */
    CHECK(parse_with(&c, "\"layer_types\": \"0_0_2_2_4_4_6_6_8_8_10_10\"", &err) == 0 &&
              c.map.kind == KVMAP_CROSS && !strcmp(hf_config_schema(&c), "llama+layer_types"),
          "legacy llama + layer_types: %s", err.msg);
    CHECK(parse_with(&c, "\"swiftkv\": true, \"num_key_value_layers\": 6", &err) == 0 &&
              !strcmp(hf_config_schema(&c), "llama+swiftkv"),
          "swiftkv under LlamaForCausalLM: %s", err.msg);
}

/* ---- SwiftKV outputs against ArcticInference's llama_swiftkv loader ----
 * What its load_weights maps, from the published llama_swiftkv semantics: layers j < l fuse
 * q_proj/k_proj/v_proj into qkv_proj; layers j >= l load q_proj_swiftkv as it is and fuse
 * k_proj_swiftkv/v_proj_swiftkv into kv_proj_swiftkv, which exists on the first layer of each
 * group of g only; model.norm_swiftkv is one parameter; every other Llama tensor loads as it is.
 * The teacher's q/k/v_proj of a layer j >= l has no parameter there and is skipped. */
typedef enum { LOAD_DIRECT, LOAD_QKV, LOAD_KV_SWIFTKV, LOAD_SKIPPED, LOAD_UNKNOWN } load_kind;

static load_kind arctic_maps(const char *name, int l, int *layer, char *proj) {
    int j, off = 0;
    *layer = -1;
    *proj = 0;
    if (!strcmp(name, "model.norm_swiftkv.weight")) return LOAD_DIRECT;
    if (sscanf(name, "model.layers.%d.self_attn.%n", &j, &off) != 1 || !off) {
        if (strstr(name, "swiftkv")) return LOAD_UNKNOWN;
        return LOAD_DIRECT;
    }
    *layer = j;
    const char *rest = name + off;
    if (!strcmp(rest, "o_proj.weight")) return LOAD_DIRECT;
    char p = rest[0];
    if (p != 'q' && p != 'k' && p != 'v') return LOAD_UNKNOWN;
    *proj = p;
    if (!strcmp(rest + 1, "_proj.weight")) return j < l ? LOAD_QKV : LOAD_SKIPPED;
    if (!strcmp(rest + 1, "_proj_swiftkv.weight")) {
        if (j < l) return LOAD_UNKNOWN;
        return p == 'q' ? LOAD_DIRECT : LOAD_KV_SWIFTKV;
    }
    return LOAD_UNKNOWN;
}

static void check_swiftkv_tensors(const char *root, int l, int g, kv_swiftkv_layout layout) {
    const int L = 5;
    const char *lay = layout == KV_LAYOUT_DEPLOY ? "deploy" : "hf-swiftkv";
    char dst[512];
    snprintf(dst, sizeof dst, "%s/skv_%d_%d_%s", root, l, g, lay);
    kv_convert_opts o;
    memset(&o, 0, sizeof o);
    o.out_dtype = KV_CONVERT_KEEP_DTYPE;
    o.layout = layout;
    o.no_sync = 1;
    o.no_hash_cache = 1;
    kv_error err = {0};
    if (kvmap_swiftkv(&o.map, L, l, g, &err) ||
        kv_convert_run(STORIES, dst, &o, NULL, NULL, NULL, &err)) {
        CHECK(0, "swiftkv %d,%d %s: %s", l, g, lay, err.msg);
        return;
    }
    st_checkpoint ck;
    if (st_checkpoint_open(&ck, dst, &err)) {
        CHECK(0, "%s: %s", dst, err.msg);
        return;
    }
    /* per layer: which loader parameters got which shards */
    int qkv[5][3] = {{0}}, q_skv[5] = {0}, kv_skv[5][2] = {{0}}, skipped = 0, norm_skv = 0;
    for (int k = 0; k < ck.n_tensors; k++) {
        const char *name = ck.tensors[k]->name;
        int j;
        char p;
        load_kind kind = arctic_maps(name, l, &j, &p);
        CHECK(kind != LOAD_UNKNOWN, "swiftkv %d,%d %s: '%s' is not a tensor the loader maps", l, g,
              lay, name);
        if (!strcmp(name, "model.norm_swiftkv.weight")) norm_skv++;
        if (j < 0 || j >= L) continue;
        if (kind == LOAD_QKV) qkv[j][p == 'q' ? 0 : p == 'k' ? 1 : 2]++;
        if (kind == LOAD_DIRECT && p == 'q') q_skv[j]++;
        if (kind == LOAD_KV_SWIFTKV) kv_skv[j][p == 'k' ? 0 : 1]++;
        if (kind == LOAD_SKIPPED) skipped++;
    }
    CHECK(norm_skv == 1, "swiftkv %d,%d %s: model.norm_swiftkv", l, g, lay);
    for (int j = 0; j < L; j++) {
        const int leader = j >= l && (j - l) % g == 0;
        CHECK(j >= l || (qkv[j][0] == 1 && qkv[j][1] == 1 && qkv[j][2] == 1),
              "swiftkv %d,%d %s: layer %d qkv_proj shards", l, g, lay, j);
        CHECK(q_skv[j] == (j >= l), "swiftkv %d,%d %s: layer %d q_proj_swiftkv", l, g, lay, j);
        CHECK(kv_skv[j][0] == leader && kv_skv[j][1] == leader,
              "swiftkv %d,%d %s: layer %d kv_proj_swiftkv %d/%d", l, g, lay, j, kv_skv[j][0],
              kv_skv[j][1]);
    }
    /* the teacher's projections of layers >= l: only in the interop layout */
    CHECK(skipped == (layout == KV_LAYOUT_DEPLOY ? 0 : 3 * (L - l)),
          "swiftkv %d,%d %s: %d teacher tensors", l, g, lay, skipped);
    /* loader versions that build q/k/v_proj on every layer need all of them; versions that
     * split the fused K/V per layer serve only g = 1. A limitation is warned about exactly when
     * one of them fails on what was written. */
    const int every_layer_qkv = skipped == 3 * (L - l);
    const int per_layer_split_ok = g == 1;
    kv_map m;
    kv_error e2 = {0};
    char why[1024];
    int n_lim = kvmap_swiftkv(&m, L, l, g, &e2)
                    ? -1
                    : kvmap_swiftkv_serving_limits(&m, layout, why, sizeof why);
    CHECK(n_lim == !every_layer_qkv + !per_layer_split_ok,
          "swiftkv %d,%d %s: %d serving limitations ('%s')", l, g, lay, n_lim, why);
    CHECK(every_layer_qkv || strstr(why, "layout 'deploy'"), "swiftkv %d,%d %s: deploy warning", l,
          g, lay);
    CHECK(per_layer_split_ok || strstr(why, "AcrossKV"), "swiftkv %d,%d %s: AcrossKV warning", l, g,
          lay);
    st_checkpoint_close(&ck);
    hf_config c;
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dst);
    CHECK(hf_config_load(&c, path, &err) == 0 && !strcmp(c.model_type, "llama_swiftkv") &&
              !strcmp(c.architecture, "LlamaSwiftKVForCausalLM") && c.map.swiftkv_l == l &&
              c.map.swiftkv_g == g,
          "swiftkv %d,%d %s: config %s", l, g, lay, err.msg);
}

static void test_swiftkv_tensors(void) {
    if (access(STORIES "/model.safetensors", R_OK) != 0) {
        CHECK(0, "missing fixture %s", STORIES "/model.safetensors");
        return;
    }
    char root[] = "/tmp/kvforge_interop_XXXXXX";
    if (!mkdtemp(root)) {
        CHECK(0, "mkdtemp");
        return;
    }
    static const int lg[][2] = {{3, 1}, {1, 1}, {1, 2}, {3, 2}, {1, 4}};
    for (int k = 0; k < 5; k++) {
        check_swiftkv_tensors(root, lg[k][0], lg[k][1], KV_LAYOUT_DEPLOY);
        check_swiftkv_tensors(root, lg[k][0], lg[k][1], KV_LAYOUT_HF_SWIFTKV);
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", root);
}

int main(void) {
    test_every_map();
    test_lckv_written();
    test_refusals();
    test_swiftkv_tensors();
    return check_done("test_interop");
}
