/* kvconvert's transform on the real stories260K: every configuration and SwiftKV converts;
 * names, shapes and the dropped set; identity is byte-identical; mean/target init values */
#include <string.h>

#include "formats/fileio.h"
#include "formats/hfconfig.h"
#include "formats/safetensors.h"
#include "transform/convert.h"
#include "tests/check.h"

#define SRC SHARED_DIR "/models/stories260K"
static char tmp[64];

static int convert_to(const char *out, kv_convert_opts *o, kv_convert_report *rep) {
    kv_error err = {0};
    int rc = kv_convert_run(SRC, out, o, rep, NULL, NULL, &err);
    CHECK(rc == 0, "convert %s: %s", o->map.name, err.msg);
    return rc;
}

static void open_pair(st_checkpoint *src, st_checkpoint *dst, const char *out) {
    kv_error err = {0};
    CHECK(st_checkpoint_open(src, SRC, &err) == 0, "source: %s", err.msg);
    CHECK(st_checkpoint_open(dst, out, &err) == 0, "output: %s", err.msg);
}

static float value(const st_tensor *t, size_t i) {
    float v;
    kv_to_f32(&v, (const uint8_t *)t->data + i * kv_dtype_size(t->dtype), t->dtype, 1);
    return v;
}

/* cross-layer: k/v exist exactly on KV layers; served ones are the mean (or own) */
static void check_cross(const char *spec, kv_init_mode init) {
    kv_convert_opts o = {.kv_init = init, .out_dtype = -1};
    kv_error err = {0};
    CHECK(kvmap_parse(&o.map, spec, 5, &err) == 0, "%s: %s", spec, err.msg);
    char out[128];
    snprintf(out, sizeof out, "%s/%s-%d", tmp, spec, init);
    kv_convert_report rep;
    if (convert_to(out, &o, &rep)) return;
    st_checkpoint s, d;
    open_pair(&s, &d, out);
    int n_kv = kvmap_n_slots(&o.map);
    CHECK(d.n_tensors == 47 - 2 * (5 - n_kv), "%s: %d tensors", spec, d.n_tensors);
    CHECK(rep.n_dropped == 2 * (5 - n_kv), "%s: dropped %d", spec, rep.n_dropped);
    char name[300];
    for (int i = 0; i < 5; i++) {
        const char *proj[2] = {"k_proj", "v_proj"};
        for (int p = 0; p < 2; p++) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.weight", i, proj[p]);
            const st_tensor *t = st_checkpoint_find(&d, name);
            int is_kv = o.map.kv_layer_of[i] == i;
            CHECK((t != NULL) == is_kv, "%s: %s present=%d", spec, name, t != NULL);
            if (!t) continue;
            CHECK(t->shape[0] == 32 && t->shape[1] == 64, "%s shape", name);
            int readers[8], n = kvmap_readers(&o.map, i, readers, 8);
            /* expected value of a few elements: mean over readers in double, rounded to float */
            int ok = 1;
            for (size_t e = 0; e < t->n_elements; e += 97) {
                double sum = 0;
                for (int r = 0; r < n; r++) {
                    snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.weight", readers[r], proj[p]);
                    sum += value(st_checkpoint_find(&s, name), e);
                }
                snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.weight", i, proj[p]);
                float want = init == KV_INIT_MEAN ? (float)(sum / n) : value(st_checkpoint_find(&s, name), e);
                ok &= value(t, e) == want;
            }
            CHECK(ok, "%s layer %d %s: %s init values", spec, i, proj[p], init == KV_INIT_MEAN ? "mean" : "target");
        }
        snprintf(name, sizeof name, "model.layers.%d.self_attn.q_proj.weight", i);
        const st_tensor *q = st_checkpoint_find(&d, name), *q0 = st_checkpoint_find(&s, name);
        CHECK(q && memcmp(q->data, q0->data, q->n_bytes) == 0, "%s: q_proj copied", spec);
    }
    hf_config cfg;
    snprintf(name, sizeof name, "%s/config.json", out);
    CHECK(hf_config_load(&cfg, name, &err) == 0 && cfg.has_layer_map && memcmp(cfg.kv_layer_of, o.map.kv_layer_of, 5 * sizeof(int)) == 0,
          "%s: config layer_types: %s", spec, err.msg);
    st_checkpoint_close(&s);
    st_checkpoint_close(&d);
}

