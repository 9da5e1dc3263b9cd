/* Pieces of the trainer: AdamW (the backend's op), the gradient norm and scaling, and the
 * schedule against hand-derived values, data blocks,
 * packing, split and sampling, the in-memory student initialisation (METHODS.md s1/s2), the
 * training forward against the fixture's golden logits (llama2.c run.c), and the trainable set. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/safetensors.h"
#include "kernels/backend.h"
#include "tests/check.h"
#include "tests/rand.h"
#include "transform/train/adamw.h"
#include "transform/train/distill_data.h"
#include "transform/train/distill_init.h"
#include "transform/train/train_forward.h"
#include "transform/train/train_model.h"

#define MODEL SHARED_DIR "/models/stories260K"

static kv_backend cpu; /* the CPU backend: device pointers are host pointers */

/* one backend AdamW update (the math of adamw.h) */
static void adamw_update(float *w, const float *g, float *m, float *v, size_t n,
                         const adamw_hparams *h, long t, double lr) {
    kv_error err = {0};
    const kv_adamw_step step = {.beta1 = h->beta1,
                                .beta2 = h->beta2,
                                .eps = h->eps,
                                .weight_decay = h->weight_decay,
                                .lr = lr,
                                .t = t};
    CHECK(cpu.ops->adamw(&cpu, w, g, m, v, n, &step, &err) == 0, "adamw: %s", err.msg);
}

static void test_adamw(void) {
    const adamw_hparams h = {.beta1 = 0.9, .beta2 = 0.999, .eps = 0, .weight_decay = 0};
    /* step 1: m = 0.1 g, v = 0.001 g^2, m/(1-0.9) = g, v/(1-0.999) = g^2: the update is lr*sign(g) */
    float w[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.5f, -4.0f, 1e-3f}, m[3] = {0}, v[3] = {0};
    adamw_update(w, g, m, v, 3, &h, 1, 0.01);
    CHECK_NEAR(w[0], 0.99, 1e-6, "step 1, g > 0");
    CHECK_NEAR(w[1], -1.99, 1e-6, "step 1, g < 0");
    CHECK_NEAR(w[2], 0.49, 1e-6, "step 1, tiny g");
    CHECK_NEAR(m[0], 0.05, 1e-8, "m after step 1");
    CHECK_NEAR(v[0], 0.00025, 1e-9, "v after step 1");
    /* step 2 with g = 0 for element 0: m = 0.045, v = 0.00024975;
     * mhat = 0.045/0.19 = 0.236842..., vhat = 0.00024975/0.001999 = 0.124937...;
     * update = 0.01 * 0.236842 / 0.353465 = 0.0067006 */
    float g2[3] = {0, 0, 0};
    adamw_update(w, g2, m, v, 3, &h, 2, 0.01);
    CHECK_NEAR(w[0], 0.99 - 0.0067006, 2e-6, "step 2 with zero gradient keeps moving");
    /* decoupled weight decay: lr 0.1, wd 0.5, g = 0 from zero moments: w *= 1 - 0.05 */
    const adamw_hparams hd = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.5};
    float w3[1] = {2.0f}, z[1] = {0}, m3[1] = {0}, v3[1] = {0};
    adamw_update(w3, z, m3, v3, 1, &hd, 1, 0.1);
    CHECK_NEAR(w3[0], 1.9, 1e-6, "weight decay alone");
}

