/* HF rope_scaling kinds linear, dynamic (NTK), yarn and longrope: inverse frequencies and
 * attention factors against the published formulas (HF modeling_rope_utils; YaRN, Peng et al.
 * 2023; LongRoPE / Phi-3), computed here independently in long double; the table they give;
 * config.json parsing of each kind. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "formats/hfconfig.h"
#include "kernels/kernels.h"
#include "tests/check.h"

#define TOL  1e-6L
#define PI_L 3.141592653589793238462643383279503L

/* theta^(-2i/hd) */
static long double base_freq(long double theta, int i, int hd) {
    return powl(theta, -(long double)(2 * i) / hd);
}

/* worst |got - want| / max(|want|, 1e-300) over the hd/2 frequencies (relative: the low
 * frequencies are tiny) */
static long double worst_rel(const double *got, const long double *want, int half) {
    long double w = 0.0L;
    for (int i = 0; i < half; i++) {
        long double e = fabsl((long double)got[i] - want[i]) / fabsl(want[i]);
        if (!(e <= w)) w = e;
    }
    return w;
}

static void test_linear(void) {
    static const struct {
        double theta, factor;
        int hd;
    } sets[] = {{10000, 1, 8}, {10000, 2, 8}, {500000, 8, 128}, {1e6, 4, 12}, {10000, 3.5, 96}};
    for (size_t k = 0; k < sizeof sets / sizeof *sets; k++) {
        kv_rope_config c = {
            .theta = sets[k].theta, .scaling = KV_ROPE_LINEAR, .factor = sets[k].factor};
        double f[512];
        long double want[512];
        kv_error err = {0};
        CHECK(kv_rope_inv_freq(f, sets[k].hd, &c, &err) == 0, "linear: %s", err.msg);
        for (int i = 0; i < sets[k].hd / 2; i++)
            want[i] = base_freq(sets[k].theta, i, sets[k].hd) / sets[k].factor;
        CHECK(worst_rel(f, want, sets[k].hd / 2) <= TOL, "linear set %zu", k);
        CHECK(kv_rope_attention_factor(&c) == 1.0, "linear attention factor");
    }
}

static void test_dynamic(void) {
    static const struct {
        double theta, factor;
        int hd, orig;
        long len;
    } sets[] = {{10000, 2, 8, 64, 10},    {10000, 2, 8, 64, 64},         {10000, 2, 8, 64, 65},
                {10000, 2, 8, 64, 200},   {500000, 4, 128, 8192, 20000}, {1e6, 3, 12, 100, 1000},
                {10000, 1, 96, 512, 4096}};
    for (size_t k = 0; k < sizeof sets / sizeof *sets; k++) {
        kv_rope_config c = {.theta = sets[k].theta,
                            .scaling = KV_ROPE_DYNAMIC,
                            .factor = sets[k].factor,
                            .original_max_position = sets[k].orig};
        const int hd = sets[k].hd;
        double f[512];
        long double want[512];
        kv_error err = {0};
        CHECK(kv_rope_inv_freq_at(f, hd, &c, sets[k].len, &err) == 0, "dynamic: %s", err.msg);
        long double base = sets[k].theta;
        long double L = sets[k].len > sets[k].orig ? sets[k].len : sets[k].orig; /* max(L, c) */
        base *= powl(sets[k].factor * L / sets[k].orig - (sets[k].factor - 1.0L),
                     (long double)hd / (hd - 2));
        for (int i = 0; i < hd / 2; i++) want[i] = base_freq(base, i, hd);
        CHECK(worst_rel(f, want, hd / 2) <= TOL, "dynamic set %zu (length %ld)", k, sets[k].len);
        if (sets[k].len <= sets[k].orig) { /* below the original context: the plain rope */
            for (int i = 0; i < hd / 2; i++) want[i] = base_freq(sets[k].theta, i, hd);
            CHECK(worst_rel(f, want, hd / 2) == 0.0L || worst_rel(f, want, hd / 2) <= 1e-15L,
                  "dynamic set %zu below the original length is plain", k);
        } else {
            CHECK(f[hd / 2 - 1] < (double)base_freq(sets[k].theta, hd / 2 - 1, hd) ||
                      sets[k].factor == 1.0,
                  "dynamic set %zu above the original length lowers the frequencies", k);
        }
    }
    kv_rope_config c = {
        .theta = 10000, .scaling = KV_ROPE_DYNAMIC, .factor = 2, .original_max_position = 16};
    double f[2];
    kv_error err = {0};
    CHECK(kv_rope_inv_freq(f, 2, &c, &err) == KV_EINVAL && strstr(err.msg, "head_dim 2"),
          "dynamic with head_dim 2: %s", err.msg);
}

