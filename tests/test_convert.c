/* kvconvert library: the 9 cross-layer configurations, presets, identity and SwiftKV on
 * stories260K (tensor names, shapes, dropped set, bytes, mean/target initialisation against
 * values computed here from the source), dtype conversion, F16/BF16 sharded synthetic sources
 * with biases, determinism, destination safety, refusals. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/dtype.h"
#include "base/fileio.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "base/sha256.h"
#include "transform/synth/synth.h"
#include "tests/check.h"
#include "transform/convert/model_info.h"
#include "transform/convert/convert.h"

#define STORIES SHARED_DIR "/models/stories260K"

static char tmp_root[256];

static void rm_tree(const char *path) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", path);
}

static void tmp_path(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", tmp_root, name);
}

/* a tensor's values as F32 (malloc'd) */
static float *values(const st_tensor *t) {
    float *v = malloc(t->n_elements * sizeof *v + 1);
    void *raw = malloc(t->n_bytes + 1);
    memcpy(raw, t->data, t->n_bytes);
    kv_to_f32(v, raw, t->dtype, t->n_elements);
    free(raw);
    return v;
}

/* the value the converter must write for one element, given the output dtype */
static float round_to(float v, kv_dtype t) {
    return t == KV_F16    ? kv_f16_to_f32(kv_f32_to_f16(v))
           : t == KV_BF16 ? kv_bf16_to_f32(kv_f32_to_bf16(v))
                          : v;
}