static void test_schedule(void) {
    /* 100 steps, 5 warm-up, peak 1 */
    CHECK_NEAR(lr_at(0, 100, 5, 1.0, LR_LINEAR), 0.2, 1e-12, "warm-up first step");
    CHECK_NEAR(lr_at(4, 100, 5, 1.0, LR_LINEAR), 1.0, 1e-12, "warm-up last step");
    CHECK_NEAR(lr_at(5, 100, 5, 1.0, LR_LINEAR), 1.0, 1e-12, "decay starts at peak");
    CHECK_NEAR(lr_at(52, 100, 5, 1.0, LR_LINEAR), 48.0 / 95.0, 1e-12, "linear halfway");
    CHECK_NEAR(lr_at(99, 100, 5, 1.0, LR_LINEAR), 1.0 / 95.0, 1e-12, "linear last step");
    CHECK_NEAR(lr_at(5, 100, 5, 1.0, LR_COSINE), 1.0, 1e-12, "cosine start");
    CHECK_NEAR(lr_at(5 + 95 / 2.0, 100, 5, 1.0, LR_COSINE), 0.5 + 0.5 * cos(M_PI * 47 / 95.0),
               1e-12, "cosine middle");
    CHECK_NEAR(lr_at(60, 100, 5, 0.3, LR_CONSTANT), 0.3, 1e-12, "constant");
    CHECK_NEAR(lr_at(0, 10, 0, 0.3, LR_LINEAR), 0.3, 1e-12, "no warm-up");
    /* the global norm: sumsq continues one running sum over the parts; clipping scales each */
    float a[2] = {3, 0}, b[1] = {4};
    float *parts[2] = {a, b};
    size_t n[2] = {2, 1};
    kv_error err = {0};
    double ss = 0;
    int rc = 0;
    for (int p = 0; p < 2; p++) rc |= cpu.ops->sumsq(&cpu, &ss, parts[p], n[p], &err);
    CHECK(rc == 0, "sumsq: %s", err.msg);
    CHECK_NEAR(sqrt(ss), 5.0, 1e-12, "global norm 3-4-5");
    for (int p = 0; p < 2; p++) rc |= cpu.ops->scale(&cpu, parts[p], 0.5f, n[p], &err);
    CHECK(rc == 0 && a[0] == 1.5f && b[0] == 2.0f, "scaled");
}