static void check_swiftkv(int l, int g, kv_swiftkv_layout layout, int out_dtype) {
    kv_convert_opts o = {.layout = layout, .out_dtype = out_dtype};
    kv_error err = {0};
    CHECK(kvmap_swiftkv(&o.map, 5, l, g, &err) == 0, "swiftkv %d,%d: %s", l, g, err.msg);
    char out[128], name[300];
    snprintf(out, sizeof out, "%s/swiftkv-%d-%d-%d-%d", tmp, l, g, layout, out_dtype);
    kv_convert_report rep;
    if (convert_to(out, &o, &rep)) return;
    st_checkpoint s, d;
    open_pair(&s, &d, out);
    int n_late = 5 - l, leaders = n_late / g;
    int expect = 47 + 1 + n_late + 2 * leaders - (layout == KV_LAYOUT_DEPLOY ? 3 * n_late : 0);
    CHECK(d.n_tensors == expect, "swiftkv %d,%d: %d tensors, expected %d", l, g, d.n_tensors, expect);
    const st_tensor *norm = st_checkpoint_find(&d, "model.norm_swiftkv.weight");
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
    float norm_want = value(st_checkpoint_find(&s, name), 5);
    CHECK(norm && fabsf(value(norm, 5) - norm_want) <= (out_dtype < 0 ? 0 : 4e-3f * fabsf(norm_want)), "norm_swiftkv = layers[l].input_layernorm");
    for (int j = 0; j < 5; j++) {
        snprintf(name, sizeof name, "model.layers.%d.self_attn.q_proj_swiftkv.weight", j);
        const st_tensor *qs = st_checkpoint_find(&d, name);
        CHECK((qs != NULL) == (j >= l), "q_proj_swiftkv on layer %d", j);
        snprintf(name, sizeof name, "model.layers.%d.self_attn.k_proj_swiftkv.weight", j);
        const st_tensor *ks = st_checkpoint_find(&d, name);
        int leader = j >= l && (j - l) % g == 0;
        CHECK((ks != NULL) == leader, "k_proj_swiftkv on layer %d", j);
        if (ks) {
            double sum = 0;
            for (int r = j; r < j + g; r++) {
                snprintf(name, sizeof name, "model.layers.%d.self_attn.k_proj.weight", r);
                sum += value(st_checkpoint_find(&s, name), 11);
            }
            float want = (float)(sum / g), got = value(ks, 11);
            CHECK(out_dtype < 0 ? got == want : fabsf(got - want) <= 4e-3f * fabsf(want) + 1e-6f, "k_proj_swiftkv mean of group (%g vs %g)", got, want);
        }
        snprintf(name, sizeof name, "model.layers.%d.self_attn.q_proj.weight", j);
        int has_q = st_checkpoint_find(&d, name) != NULL;
        CHECK(has_q == (j < l || layout == KV_LAYOUT_HF_SWIFTKV), "q_proj of layer %d kept=%d", j, has_q);
        if (out_dtype >= 0 && qs) CHECK(qs->dtype == (kv_dtype)out_dtype, "output dtype");
    }
    hf_config cfg;
    snprintf(name, sizeof name, "%s/config.json", out);
    CHECK(hf_config_load(&cfg, name, &err) == 0 && cfg.swiftkv && cfg.swiftkv_layers == l && cfg.swiftkv_group == g, "swiftkv config: %s", err.msg);
    st_checkpoint_close(&s);
    st_checkpoint_close(&d);
}