/* YaRN from the paper / HF, in long double */
static long double yarn_dim(long double rot, int hd, long double theta, int ctx) {
    return hd * logl(ctx / (rot * 2.0L * PI_L)) / (2.0L * logl(theta));
}
static long double mscale_l(long double s, long double m) {
    return s <= 1.0L ? 1.0L : 0.1L * m * logl(s) + 1.0L;
}

static void test_yarn(void) {
    static const struct {
        double theta, factor, beta_fast, beta_slow, mscale, mscale_all, attn;
        int hd, orig, truncate;
    } sets[] = {
        {10000, 4, 32, 1, 0, 0, 0, 128, 4096, 1}, /* Llama-2 style */
        {1e6, 4, 32, 1, 0, 0, 0, 64, 32768, 1}, /* Qwen2.5 style */
        {10000, 40, 32, 1, 1, 1, 0, 64, 4096, 1}, /* DeepSeek style mscale pair (ratio 1) */
        {10000, 40, 32, 1, 0.707, 1, 0, 64, 4096, 1},
        {10000, 8, 16, 2, 0, 0, 0, 12, 256, 0}, /* head_dim 12, no truncation */
        {500000, 2, 32, 1, 0, 0, 1.25, 96, 8192, 1}, /* attention_factor given */
        {10000, 1, 32, 32, 0, 0, 0, 8, 64, 1}, /* factor 1, beta_fast == beta_slow */
    };
    for (size_t k = 0; k < sizeof sets / sizeof *sets; k++) {
        kv_rope_config c = {.theta = sets[k].theta,
                            .scaling = KV_ROPE_YARN,
                            .factor = sets[k].factor,
                            .original_max_position = sets[k].orig,
                            .beta_fast = sets[k].beta_fast,
                            .beta_slow = sets[k].beta_slow,
                            .mscale = sets[k].mscale,
                            .mscale_all_dim = sets[k].mscale_all,
                            .attention_factor = sets[k].attn,
                            .truncate = sets[k].truncate};
        const int hd = sets[k].hd;
        double f[512];
        long double want[512];
        kv_error err = {0};
        CHECK(kv_rope_inv_freq(f, hd, &c, &err) == 0, "yarn: %s", err.msg);
        long double lo = yarn_dim(sets[k].beta_fast, hd, sets[k].theta, sets[k].orig);
        long double hi = yarn_dim(sets[k].beta_slow, hd, sets[k].theta, sets[k].orig);
        if (sets[k].truncate) lo = floorl(lo), hi = ceill(hi);
        lo = fmaxl(lo, 0.0L);
        hi = fminl(hi, hd - 1.0L);
        if (lo == hi) hi += 0.001L;
        for (int i = 0; i < hd / 2; i++) {
            long double ramp = fminl(fmaxl((i - lo) / (hi - lo), 0.0L), 1.0L);
            long double extra = base_freq(sets[k].theta, i, hd), inter = extra / sets[k].factor;
            want[i] = inter * ramp + extra * (1.0L - ramp);
        }
        CHECK(worst_rel(f, want, hd / 2) <= TOL, "yarn set %zu: rel error %Lg", k,
              worst_rel(f, want, hd / 2));
        long double af = sets[k].attn > 0 ? sets[k].attn
                         : sets[k].mscale > 0 && sets[k].mscale_all > 0
                             ? mscale_l(sets[k].factor, sets[k].mscale) /
                                   mscale_l(sets[k].factor, sets[k].mscale_all)
                             : mscale_l(sets[k].factor, 1.0L);
        CHECK(fabsl(kv_rope_attention_factor(&c) - af) <= TOL, "yarn set %zu attention %g vs %Lg",
              k, kv_rope_attention_factor(&c), af);
    }
    /* the default: 0.1 ln(factor) + 1 = 1.138629436 for factor 4 */
    kv_rope_config c = {.theta = 10000,
                        .scaling = KV_ROPE_YARN,
                        .factor = 4,
                        .original_max_position = 4096,
                        .beta_fast = 32,
                        .beta_slow = 1,
                        .truncate = 1};
    CHECK(fabs(kv_rope_attention_factor(&c) - 1.1386294361) < 1e-9, "yarn default attention");
}