static void test_data(void) {
    kv_error err = {0};
    kv_tokenizer *tok = NULL;
    int rc = kv_tokenizer_load(&tok, MODEL "/tokenizer.json", &err);
    CHECK(rc == 0, "tokenizer: %s", err.msg);
    if (rc) return;
    /* three blocks (one only whitespace-padded), CRLF-free; each gets BOS */
    const char *text = "Once upon a time.\n\n  Lily ran.  \n\n\n\nThe end.\n";
    distill_tokens d = {0};
    rc = distill_tokens_from_text(&d, text, strlen(text), tok, "mem", &err);
    CHECK(rc == 0, "encode: %s", err.msg);
    int bos = 0;
    for (long i = 0; i < d.n; i++) bos += d.ids[i] == 1;
    CHECK(bos == 3 && d.ids[0] == 1, "3 blocks, each with BOS first (got %d)", bos);
    /* block 2 is encoded stripped: same ids as encoding "Lily ran." alone */
    int *ids = NULL, n = 0;
    kv_tokenizer_encode(tok, "Lily ran.", 9, 1, &ids, &n, &err);
    long at = -1;
    for (long i = 1; i < d.n; i++)
        if (d.ids[i] == 1) {
            at = i;
            break;
        }
    CHECK(at > 0 && at + n <= d.n && !memcmp(d.ids + at, ids, sizeof(int) * (size_t)n),
          "second block = encode(\"Lily ran.\") with BOS");
    free(ids);
    /* golden: paragraph 2 of tinystories_val.txt starts golden sequence 1 */
    st_file g;
    if (st_open(&g, SHARED_DIR "/golden/stories260K_logits.safetensors", &err) == 0) {
        const st_tensor *t = st_find(&g, "tokens");
        distill_tokens v = {0};
        char *buf = NULL;
        size_t len = 0;
        FILE *f = fopen(SHARED_DIR "/data/tinystories_val.txt", "rb");
        buf = malloc(20000);
        len = f ? fread(buf, 1, 20000, f) : 0;
        if (f) fclose(f);
        /* the third block (index 2) as the fixture defines paragraphs */
        size_t p = 0;
        for (int k = 0; k < 2 && p < len; k++) p = (size_t)(strstr(buf + p, "\n\n") - buf) + 2;
        char *end = strstr(buf + p, "\n\n");
        rc = distill_tokens_from_text(&v, buf + p, (size_t)(end - (buf + p)), tok, "p2", &err);
        const int32_t *gt = (const int32_t *)t->data + 64;
        CHECK(rc == 0 && v.n >= 64 && !memcmp(v.ids, gt, 64 * sizeof(int32_t)),
              "paragraph 2 tokens = golden sequence 1");
        free(buf);
        distill_tokens_free(&v);
        st_close(&g);
    }
    /* pre-tokenised .bin: little-endian uint16 ids for a 512-id vocabulary; ids checked */
    {
        const unsigned char bin[] = {1, 0, 0x93, 1, 0xff, 1, 2, 0};
        const unsigned char bad[] = {1, 0, 0, 2};
        char p1[] = "/tmp/kvtbinXXXXXX.bin", p2[] = "/tmp/kvtbadXXXXXX.bin";
        int f1 = mkstemps(p1, 4), f2 = mkstemps(p2, 4);
        CHECK(f1 >= 0 && f2 >= 0, "temp files");
        if (f1 >= 0 && f2 >= 0) {
            CHECK(write(f1, bin, sizeof bin) == sizeof bin &&
                      write(f2, bad, sizeof bad) == sizeof bad,
                  "write");
            close(f1), close(f2);
            distill_tokens b = {0};
            CHECK(distill_tokens_load(&b, p1, NULL, 512, &err) == 0 && b.n == 4 && b.ids[0] == 1 &&
                      b.ids[1] == 0x193 && b.ids[2] == 0x1ff && b.ids[3] == 2,
                  ".bin ids: %s", err.msg);
            CHECK(distill_tokens_load(&b, p2, NULL, 512, &err) != 0 && strstr(err.msg, "512"),
                  "id 512 refused: %s", err.msg);
            CHECK(distill_tokens_load(&b, p1, NULL, 300, &err) != 0, "id 511 >= vocab 300 refused");
            CHECK(distill_tokens_load(&b, p1, NULL, 70000, &err) != 0 &&
                      strstr(err.msg, "26411009"),
                  "vocab > 65536: read as uint32 (first id 0x01930001): %s", err.msg);
            distill_tokens_free(&b);
            unlink(p1), unlink(p2);
        }
    }
    /* packing and the held-out split */
    distill_tokens s = {0};
    s.ids = malloc(sizeof(int32_t) * 105);
    for (int i = 0; i < 105; i++) s.ids[i] = i;
    s.n = 105;
    distill_seqs all, tr, ev;
    CHECK(distill_pack(&all, &s, 0, s.n, 10, &err) == 0 && all.n == 10, "10 sequences of 10");
    CHECK(all.ids[37] == 37 && all.ids[99] == 99, "consecutive packing");
    CHECK(distill_split(&tr, &ev, &all, 0.1, &err) == 0 && tr.n == 9 && ev.n == 1, "90/10");
    CHECK(ev.ids[0] == 90, "held-out = the last sequences");
    distill_seqs_free(&tr), distill_seqs_free(&ev);
    CHECK(distill_split(&tr, &ev, &all, 0.01, &err) == 0 && ev.n == 1, "at least one held out");
    distill_seqs_free(&tr), distill_seqs_free(&ev);
    distill_seqs_free(&all);
    distill_tokens_free(&s);
    /* sampler: each epoch a permutation; reproducible; epochs differ */
    distill_sampler a, b;
    distill_sampler_init(&a, 50, 7, &err);
    distill_sampler_init(&b, 50, 7, &err);
    int seen[50] = {0}, same = 1, differs = 0;
    for (long k = 0; k < 50; k++) seen[distill_sampler_get(&a, k)]++;
    int perm = 1;
    for (int i = 0; i < 50; i++) perm &= seen[i] == 1;
    CHECK(perm, "epoch 0 is a permutation");
    for (long k = 149; k >= 0; k--)
        same &= distill_sampler_get(&a, k) == distill_sampler_get(&b, k);
    for (long k = 0; k < 50; k++)
        differs |= distill_sampler_get(&a, k) != distill_sampler_get(&a, k + 50);
    CHECK(same, "same seed, same order (any access order)");
    CHECK(differs, "epochs are shuffled differently");
    distill_sampler_free(&b);
    distill_sampler_init(&b, 50, 8, &err);
    differs = 0;
    for (long k = 0; k < 50; k++)
        differs |= distill_sampler_get(&a, k) != distill_sampler_get(&b, k);
    CHECK(differs, "another seed, another order");
    distill_sampler_free(&a), distill_sampler_free(&b);
    distill_tokens_free(&d);
    kv_tokenizer_free(tok);
}