int main(void) {
    if (!kv_path_exists(SRC "/model.safetensors")) {
        CHECK(0, "fixture %s missing", SRC "/model.safetensors");
        return check_done("test_convert");
    }
    snprintf(tmp, sizeof tmp, "/tmp/kvtest-convert-XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    kv_error err = {0};
    /* identity: byte-identical tensors */
    kv_convert_opts o = {.out_dtype = -1};
    CHECK(kvmap_parse(&o.map, "0_1_2_3_4", 5, &err) == 0, "identity literal");
    char out[128], path[600];
    snprintf(out, sizeof out, "%s/identity", tmp);
    kv_convert_report rep;
    if (convert_to(out, &o, &rep) == 0) {
        st_checkpoint s, d;
        open_pair(&s, &d, out);
        int same = s.n_tensors == d.n_tensors;
        for (int i = 0; same && i < s.n_tensors; i++)
            same = strcmp(s.tensors[i]->name, d.tensors[i]->name) == 0 && s.tensors[i]->n_bytes == d.tensors[i]->n_bytes &&
                   memcmp(s.tensors[i]->data, d.tensors[i]->data, s.tensors[i]->n_bytes) == 0;
        CHECK(same, "identity map: tensors byte-identical");
        snprintf(path, sizeof path, "cmp -s %s/model.safetensors %s/model.safetensors", SRC, out);
        CHECK(system(path) == 0, "identity map: file byte-identical");
        st_checkpoint_close(&s);
        st_checkpoint_close(&d);
        snprintf(path, sizeof path, "%s/kvforge.json", out);
        char *manifest;
        CHECK(kv_read_file(path, &manifest, NULL, 1 << 20, &err) == 0 && strstr(manifest, "407a7c581bdd66972383ce9ad24857713fb98786d06ea564a2fe9b34ebe77dfd"),
              "manifest holds the source sha256");
        free(manifest);
    }
    /* all nine configurations at l=3, presets, both inits */
    const char *specs[] = {"pizza-bottom:3", "pizza-top:3", "pizza-middle:3", "sandwich-bottom:3", "sandwich-top:3",
                           "sandwich-middle:3", "lasagna-bottom:3", "lasagna-top:3", "lasagna-middle:3", "cla:2", "lckv:1", "0_0_2_2_4"};
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) check_cross(specs[i], KV_INIT_MEAN);
    check_cross("lasagna-top:2", KV_INIT_TARGET);
    check_cross("pizza-bottom:2", KV_INIT_TARGET);
    /* SwiftKV */
    check_swiftkv(3, 1, KV_LAYOUT_DEPLOY, -1);
    check_swiftkv(1, 2, KV_LAYOUT_DEPLOY, -1);
    check_swiftkv(1, 2, KV_LAYOUT_HF_SWIFTKV, -1);
    check_swiftkv(3, 2, KV_LAYOUT_DEPLOY, KV_BF16);
    /* determinism: the same conversion twice gives identical files */
    kvmap_parse(&o.map, "sandwich-middle:3", 5, &err);
    char a[128], b[128];
    snprintf(a, sizeof a, "%s/det-a", tmp);
    snprintf(b, sizeof b, "%s/det-b", tmp);
    o.shard_bytes = 300000;
    convert_to(a, &o, &rep);
    convert_to(b, &o, &rep);
    snprintf(path, sizeof path, "diff -r %s %s >/dev/null", a, b);
    CHECK(system(path) == 0, "two runs, identical output (sharded)");
    st_checkpoint sh;
    CHECK(st_checkpoint_open(&sh, a, &err) == 0 && sh.sharded && sh.n_files > 1, "sharded output reopens: %s", err.msg);
    st_checkpoint_close(&sh);
    /* refusals: non-empty destination, destination = source, converting a converted model, wrong L */
    CHECK(kv_convert_run(SRC, a, &o, &rep, NULL, NULL, &err) != 0 && strstr(err.msg, "not empty"), "non-empty dest refused: %s", err.msg);
    o.force = 1;
    CHECK(kv_convert_run(SRC, SRC, &o, &rep, NULL, NULL, &err) != 0 && strstr(err.msg, "source"), "dest = source refused: %s", err.msg);
    CHECK(kv_convert_run(a, b, &o, &rep, NULL, NULL, &err) != 0 && strstr(err.msg, "already transformed"), "re-conversion refused: %s", err.msg);
    kvmap_parse(&o.map, "pizza-bottom:3", 6, &err);
    snprintf(b, sizeof b, "%s/wrong-l", tmp);
    CHECK(kv_convert_run(SRC, b, &o, &rep, NULL, NULL, &err) != 0 && strstr(err.msg, "6 layers"), "map for another L refused: %s", err.msg);
    CHECK(!kv_path_exists(b), "nothing left behind on failure");
    snprintf(path, sizeof path, "ls %s | grep -q tmp-", tmp);
    CHECK(system(path) != 0, "no temporary folders left");
    snprintf(path, sizeof path, "rm -rf %s", tmp);
    if (system(path) != 0) return 1;
    return check_done("test_convert");
}