static void test_longrope(void) {
    enum { MAXH = 64 };
    static const struct {
        double theta, factor, attn;
        int hd, orig;
        long len;
    } sets[] = {{10000, 32, 0, 96, 4096, 100},  {10000, 32, 0, 96, 4096, 4096},
                {10000, 32, 0, 96, 4096, 4097}, {1e6, 4, 0, 12, 256, 1000},
                {500000, 1, 0, 8, 64, 100},     {10000, 16, 1.5, 8, 64, 65}};
    for (size_t k = 0; k < sizeof sets / sizeof *sets; k++) {
        const int hd = sets[k].hd, half = hd / 2;
        kv_rope_config c = {.theta = sets[k].theta,
                            .scaling = KV_ROPE_LONGROPE,
                            .factor = sets[k].factor,
                            .original_max_position = sets[k].orig,
                            .attention_factor = sets[k].attn,
                            .n_factors = half};
        for (int i = 0; i < half; i++) {
            c.short_factor[i] = 1.0 + 0.05 * i;
            c.long_factor[i] = 1.0 + 0.7 * i + 0.01 * i * i;
        }
        double f[MAXH];
        long double want[MAXH];
        kv_error err = {0};
        CHECK(kv_rope_inv_freq_at(f, hd, &c, sets[k].len, &err) == 0, "longrope: %s", err.msg);
        const int lng = sets[k].len > sets[k].orig;
        for (int i = 0; i < half; i++)
            want[i] = 1.0L / ((lng ? c.long_factor[i] : c.short_factor[i]) *
                              powl(sets[k].theta, (long double)(2 * i) / hd));
        CHECK(worst_rel(f, want, half) <= TOL, "longrope set %zu", k);
        long double af = sets[k].attn > 0 ? sets[k].attn
                         : sets[k].factor <= 1
                             ? 1.0L
                             : sqrtl(1.0L + logl(sets[k].factor) / logl(sets[k].orig));
        CHECK(fabsl(kv_rope_attention_factor(&c) - af) <= TOL, "longrope set %zu attention", k);
    }
    kv_rope_config c = {.theta = 10000,
                        .scaling = KV_ROPE_LONGROPE,
                        .factor = 2,
                        .original_max_position = 64,
                        .n_factors = 3};
    for (int i = 0; i < 3; i++) c.short_factor[i] = c.long_factor[i] = 1;
    double f[4];
    kv_error err = {0};
    CHECK(kv_rope_inv_freq(f, 8, &c, &err) == KV_EINVAL && strstr(err.msg, "needs 4"),
          "longrope with 3 factors for head_dim 8: %s", err.msg);
}

/* the table: rows carry the attention factor; dynamic/longrope rows past the original length
 * use the frequencies of a sequence of p+1 tokens; linear factor 1 is the plain table */