static void test_init(const kvt_model *t) {
    kv_error err = {0};
    kv_map map;
    kvt_model s;
    /* SwiftKV l=1, g=2 on 5 layers: leaders 1, 3 */
    kvmap_swiftkv(&map, 5, 1, 2, &err);
    int rc = distill_student_init(&s, t, &map, DISTILL_INIT_MEAN, &err);
    CHECK(rc == 0, "swiftkv init: %s", err.msg);
    if (!rc) {
        kvt_param *q3 = kvt_model_find(&s, "model.layers.3.self_attn.q_proj_swiftkv.weight");
        kvt_param *tq3 = kvt_model_find(t, "model.layers.3.self_attn.q_proj.weight");
        CHECK(q3 && tq3 && max_abs_diff(q3->w, tq3->w, q3->n) == 0, "q_proj_swiftkv = q_proj");
        kvt_param *k3 = kvt_model_find(&s, "model.layers.3.self_attn.k_proj_swiftkv.weight");
        kvt_param *a = kvt_model_find(t, "model.layers.3.self_attn.v_proj.weight");
        kvt_param *b = kvt_model_find(t, "model.layers.4.self_attn.v_proj.weight");
        kvt_param *v3 = kvt_model_find(&s, "model.layers.3.self_attn.v_proj_swiftkv.weight");
        CHECK(k3 && v3, "leader 3 has k/v_proj_swiftkv");
        double e = 0;
        for (size_t i = 0; v3 && i < v3->n; i++)
            e = fmax(e, fabs(v3->w[i] - 0.5 * (a->w[i] + b->w[i])));
        CHECK(e < 1e-7, "v_proj_swiftkv = mean of the group's v_proj (%g)", e);
        CHECK(!kvt_model_find(&s, "model.layers.4.self_attn.k_proj_swiftkv.weight"),
              "non-leader has no k_proj_swiftkv");
        CHECK(!kvt_model_find(&s, "model.layers.2.self_attn.q_proj.weight") &&
                  kvt_model_find(&s, "model.layers.0.self_attn.q_proj.weight"),
              "deployable: teacher q of layers >= l dropped, < l kept");
        kvt_param *ns = kvt_model_find(&s, "model.norm_swiftkv.weight");
        kvt_param *n1 = kvt_model_find(t, "model.layers.1.input_layernorm.weight");
        CHECK(ns && max_abs_diff(ns->w, n1->w, ns->n) == 0,
              "norm_swiftkv = layers[l].input_layernorm");
        long n_train = kvt_model_set_trainable_distill(&s, &err);
        /* norm 64 + q 4 x 64x64 + k/v 2 leaders x 2 x 32x64 */
        CHECK(n_train == 64 + 4 * 4096 + 4 * 2048, "SwiftKV trainable elements %ld", n_train);
        kvt_model_free(&s);
    }
    /* lasagna-top:2 on 5 layers: groups [0..2] -> 2, [3..4] -> 4 */
    kvmap_parse(&map, "lasagna-top:2", 5, &err);
    rc = distill_student_init(&s, t, &map, DISTILL_INIT_MEAN, &err);
    CHECK(rc == 0, "cross init: %s", err.msg);
    if (!rc) {
        CHECK(!kvt_model_find(&s, "model.layers.0.self_attn.k_proj.weight") &&
                  !kvt_model_find(&s, "model.layers.3.self_attn.v_proj.weight"),
              "non-KV layers lose k/v");
        kvt_param *k2 = kvt_model_find(&s, "model.layers.2.self_attn.k_proj.weight");
        double e = 0;
        for (size_t i = 0; k2 && i < k2->n; i++) {
            double mean = 0;
            for (int l = 0; l < 3; l++) {
                char n[96];
                snprintf(n, sizeof n, "model.layers.%d.self_attn.k_proj.weight", l);
                mean += kvt_model_find(t, n)->w[i] / 3.0;
            }
            e = fmax(e, fabs(k2->w[i] - mean));
        }
        CHECK(k2 && e < 1e-6, "target k_proj = mean over its readers (%g)", e);
        long n_train = kvt_model_set_trainable_distill(&s, &err);
        /* q of layers 0, 1, 3 (3 x 4096) + k/v of targets 2 and 4 (4 x 2048) */
        CHECK(n_train == 3 * 4096 + 4 * 2048, "cross trainable elements %ld", n_train);
        CHECK(kvt_model_find(&s, "model.layers.2.self_attn.q_proj.weight")->g == NULL,
              "q_proj of a KV layer is frozen");
        CHECK(kvt_model_find(&s, "model.layers.0.mlp.up_proj.weight")->g == NULL, "MLP frozen");
        kvt_model_free(&s);
    }
    kvmap_parse(&map, "lasagna-top:2", 5, &err);
    rc = distill_student_init(&s, t, &map, DISTILL_INIT_TARGET, &err);
    if (!rc) {
        kvt_param *k4 = kvt_model_find(&s, "model.layers.4.self_attn.k_proj.weight");
        kvt_param *tk4 = kvt_model_find(t, "model.layers.4.self_attn.k_proj.weight");
        CHECK(max_abs_diff(k4->w, tk4->w, k4->n) == 0, "target init keeps the target's own k_proj");
        kvt_model_free(&s);
    }
    kvmap_identity(&map, 5);
    CHECK(distill_student_init(&s, t, &map, DISTILL_INIT_MEAN, &err) != 0, "identity refused");
}