static int same_shape(const st_tensor *a, const st_tensor *b) {
    if (a->n_dims != b->n_dims) return 0;
    for (int d = 0; d < a->n_dims; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

static int same_bytes(const st_tensor *a, const st_tensor *b) {
    return a->dtype == b->dtype && a->n_bytes == b->n_bytes && same_shape(a, b) &&
           memcmp(a->data, b->data, a->n_bytes) == 0;
}

/* out tensor == mean over src layers' tensors (double sum, ascending, / n, F32, output dtype) */
static void check_mean(const st_checkpoint *src, const st_checkpoint *out, const char *out_name,
                       const int *layers, int n, const char *proj_suffix, const char *what) {
    const st_tensor *o = st_checkpoint_find(out, out_name);
    CHECK(o != NULL, "%s: '%s' missing", what, out_name);
    if (!o) return;
    float **v = calloc((size_t)n, sizeof *v);
    size_t count = 0;
    for (int k = 0; k < n; k++) {
        char name[160];
        snprintf(name, sizeof name, "model.layers.%d.self_attn.%s", layers[k], proj_suffix);
        const st_tensor *s = st_checkpoint_find(src, name);
        CHECK(s && same_shape(s, o), "%s: source '%s' missing or other shape", what, name);
        if (!s) {
            for (int j = 0; j < k; j++) free(v[j]);
            free(v);
            return;
        }
        v[k] = values(s);
        count = s->n_elements;
    }
    float *got = values(o);
    size_t bad = 0;
    for (size_t e = 0; e < count; e++) {
        double sum = 0;
        for (int k = 0; k < n; k++) sum += v[k][e];
        float want = round_to((float)(sum / n), o->dtype);
        if (memcmp(&want, &got[e], sizeof want) != 0) bad++;
    }
    CHECK(bad == 0, "%s: '%s': %zu of %zu elements differ from the mean of %d layers", what,
          out_name, bad, count, n);
    for (int k = 0; k < n; k++) free(v[k]);
    free(v);
    free(got);
}

/* out tensor == src tensor rounded to out's dtype (same bytes when the dtype is the same) */
static void check_copy(const st_tensor *s, const st_tensor *o, const char *what) {
    CHECK(s && o, "%s: tensor missing", what);
    if (!s || !o) return;
    CHECK(same_shape(s, o), "%s: '%s' shape changed", what, o->name);
    if (s->dtype == o->dtype) {
        CHECK(same_bytes(s, o), "%s: '%s' bytes differ from '%s'", what, o->name, s->name);
        return;
    }
    float *a = values(s), *b = values(o);
    size_t bad = 0;
    for (size_t e = 0; e < s->n_elements; e++) {
        float want = round_to(a[e], o->dtype);
        if (memcmp(&want, &b[e], sizeof want) != 0) bad++;
    }
    CHECK(bad == 0, "%s: '%s': %zu elements not rounded from '%s'", what, o->name, bad, s->name);
    free(a);
    free(b);
}

static int convert_with(const char *src_dir, const char *dst, const kv_convert_opts *o,
                        char **manifest, kv_error *err) {
    convert_source s;
    int rc = convert_source_open(&s, src_dir, err);
    if (rc) return rc;
    convert_plan p;
    rc = convert_plan_build(&p, &s, o, err);
    if (!rc) {
        rc = convert_run(&p, dst, NULL, NULL, manifest, err);
        convert_plan_free(&p);
    }
    convert_source_close(&s);
    return rc;
}

static int parse_map(kv_convert_opts *o, const char *spec, int L) {
    memset(o, 0, sizeof *o);
    o->out_dtype = KV_CONVERT_KEEP_DTYPE;
    kv_error err = {0};
    int rc = strncmp(spec, "swiftkv:", 8) == 0 ? kvmap_parse_swiftkv(&o->map, spec + 8, L, &err)
                                               : kvmap_parse(&o->map, spec, L, &err);
    CHECK(rc == 0, "map '%s': %s", spec, err.msg);
    return rc;
}

static int same_file(const char *a, const char *b);

/* ---- cross-layer maps on stories260K ---- */

static void check_cross(const st_checkpoint *src, const char *spec, const int *want_map, int L,
                        kv_init_mode init, int out_dtype) {
    kv_convert_opts o;
    if (parse_map(&o, spec, L)) return;
    o.kv_init = init;
    o.out_dtype = out_dtype;
    for (int i = 0; i < L; i++)
        CHECK(o.map.kv_layer_of[i] == want_map[i], "%s: kv(%d) = %d, want %d", spec, i,
              o.map.kv_layer_of[i], want_map[i]);
    char dst[512];
    tmp_path(dst, sizeof dst, "cross");
    rm_tree(dst);
    kv_error err = {0};
    char *manifest = NULL;
    int rc = convert_with(STORIES, dst, &o, &manifest, &err);
    CHECK(rc == 0, "%s: convert: %s", spec, err.msg);
    if (rc) return;
    st_checkpoint out;
    rc = st_checkpoint_open(&out, dst, &err);
    CHECK(rc == 0, "%s: output: %s", spec, err.msg);
    if (rc) {
        free(manifest);
        return;
    }
    /* expected set: every source tensor except k/v of layers that read another layer */
    int n_expected = 0, n_kv_layers = 0;
    for (int i = 0; i < L; i++) n_kv_layers += want_map[i] == i;
    for (int k = 0; k < src->n_tensors; k++) {
        const st_tensor *s = src->tensors[k];
        int layer = -1;
        char proj = 0;
        if (sscanf(s->name, "model.layers.%d.self_attn.%c_proj.weight", &layer, &proj) == 2 &&
            (proj == 'k' || proj == 'v') && want_map[layer] != layer) {
            CHECK(st_checkpoint_find(&out, s->name) == NULL, "%s: '%s' should be dropped", spec,
                  s->name);
            continue;
        }
        n_expected++;
        const st_tensor *t = st_checkpoint_find(&out, s->name);
        CHECK(t != NULL, "%s: '%s' missing from the output", spec, s->name);
        if (!t) continue;
        if (proj == 'k' || proj == 'v') {
            int readers[64], n = 0;
            for (int i = 0; i < L; i++)
                if (want_map[i] == layer) readers[n++] = i;
            if (init == KV_INIT_TARGET) {
                readers[0] = layer;
                n = 1;
            }
            char suffix[32];
            snprintf(suffix, sizeof suffix, "%c_proj.weight", proj);
            if (n > 1) check_mean(src, &out, s->name, readers, n, suffix, spec);
            else check_copy(s, t, spec);
        } else {
            check_copy(s, t, spec);
        }
    }
    CHECK(out.n_tensors == n_expected, "%s: %d output tensors, want %d", spec, out.n_tensors,
          n_expected);
    CHECK(n_expected == src->n_tensors - 2 * (L - n_kv_layers), "%s: dropped count", spec);
    /* config.json carries the map */
    char path[600];
    hf_config cfg;
    snprintf(path, sizeof path, "%s/config.json", dst);
    rc = hf_config_load(&cfg, path, &err);
    CHECK(rc == 0, "%s: output config: %s", spec, err.msg);
    if (!rc) {
        int all_self = 1;
        for (int i = 0; i < L; i++) all_self &= want_map[i] == i;
        CHECK((cfg.map.kind == KVMAP_CROSS) == !all_self, "%s: layer_types presence", spec);
        for (int i = 0; i < L && cfg.map.kind == KVMAP_CROSS; i++)
            CHECK(cfg.map.kv_layer_of[i] == want_map[i], "%s: config kv(%d)", spec, i);
        /* LCKV's schema for a cross-layer map, a plain Llama for the identity (docs/INTEROP.md) */
        CHECK(cfg.map.kind != KVMAP_SWIFTKV &&
                  !strcmp(cfg.model_type, all_self ? "llama" : "lckv-llama") &&
                  !strcmp(cfg.architecture, all_self ? "LlamaForCausalLM" : "LCKVLlamaForCausalLM"),
              "%s: model_type %s", spec, cfg.model_type);
        CHECK(all_self || (cfg.lckv_forward_passes == 7 && cfg.lckv_backward_passes == 2),
              "%s: LCKV passes %d/%d", spec, cfg.lckv_forward_passes, cfg.lckv_backward_passes);
        CHECK(cfg.torch_dtype ==
                  (out_dtype == KV_CONVERT_KEEP_DTYPE ? KV_F32 : (kv_dtype)out_dtype),
              "%s: torch_dtype", spec);
        CHECK(kvmap_n_slots(&cfg.map) == n_kv_layers, "%s: %d slots", spec,
              kvmap_n_slots(&cfg.map));
    }
    /* tokenizer copied */
    char a[600], b[600], ha[65], hb[65];
    snprintf(a, sizeof a, "%s/tokenizer.json", STORIES);
    snprintf(b, sizeof b, "%s/tokenizer.json", dst);
    CHECK(kv_sha256_file(a, ha, &err) == 0 && kv_sha256_file(b, hb, &err) == 0 && !strcmp(ha, hb),
          "%s: tokenizer.json", spec);
    /* manifest: written = returned; source hash; savings */
    char *disk = NULL;
    snprintf(path, sizeof path, "%s/kvforge.json", dst);
    CHECK(kv_read_file(path, &disk, NULL, 1 << 24, &err) == 0 && manifest &&
              !strncmp(disk, manifest, strlen(manifest)),
          "%s: kvforge.json differs from the returned manifest", spec);
    cJSON *m = manifest ? cJSON_Parse(manifest) : NULL;
    CHECK(m != NULL, "%s: manifest is not JSON", spec);
    if (m) {
        snprintf(a, sizeof a, "%s/model.safetensors", STORIES);
        kv_sha256_file(a, ha, &err);
        const cJSON *files = cJSON_GetObjectItem(cJSON_GetObjectItem(m, "source"), "files"), *f;
        int found = 0;
        cJSON_ArrayForEach(f, files) {
            const cJSON *name = cJSON_GetObjectItem(f, "name"),
                        *sha = cJSON_GetObjectItem(f, "sha256");
            if (cJSON_IsString(name) && !strcmp(name->valuestring, "model.safetensors"))
                found = cJSON_IsString(sha) && !strcmp(sha->valuestring, ha);
        }
        CHECK(found, "%s: manifest lacks model.safetensors with its sha256", spec);
        const cJSON *kv = cJSON_GetObjectItem(m, "kv_cache");
        double want_saving = 1.0 - (double)n_kv_layers / L;
        CHECK_NEAR(cJSON_GetNumberValue(cJSON_GetObjectItem(kv, "saving")), want_saving, 1e-6,
                   "KV saving");
        size_t elem = out_dtype == KV_CONVERT_KEEP_DTYPE ? 4 : kv_dtype_size((kv_dtype)out_dtype);
        CHECK_NEAR(cJSON_GetNumberValue(cJSON_GetObjectItem(kv, "bytes_per_token_output")),
                   2.0 * n_kv_layers * 4 * 8 * elem, 0, "KV bytes per token");
        cJSON_Delete(m);
    }
    free(disk);
    free(manifest);
    st_checkpoint_close(&out);
}

/* identity map, source dtype, one file: the weights file is the source's, byte for byte */
static void check_identity_file(void) {
    kv_convert_opts o;
    if (parse_map(&o, "0_1_2_3_4", 5)) return;
    char dst[512], a[700], b[700];
    tmp_path(dst, sizeof dst, "identity-file");
    kv_error err = {0};
    CHECK(convert_with(STORIES, dst, &o, NULL, &err) == 0, "identity: %s", err.msg);
    snprintf(a, sizeof a, "%s/model.safetensors", STORIES);
    snprintf(b, sizeof b, "%s/model.safetensors", dst);
    CHECK(same_file(a, b), "identity map: model.safetensors differs from the source");
}

/* ---- SwiftKV on stories260K ---- */

static void check_swiftkv(const st_checkpoint *src, int l, int g, kv_swiftkv_layout layout,
                          kv_init_mode init) {
    const int L = 5;
    char spec[32], what[96];
    snprintf(spec, sizeof spec, "swiftkv:%d,%d", l, g);
    snprintf(what, sizeof what, "%s %s %s", spec,
             layout == KV_LAYOUT_DEPLOY ? "deploy" : "hf-swiftkv",
             init == KV_INIT_MEAN ? "mean" : "target");
    kv_convert_opts o;
    if (parse_map(&o, spec, L)) return;
    o.layout = layout;
    o.kv_init = init;
    char dst[512];
    tmp_path(dst, sizeof dst, "swift");
    rm_tree(dst);
    kv_error err = {0};
    int rc = convert_with(STORIES, dst, &o, NULL, &err);
    CHECK(rc == 0, "%s: convert: %s", what, err.msg);
    if (rc) return;
    st_checkpoint out;
    rc = st_checkpoint_open(&out, dst, &err);
    CHECK(rc == 0, "%s: output: %s", what, err.msg);
    if (rc) return;
    int n_expected = 0;
    for (int k = 0; k < src->n_tensors; k++) {
        const st_tensor *s = src->tensors[k];
        int layer = -1;
        char proj = 0;
        int attn =
            sscanf(s->name, "model.layers.%d.self_attn.%c_proj.weight", &layer, &proj) == 2 &&
            proj != 'o';
        if (attn && layer >= l && layout == KV_LAYOUT_DEPLOY) {
            CHECK(st_checkpoint_find(&out, s->name) == NULL, "%s: '%s' should be dropped", what,
                  s->name);
            continue;
        }
        n_expected++;
        check_copy(s, st_checkpoint_find(&out, s->name), what);
    }
    char name[160];
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
    check_copy(st_checkpoint_find(src, name), st_checkpoint_find(&out, "model.norm_swiftkv.weight"),
               what);
    n_expected++;
    for (int j = 0; j < L; j++) {
        char q[160], oq[160];
        snprintf(q, sizeof q, "model.layers.%d.self_attn.q_proj.weight", j);
        snprintf(oq, sizeof oq, "model.layers.%d.self_attn.q_proj_swiftkv.weight", j);
        if (j < l) {
            CHECK(st_checkpoint_find(&out, oq) == NULL, "%s: '%s' should not exist", what, oq);
            continue;
        }
        check_copy(st_checkpoint_find(src, q), st_checkpoint_find(&out, oq), what);
        n_expected++;
        int leader = (j - l) % g == 0;
        for (int pj = 0; pj < 2; pj++) {
            char on[160], suffix[32];
            snprintf(on, sizeof on, "model.layers.%d.self_attn.%c_proj_swiftkv.weight", j,
                     "kv"[pj]);
            snprintf(suffix, sizeof suffix, "%c_proj.weight", "kv"[pj]);
            if (!leader) {
                CHECK(st_checkpoint_find(&out, on) == NULL, "%s: '%s' on a non-leader", what, on);
                continue;
            }
            int group[8], n = 0;
            for (int m = j; m < j + g; m++) group[n++] = m;
            if (init == KV_INIT_TARGET) n = 1;
            check_mean(src, &out, on, group, n, suffix, what);
            n_expected++;
        }
    }
    CHECK(out.n_tensors == n_expected, "%s: %d output tensors, want %d", what, out.n_tensors,
          n_expected);
    char path[600];
    hf_config cfg;
    snprintf(path, sizeof path, "%s/config.json", dst);
    rc = hf_config_load(&cfg, path, &err);
    CHECK(rc == 0, "%s: config: %s", what, err.msg);
    if (!rc) {
        CHECK(cfg.map.kind == KVMAP_SWIFTKV && cfg.map.swiftkv_l == l && cfg.map.swiftkv_g == g,
              "%s: swiftkv fields", what);
        CHECK(!strcmp(cfg.model_type, "llama_swiftkv") &&
                  !strcmp(cfg.architecture, "LlamaSwiftKVForCausalLM"),
              "%s: model_type", what);
        /* the parse refuses swiftkv beside an integer layer_types */
        CHECK(cfg.map.kind == KVMAP_SWIFTKV, "%s: layer_types on a SwiftKV model", what);
    }
    /* a converted model is refused as a source */
    kv_convert_opts again;
    parse_map(&again, "cla:2", L);
    char dst2[512];
    tmp_path(dst2, sizeof dst2, "swift-again");
    rm_tree(dst2);
    rc = convert_with(dst, dst2, &again, NULL, &err);
    CHECK(rc == KV_EUNSUPPORTED, "%s: converting the output again gave %d", what, rc);
    st_checkpoint_close(&out);
}

/* ---- synthetic F16/BF16 sources with biases ---- */

static const char *bias_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 16,"
    " \"intermediate_size\": 24, \"num_hidden_layers\": 4, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 2,"
    " \"vocab_size\": 32, \"rms_norm_eps\": 1e-5, \"eos_token_id\": 2, \"attention_bias\": true,"
    " \"tie_word_embeddings\": false, \"torch_dtype\": \"%s\"}";

/* L=4, H=16, 4 heads, 2 KV heads (hd 4), with q/k/v/o biases (HF attention_bias); values i*0.01 + tensor index */
static int write_bias_model(const char *dir, kv_dtype dt) {
    const int L = 4, H = 16, F = 24, V = 32;
    st_spec specs[64];
    void *data[64];
    char names[64][96];
    int n = 0;
#define ADD(NAME_FMT, LAYER, D0, D1)                                                               \
    do {                                                                                           \
        snprintf(names[n], sizeof names[n], NAME_FMT, LAYER);                                      \
        specs[n] = (st_spec){                                                                      \
            .name = names[n], .dtype = dt, .n_dims = (D1) ? 2 : 1, .shape = {(D0), (D1)}};         \
        n++;                                                                                       \
    } while (0)
    ADD("model.embed_tokens.weight%.0d", 0, V, H);
    ADD("lm_head.weight%.0d", 0, V, H);
    ADD("model.norm.weight%.0d", 0, H, 0);
    for (int i = 0; i < L; i++) {
        ADD("model.layers.%d.input_layernorm.weight", i, H, 0);
        ADD("model.layers.%d.post_attention_layernorm.weight", i, H, 0);
        ADD("model.layers.%d.self_attn.q_proj.weight", i, 16, H);
        ADD("model.layers.%d.self_attn.q_proj.bias", i, 16, 0);
        ADD("model.layers.%d.self_attn.k_proj.weight", i, 8, H);
        ADD("model.layers.%d.self_attn.k_proj.bias", i, 8, 0);
        ADD("model.layers.%d.self_attn.v_proj.weight", i, 8, H);
        ADD("model.layers.%d.self_attn.v_proj.bias", i, 8, 0);
        ADD("model.layers.%d.self_attn.o_proj.weight", i, H, 16);
        ADD("model.layers.%d.self_attn.o_proj.bias", i, H, 0);
        ADD("model.layers.%d.mlp.gate_proj.weight", i, F, H);
        ADD("model.layers.%d.mlp.up_proj.weight", i, F, H);
        ADD("model.layers.%d.mlp.down_proj.weight", i, H, F);
    }
#undef ADD
    for (int k = 0; k < n; k++) {
        size_t bytes = st_spec_bytes(&specs[k]), count = bytes / kv_dtype_size(specs[k].dtype);
        data[k] = malloc(bytes);
        float *f = malloc(count * sizeof *f);
        for (size_t e = 0; e < count; e++)
            f[e] = (float)((double)((e * 37 + (size_t)k * 11) % 101) * 0.013 - 0.6);
        kv_dtype_cast(data[k], dt, f, KV_F32, count);
        free(f);
    }
    kv_error err = {0};
    char path[600], cfg[1024];
    int rc = kv_mkdir_p(dir, &err);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!rc) rc = st_write_file(path, specs, (const void *const *)data, n, NULL, 0, &err);
    snprintf(cfg, sizeof cfg, bias_config, hf_torch_dtype_name(dt));
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!rc) rc = kv_write_file_atomic(path, cfg, strlen(cfg), &err);
    CHECK(rc == 0, "bias model: %s", err.msg);
    for (int k = 0; k < n; k++) free(data[k]);
    return rc;
}