static void test_table(void) {
    enum { HD = 12, HALF = HD / 2, ORIG = 16, MAXP = 40 };
    kv_error err = {0};
    kv_rope_table plain, lin1, dyn, yarn, lr;
    kv_rope_config cp = {.theta = 10000};
    kv_rope_config cl = {.theta = 10000, .scaling = KV_ROPE_LINEAR, .factor = 1};
    kv_rope_config cd = {
        .theta = 10000, .scaling = KV_ROPE_DYNAMIC, .factor = 2, .original_max_position = ORIG};
    kv_rope_config cy = {.theta = 10000,
                         .scaling = KV_ROPE_YARN,
                         .factor = 4,
                         .original_max_position = ORIG,
                         .beta_fast = 32,
                         .beta_slow = 1,
                         .truncate = 1};
    kv_rope_config cr = {.theta = 10000,
                         .scaling = KV_ROPE_LONGROPE,
                         .factor = 4,
                         .original_max_position = ORIG,
                         .n_factors = HALF};
    for (int i = 0; i < HALF; i++) cr.short_factor[i] = 1.0 + i, cr.long_factor[i] = 2.0 + 3 * i;
    CHECK(kv_rope_table_init(&plain, HD, MAXP, &cp, &err) == 0, "%s", err.msg);
    CHECK(kv_rope_table_init(&lin1, HD, MAXP, &cl, &err) == 0, "%s", err.msg);
    CHECK(kv_rope_table_init(&dyn, HD, MAXP, &cd, &err) == 0, "%s", err.msg);
    CHECK(kv_rope_table_init(&yarn, HD, MAXP, &cy, &err) == 0, "%s", err.msg);
    CHECK(kv_rope_table_init(&lr, HD, MAXP, &cr, &err) == 0, "%s", err.msg);
    CHECK(memcmp(plain.cos, lin1.cos, sizeof(float) * MAXP * HALF) == 0 &&
              memcmp(plain.sin, lin1.sin, sizeof(float) * MAXP * HALF) == 0,
          "linear factor 1 table differs from the plain one");
    long double worst = 0;
    const long double af = 0.1L * logl(4.0L) + 1.0L;
    double fy[HALF];
    kv_rope_inv_freq(fy, HD, &cy, &err);
    for (int p = 0; p < MAXP; p++) {
        double fd[HALF], fr[HALF];
        kv_rope_inv_freq_at(fd, HD, &cd, p + 1, &err);
        kv_rope_inv_freq_at(fr, HD, &cr, p + 1, &err);
        for (int i = 0; i < HALF; i++) {
            const size_t at = (size_t)p * HALF + i;
            worst = fmaxl(worst, fabsl(yarn.cos[at] - af * cosl(p * (long double)fy[i])));
            worst = fmaxl(worst, fabsl(yarn.sin[at] - af * sinl(p * (long double)fy[i])));
            worst = fmaxl(worst, fabsl(dyn.cos[at] - cosl(p * (long double)fd[i])));
            worst = fmaxl(worst, fabsl(dyn.sin[at] - sinl(p * (long double)fd[i])));
            const long double afr = sqrtl(1.0L + logl(4.0L) / logl(ORIG));
            worst = fmaxl(worst, fabsl(lr.cos[at] - afr * cosl(p * (long double)fr[i])));
        }
        if (p < ORIG)
            CHECK(memcmp(dyn.cos + (size_t)p * HALF, plain.cos + (size_t)p * HALF,
                         sizeof(float) * HALF) == 0,
                  "dynamic row %d (inside the original length) differs from plain", p);
    }
    CHECK(worst <= 1e-6L, "tables off the formulas by %Lg", worst);
    CHECK(dyn.cos[(size_t)(MAXP - 1) * HALF + HALF - 1] !=
              plain.cos[(size_t)(MAXP - 1) * HALF + HALF - 1],
          "dynamic row past the original length is plain");
    kv_rope_table_free(&plain);
    kv_rope_table_free(&lin1);
    kv_rope_table_free(&dyn);
    kv_rope_table_free(&yarn);
    kv_rope_table_free(&lr);
}

static const char *const base_cfg =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 48, \"intermediate_size\": 64, "
    "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 32, "
    "\"max_position_embeddings\": 256, \"rope_theta\": 20000.0, \"rope_scaling\": %s}";