/* the training forward on the teacher reproduces run.c's logits (independent golden) */
static void test_golden_forward(const kvt_model *t) {
    kv_error err = {0};
    st_file g;
    int rc = st_open(&g, SHARED_DIR "/golden/stories260K_logits.safetensors", &err);
    CHECK(rc == 0, "golden: %s", err.msg);
    if (rc) return;
    const st_tensor *tok = st_find(&g, "tokens"), *lg = st_find(&g, "logits");
    kvt_run r;
    rc = kvt_run_init(&r, &cpu, t, 3, 64, 1, 0, &err);
    CHECK(rc == 0, "run: %s", err.msg);
    if (!rc && kvt_forward(&r, (const int32_t *)tok->data, &err) == 0) {
        double e = max_abs_diff(r.logits, (const float *)lg->data, lg->n_elements);
        CHECK(e < 1e-4, "logits vs run.c golden: max abs diff %g", e);
    }
    kvt_run_free(&r);
    st_close(&g);
}

int main(void) {
    kv_error berr = {0};
    CHECK(kv_backend_cpu_init(&cpu, 0, &berr) == 0, "cpu backend: %s", berr.msg);
    test_adamw();
    test_schedule();
    test_data();
    kvt_model t;
    kv_error err = {0};
    int rc = kvt_model_load(&t, MODEL, &err);
    CHECK(rc == 0, "load stories260K: %s", err.msg);
    if (!rc) {
        test_init(&t);
        test_golden_forward(&t);
        kvt_model_free(&t);
    }
    kv_backend_free(&cpu);
    return check_done("test_train_parts");
}