static void check_bias_model(kv_dtype dt) {
    char src_dir[512], dst[512];
    tmp_path(src_dir, sizeof src_dir, "bias-src");
    tmp_path(dst, sizeof dst, "bias-out");
    rm_tree(src_dir);
    if (write_bias_model(src_dir, dt)) return;
    const char *what = dt == KV_F16 ? "bias F16" : "bias BF16";
    kv_error err = {0};
    st_checkpoint src;
    if (st_checkpoint_open(&src, src_dir, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        return;
    }
    /* cross-layer lasagna-top:2 (kv = 1 1 3 3): biases dropped and averaged like weights */
    kv_convert_opts o;
    parse_map(&o, "lasagna-top:2", 4);
    rm_tree(dst);
    int rc = convert_with(src_dir, dst, &o, NULL, &err);
    CHECK(rc == 0, "%s: %s", what, err.msg);
    st_checkpoint out;
    if (!rc && !st_checkpoint_open(&out, dst, &err)) {
        static const int pairs[2][2] = {{0, 1}, {2, 3}};
        for (int gi = 0; gi < 2; gi++)
            for (int pj = 0; pj < 2; pj++)
                for (int b = 0; b < 2; b++) {
                    char name[160], suffix[32];
                    snprintf(suffix, sizeof suffix, "%c_proj.%s", "kv"[pj], b ? "bias" : "weight");
                    snprintf(name, sizeof name, "model.layers.%d.self_attn.%s", pairs[gi][0],
                             suffix);
                    CHECK(st_checkpoint_find(&out, name) == NULL, "%s: '%s' not dropped", what,
                          name);
                    snprintf(name, sizeof name, "model.layers.%d.self_attn.%s", pairs[gi][1],
                             suffix);
                    check_mean(&src, &out, name, pairs[gi], 2, suffix, what);
                }
        CHECK(out.n_tensors == src.n_tensors - 8, "%s: %d tensors", what, out.n_tensors);
        st_checkpoint_close(&out);
    }
    /* SwiftKV 2,2 with biases, F32 output: q_proj_swiftkv.bias copied, k/v biases averaged */
    parse_map(&o, "swiftkv:2,2", 4);
    o.out_dtype = KV_F32;
    o.layout = KV_LAYOUT_DEPLOY;
    rm_tree(dst);
    rc = convert_with(src_dir, dst, &o, NULL, &err);
    CHECK(rc == 0, "%s swiftkv: %s", what, err.msg);
    if (!rc && !st_checkpoint_open(&out, dst, &err)) {
        int group[2] = {2, 3};
        check_mean(&src, &out, "model.layers.2.self_attn.k_proj_swiftkv.bias", group, 2,
                   "k_proj.bias", what);
        check_mean(&src, &out, "model.layers.2.self_attn.v_proj_swiftkv.weight", group, 2,
                   "v_proj.weight", what);
        check_copy(st_checkpoint_find(&src, "model.layers.3.self_attn.q_proj.bias"),
                   st_checkpoint_find(&out, "model.layers.3.self_attn.q_proj_swiftkv.bias"), what);
        CHECK(st_checkpoint_find(&out, "model.layers.3.self_attn.k_proj_swiftkv.bias") == NULL,
              "%s: non-leader bias", what);
        CHECK(st_checkpoint_find(&out, "model.layers.2.self_attn.q_proj.bias") == NULL,
              "%s: deploy keeps a teacher bias", what);
        const st_tensor *e = st_checkpoint_find(&out, "model.embed_tokens.weight");
        CHECK(e && e->dtype == KV_F32, "%s: F32 output", what);
        check_copy(st_checkpoint_find(&src, "model.embed_tokens.weight"), e, what);
        st_checkpoint_close(&out);
    }
    st_checkpoint_close(&src);
}

/* the source file removed after it was opened: an error naming it, nothing left behind */
static void check_vanished_source(void) {
    char src_dir[512], dst[512], path[700];
    tmp_path(src_dir, sizeof src_dir, "vanish-src");
    tmp_path(dst, sizeof dst, "vanish-out");
    if (write_bias_model(src_dir, KV_BF16)) return;
    kv_convert_opts o;
    parse_map(&o, "pizza-middle:2", 4);
    kv_error err = {0};
    convert_source s;
    if (convert_source_open(&s, src_dir, &err)) {
        CHECK(0, "vanish: %s", err.msg);
        return;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", src_dir);
    unlink(path);
    convert_plan p;
    int rc = convert_plan_build(&p, &s, &o, &err);
    CHECK(rc == 0, "vanish plan: %s", err.msg);
    if (!rc) {
        rc = convert_run(&p, dst, NULL, NULL, NULL, &err);
        convert_plan_free(&p);
        CHECK(rc == KV_EIO && strstr(err.msg, "model.safetensors"), "vanished source: rc %d '%s'",
              rc, err.msg);
        CHECK(!kv_path_exists(dst), "a failed conversion left %s", dst);
    }
    convert_source_close(&s);
}

/* ---- sharded F16 source (kvsynth), sharded output, --force, determinism ---- */

static int read_all(const char *path, char **buf, size_t *n) {
    kv_error err;
    return kv_read_file(path, buf, n, (size_t)1 << 30, &err);
}

static int same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same =
        read_all(a, &x, &nx) == 0 && read_all(b, &y, &ny) == 0 && nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

static void check_sharded(void) {
    char src_dir[512], d1[512], d2[512], path[700], p2[700];
    tmp_path(src_dir, sizeof src_dir, "synth-f16");
    tmp_path(d1, sizeof d1, "sharded-1");
    tmp_path(d2, sizeof d2, "sharded-2");
    synth_spec s;
    synth_preset(&s, "tiny");
    s.dtype = KV_F16;
    s.shard_bytes = 60000;
    kv_error err = {0};
    int rc = synth_write(src_dir, &s, &err);
    CHECK(rc == 0, "synth: %s", err.msg);
    if (rc) return;
    st_checkpoint src;
    if (st_checkpoint_open(&src, src_dir, &err)) {
        CHECK(0, "synth open: %s", err.msg);
        return;
    }
    CHECK(src.sharded && src.n_files > 2, "synth source not sharded (%d files)", src.n_files);
    kv_convert_opts o;
    parse_map(&o, "sandwich-top:2", 4); /* kv = 0 3 3 3 */
    o.out_dtype = KV_BF16;
    o.shard_bytes = 40000;
    rc = convert_with(src_dir, d1, &o, NULL, &err);
    CHECK(rc == 0, "sharded convert: %s", err.msg);
    rc = convert_with(src_dir, d2, &o, NULL, &err);
    CHECK(rc == 0, "sharded convert 2: %s", err.msg);
    st_checkpoint out;
    if (st_checkpoint_open(&out, d1, &err) == 0) {
        CHECK(out.sharded && out.n_files > 2, "output not sharded (%d files)", out.n_files);
        int group[3] = {1, 2, 3};
        check_mean(&src, &out, "model.layers.3.self_attn.k_proj.weight", group, 3, "k_proj.weight",
                   "F16 sharded -> BF16");
        check_copy(st_checkpoint_find(&src, "model.layers.1.mlp.up_proj.weight"),
                   st_checkpoint_find(&out, "model.layers.1.mlp.up_proj.weight"), "F16 -> BF16");
        /* same command twice: identical files */
        for (int i = 0; i < out.n_files; i++) {
            const char *base = strrchr(out.files[i].path, '/') + 1;
            snprintf(path, sizeof path, "%s/%s", d1, base);
            snprintf(p2, sizeof p2, "%s/%s", d2, base);
            CHECK(same_file(path, p2), "determinism: %s differs", base);
        }
        const char *others[] = {"model.safetensors.index.json", "config.json", "kvforge.json",
                                "tokenizer.json"};
        for (int i = 0; i < 4; i++) {
            snprintf(path, sizeof path, "%s/%s", d1, others[i]);
            snprintf(p2, sizeof p2, "%s/%s", d2, others[i]);
            CHECK(same_file(path, p2), "determinism: %s differs", others[i]);
        }
        st_checkpoint_close(&out);
    } else {
        CHECK(0, "sharded output: %s", err.msg);
    }
    /* a non-empty destination is refused; --force writes one file and removes the old shards */
    o.shard_bytes = 0;
    rc = convert_with(src_dir, d1, &o, NULL, &err);
    CHECK(rc == KV_EINVAL && strstr(err.msg, "not empty"), "non-empty destination: rc %d '%s'", rc,
          err.msg);
    snprintf(path, sizeof path, "%s/notes.txt", d1);
    kv_write_file_atomic(path, "keep", 4, &err);
    o.force = 1;
    rc = convert_with(src_dir, d1, &o, NULL, &err);
    CHECK(rc == 0, "--force: %s", err.msg);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", d1);
    CHECK(!kv_path_exists(path), "--force left the old index");
    snprintf(path, sizeof path, "%s/notes.txt", d1);
    CHECK(kv_path_exists(path), "--force removed an unrelated file");
    if (st_checkpoint_open(&out, d1, &err) == 0) {
        CHECK(!out.sharded && out.n_files == 1, "--force output: %d files", out.n_files);
        st_checkpoint_close(&out);
    } else {
        CHECK(0, "--force output: %s", err.msg);
    }
    /* destination = source, inside it, or containing it */
    o.force = 1;
    rc = convert_with(src_dir, src_dir, &o, NULL, &err);
    CHECK(rc == KV_EINVAL && strstr(err.msg, "source"), "dst = src: rc %d '%s'", rc, err.msg);
    snprintf(path, sizeof path, "%s/sub/out", src_dir);
    rc = convert_with(src_dir, path, &o, NULL, &err);
    CHECK(rc == KV_EINVAL && strstr(err.msg, "inside"), "dst inside src: rc %d '%s'", rc, err.msg);
    snprintf(path, sizeof path, "%s/sub", src_dir);
    CHECK(!kv_path_exists(path), "a refused conversion created %s", path);
    rc = convert_with(src_dir, tmp_root, &o, NULL, &err);
    CHECK(rc == KV_EINVAL && strstr(err.msg, "contains"), "dst contains src: rc %d '%s'", rc,
          err.msg);
    /* no staging folder left behind */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -q tmp-", tmp_root);
    CHECK(system(cmd) != 0, "a staging folder was left in %s", tmp_root);
    st_checkpoint_close(&src);
}

/* ---- refusals and plan/info ---- */

static void check_refusals(void) {
    convert_source s;
    kv_error err = {0};
    if (convert_source_open(&s, STORIES, &err)) return;
    kv_convert_opts o;
    convert_plan p;
    parse_map(&o, "cla:2", 4); /* wrong layer count */
    CHECK(convert_plan_build(&p, &s, &o, &err) == KV_EINVAL && strstr(err.msg, "4 layers"),
          "L mismatch: '%s'", err.msg);
    parse_map(&o, "cla:2", 5);
    o.layout = (kv_swiftkv_layout)7;
    CHECK(convert_plan_build(&p, &s, &o, &err) == KV_EINVAL && strstr(err.msg, "layout 7"),
          "layout 7 accepted: '%s'", err.msg);
    parse_map(&o, "yoco", 6);
    kv_map yoco;
    CHECK(kvmap_parse(&yoco, "yoco", 5, &err) == KV_EINVAL, "yoco on 5 layers accepted");
    /* plan text and JSON */
    parse_map(&o, "sandwich-middle:3", 5);
    if (convert_plan_build(&p, &s, &o, &err) == 0) {
        char *text = convert_plan_text(&p), *json = convert_plan_json(&p, NULL, 0);
        CHECK(text && strstr(text, "layer 1  -> 2") && strstr(text, "saving 40.0%") &&
                  strstr(text, "2 mean-initialised"),
              "plan text:\n%s", text ? text : "(null)");
        cJSON *j = json ? cJSON_Parse(json) : NULL;
        CHECK(j && cJSON_GetArraySize(
                       cJSON_GetObjectItem(cJSON_GetObjectItem(j, "tensors"), "dropped")) == 4,
              "plan json");
        CHECK(p.kv_bytes_src == 2u * 5 * 4 * 8 * 4 && p.kv_bytes_out == 2u * 3 * 4 * 8 * 4,
              "KV bytes %zu %zu", p.kv_bytes_src, p.kv_bytes_out);
        CHECK(p.src_params - p.out_params == 4u * 32 * 64, "parameter saving %llu",
              (unsigned long long)(p.src_params - p.out_params));
        cJSON_Delete(j);
        free(text);
        free(json);
        convert_plan_free(&p);
    } else {
        CHECK(0, "plan: %s", err.msg);
    }
    convert_source_close(&s);
    /* the one-call API: report, and the output bound by llama_view with the same numbers */
    kv_convert_opts one;
    parse_map(&one, "lasagna-bottom:3", 5);
    one.out_dtype = KV_F16;
    kv_convert_report rep, planned;
    char dst[512];
    tmp_path(dst, sizeof dst, "one-call");
    CHECK(kv_convert_plan(STORIES, &one, &planned, &err) == 0, "kv_convert_plan: %s", err.msg);
    int rc = kv_convert_run(STORIES, dst, &one, &rep, NULL, NULL, &err);
    CHECK(rc == 0, "kv_convert_run: %s", err.msg);
    if (!rc) {
        CHECK(!memcmp(&rep, &planned, sizeof rep), "plan and run reports differ");
        CHECK(rep.n_dropped == 4 && rep.n_averaged == 4 && rep.n_added == 0 &&
                  rep.n_tensors_out == 43,
              "report counts");
        CHECK(rep.kv_bytes_before == 2u * 5 * 4 * 8 * 2 && rep.kv_bytes_after == 2u * 3 * 4 * 8 * 2,
              "report KV bytes");
        model_info mi;
        rc = model_info_load_dir(&mi, dst, &err);
        CHECK(rc == 0, "model_info of the output: %s", err.msg);
        CHECK(rc ||
                  (mi.n_params == rep.params_after && mi.kv_bytes_per_token == rep.kv_bytes_after &&
                   mi.bytes_total == rep.bytes_written),
              "model_info disagrees with the report");
    }
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/kvforge-test-convert-XXXXXX");
    if (!mkdtemp(tmp_root)) {
        CHECK(0, "mkdtemp");
        return check_done("test_convert");
    }
    kv_error err = {0};
    st_checkpoint src;
    int have = st_checkpoint_open(&src, STORIES, &err) == 0;
    CHECK(have, "cannot open %s: %s", STORIES, err.msg);
    if (have) {
        char src_hash[65], after[65], model[300];
        snprintf(model, sizeof model, "%s/model.safetensors", STORIES);
        kv_sha256_file(model, src_hash, &err);
        /* METHODS.md s1 at L=5, l=3, derived by hand: pizza groups [2,4]; sandwich b=1, t=1,
         * group [1,3]; lasagna groups [0,1] [2,3] [4] */
        static const struct {
            const char *spec;
            int map[5];
        } cross[] = {
            {"pizza-bottom:3", {0, 1, 2, 2, 2}},   {"pizza-top:3", {0, 1, 4, 4, 4}},
            {"pizza-middle:3", {0, 1, 3, 3, 3}},   {"sandwich-bottom:3", {0, 1, 1, 1, 4}},
            {"sandwich-top:3", {0, 3, 3, 3, 4}},   {"sandwich-middle:3", {0, 2, 2, 2, 4}},
            {"lasagna-bottom:3", {0, 0, 2, 2, 4}}, {"lasagna-top:3", {1, 1, 3, 3, 4}},
            {"lasagna-middle:3", {0, 0, 2, 2, 4}}, {"cla:2", {0, 0, 2, 2, 4}},
            {"lckv:1", {0, 4, 4, 4, 4}},           {"0_1_2_3_4", {0, 1, 2, 3, 4}},
            {"2_2_2_3_3", {2, 2, 2, 3, 3}},
        };
        for (size_t i = 0; i < sizeof cross / sizeof *cross; i++)
            check_cross(&src, cross[i].spec, cross[i].map, 5, KV_INIT_MEAN, KV_CONVERT_KEEP_DTYPE);
        check_cross(&src, "sandwich-middle:3", cross[5].map, 5, KV_INIT_TARGET,
                    KV_CONVERT_KEEP_DTYPE);
        check_cross(&src, "pizza-top:3", cross[1].map, 5, KV_INIT_MEAN, KV_BF16);
        check_cross(&src, "lasagna-top:3", cross[7].map, 5, KV_INIT_MEAN, KV_F16);
        check_identity_file();
        check_swiftkv(&src, 3, 1, KV_LAYOUT_DEPLOY, KV_INIT_MEAN);
        check_swiftkv(&src, 3, 2, KV_LAYOUT_DEPLOY, KV_INIT_MEAN);
        check_swiftkv(&src, 1, 2, KV_LAYOUT_DEPLOY, KV_INIT_MEAN);
        check_swiftkv(&src, 1, 2, KV_LAYOUT_HF_SWIFTKV, KV_INIT_MEAN);
        check_swiftkv(&src, 1, 2, KV_LAYOUT_DEPLOY, KV_INIT_TARGET);
        check_refusals();
        kv_sha256_file(model, after, &err);
        CHECK(!strcmp(src_hash, after), "the source changed");
        st_checkpoint_close(&src);
    }
    check_bias_model(KV_BF16);
    check_bias_model(KV_F16);
    check_vanished_source();
    check_sharded();
    rm_tree(tmp_root);
    return check_done("test_convert");
}