static int parse_rs(hf_config *c, const char *rs, kv_error *err) {
    char text[2048];
    snprintf(text, sizeof text, base_cfg, rs);
    return hf_config_parse(c, text, "cfg", err);
}

static void test_parse(void) {
    hf_config c;
    kv_error err = {0};
    CHECK(parse_rs(&c, "{\"type\": \"linear\", \"factor\": 2.5}", &err) == 0, "%s", err.msg);
    CHECK(c.rope.scaling == KV_ROPE_LINEAR && c.rope.factor == 2.5 && c.rope.theta == 20000,
          "linear read");
    CHECK(parse_rs(&c, "{\"rope_type\": \"dynamic\", \"factor\": 2}", &err) == 0, "%s", err.msg);
    CHECK(c.rope.scaling == KV_ROPE_DYNAMIC && c.rope.original_max_position == 256,
          "dynamic: original length defaults to max_position_embeddings");
    CHECK(parse_rs(&c,
                   "{\"type\": \"yarn\", \"factor\": 4.0, "
                   "\"original_max_position_embeddings\": 64}",
                   &err) == 0,
          "%s", err.msg);
    CHECK(c.rope.scaling == KV_ROPE_YARN && c.rope.factor == 4 &&
              c.rope.original_max_position == 64 && c.rope.beta_fast == 32 &&
              c.rope.beta_slow == 1 && c.rope.truncate == 1 && c.rope.mscale == 0 &&
              c.rope.attention_factor == 0,
          "yarn defaults");
    CHECK(parse_rs(&c,
                   "{\"rope_type\": \"yarn\", \"factor\": 40, \"beta_fast\": 16, \"beta_slow\": 2, "
                   "\"mscale\": 0.707, \"mscale_all_dim\": 0.707, \"truncate\": false, "
                   "\"attention_factor\": 1.1}",
                   &err) == 0,
          "%s", err.msg);
    CHECK(c.rope.beta_fast == 16 && c.rope.beta_slow == 2 && c.rope.mscale == 0.707 &&
              c.rope.mscale_all_dim == 0.707 && c.rope.truncate == 0 &&
              c.rope.attention_factor == 1.1 && c.rope.original_max_position == 256,
          "yarn fields");
    CHECK(parse_rs(&c,
                   "{\"type\": \"longrope\", \"short_factor\": [1, 1.5, 2, 2.5, 3, 3.5], "
                   "\"long_factor\": [2, 3, 4, 5, 6, 7], \"original_max_position_embeddings\": 64}",
                   &err) == 0,
          "%s", err.msg);
    CHECK(c.rope.scaling == KV_ROPE_LONGROPE && c.rope.n_factors == 6 &&
              c.rope.short_factor[5] == 3.5 && c.rope.long_factor[0] == 2 &&
              c.rope.original_max_position == 64 && c.rope.factor == 4.0,
          "longrope fields (factor = 256/64)");
    CHECK(parse_rs(&c,
                   "{\"type\": \"longrope\", \"short_factor\": [1, 1, 1, 1, 1, 1], "
                   "\"long_factor\": [1, 1, 1, 1, 1, 1]}, \"original_max_position_embeddings\": "
                   "128",
                   &err) == 0,
          "%s", err.msg);
    CHECK(c.rope.original_max_position == 128 && c.rope.factor == 2.0,
          "longrope: Phi-3's top-level original_max_position_embeddings");
    CHECK(parse_rs(&c, "{\"type\": \"dynamic\", \"factor\": 2, \"beta_fast\": 3}", &err) ==
                  KV_EUNSUPPORTED &&
              strstr(err.msg, "'rope_scaling.beta_fast' is not read for rope_type 'dynamic'"),
          "unknown key: %s", err.msg);
}

int main(void) {
    test_linear();
    test_dynamic();
    test_yarn();
    test_longrope();
    test_table();
    test_parse();
    return check_done("test_rope_scaling");
}
