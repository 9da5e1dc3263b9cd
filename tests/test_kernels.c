/* Forward kernels against naive double-precision loops written here; RoPE frequencies
 * (plain and HF "llama3") against values derived by hand from the formula. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "kernels/cpu/gemv.h"
#include "kernels/cpu/vexp.h"
#include "kernels/kernels.h"
#include "tests/check.h"
#include "tests/rand.h"

static void test_matmul(int T, int n_in, int n_out, int with_bias) {
    float *x = rand_buf((size_t)T * n_in, 1.0f), *W = rand_buf((size_t)n_out * n_in, 0.5f);
    float *b = with_bias ? rand_buf(n_out, 1.0f) : NULL;
    float *out = rand_buf((size_t)T * n_out, 100.0f); /* garbage: must be overwritten */
    float *acc = rand_buf((size_t)T * n_out, 1.0f), *acc0 = malloc(sizeof(float) * T * n_out);
    memcpy(acc0, acc, sizeof(float) * T * n_out);
    double *ref = malloc(sizeof(double) * T * n_out), *ref_acc = malloc(sizeof(double) * T * n_out);
    double mag = 0.0;
    for (int t = 0; t < T; t++)
        for (int o = 0; o < n_out; o++) {
            double s = b ? b[o] : 0.0, m = 0.0;
            for (int i = 0; i < n_in; i++) {
                s += (double)x[t * n_in + i] * W[o * n_in + i];
                m += fabs((double)x[t * n_in + i] * W[o * n_in + i]);
            }
            ref[t * n_out + o] = s;
            ref_acc[t * n_out + o] = s + acc0[t * n_out + o];
            if (m > mag) mag = m;
        }
    kv_matmul(out, x, W, b, T, n_in, n_out);
    kv_matmul_acc(acc, x, W, b, T, n_in, n_out);
    double w1 = worst(out, ref, (size_t)T * n_out, 1e-6 * mag + 1e-7, 0);
    double w2 = worst(acc, ref_acc, (size_t)T * n_out, 1e-6 * mag + 1e-7, 0);
    CHECK(w1 <= 1, "matmul T=%d %dx%d bias=%d: error %.3g x tolerance", T, n_in, n_out, with_bias,
          w1);
    CHECK(w2 <= 1, "matmul_acc T=%d %dx%d bias=%d: error %.3g x tolerance", T, n_in, n_out,
          with_bias, w2);
    free(x), free(W), free(b), free(out), free(acc), free(acc0), free(ref), free(ref_acc);
}

/* matrix products run as one block of output rows per kernel thread, cut at multiples of 12
 * rows (kernels/cpu/matmul.c): under OpenBLAS's Haswell kernels (the CI's OPENBLAS_CORETYPE) the
 * bits of one unsplit single-threaded call, so the same at 1 and 3 threads, forward and backward.
 * Other OpenBLAS kernels block differently (SkylakeX's change bits at such cuts for some shapes,
 * as OpenBLAS's own threads did), so there only the error bound of test_matmul holds. */
static void test_matmul_threads(int T, int n_in, int n_out) {
    if (strcmp(openblas_get_corename(), "Haswell") != 0) return;
    const size_t nx = (size_t)T * n_in, nw = (size_t)n_out * n_in, no = (size_t)T * n_out;
    float *x = rand_buf(nx, 1.0f), *W = rand_buf(nw, 0.5f), *dout = rand_buf(no, 1.0f);
    float *out[2], *dx[2], *dW[2];
    for (int r = 0; r < 2; r++) {
        kv_kernels_set_threads(r ? 3 : 1);
        out[r] = malloc(sizeof(float) * no);
        dx[r] = calloc(nx, sizeof(float));
        dW[r] = calloc(nw, sizeof(float));
        kv_matmul(out[r], x, W, NULL, T, n_in, n_out);
        kv_matmul_backward(dx[r], dW[r], NULL, dout, x, W, T, n_in, n_out);
    }
    kv_kernels_set_threads(1);
    CHECK(memcmp(out[0], out[1], sizeof(float) * no) == 0, "matmul T=%d: 3 threads != 1", T);
    CHECK(memcmp(dx[0], dx[1], sizeof(float) * nx) == 0, "matmul dx T=%d: 3 threads != 1", T);
    CHECK(memcmp(dW[0], dW[1], sizeof(float) * nw) == 0, "matmul dW T=%d: 3 threads != 1", T);
    float *one = malloc(sizeof(float) * no), *one_dx = calloc(nx, sizeof(float)),
          *one_dW = calloc(nw, sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n_out, n_in, 1.0f, x, n_in, W, n_in,
                0.0f, one, n_out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, n_in, n_out, 1.0f, dout, n_out, W,
                n_in, 1.0f, one_dx, n_in);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_out, n_in, T, 1.0f, dout, n_out, x, n_in,
                1.0f, one_dW, n_in);
    CHECK(memcmp(out[1], one, sizeof(float) * no) == 0, "matmul T=%d != one sgemm call", T);
    CHECK(memcmp(dx[1], one_dx, sizeof(float) * nx) == 0, "dx T=%d != one sgemm call", T);
    CHECK(memcmp(dW[1], one_dW, sizeof(float) * nw) == 0, "dW T=%d != one sgemm call", T);
    free(one), free(one_dx), free(one_dW);
    for (int r = 0; r < 2; r++) free(out[r]), free(dx[r]), free(dW[r]);
    free(x), free(W), free(dout);
}

/* every m up to 700, every parts the rows allow: aligned, increasing, none empty, and no part
 * longer than the equal share plus align / 2 (plus the short last block) */
static void test_row_cuts(void) {
    enum { ALIGN = 12 };
    int cut[70], bad = 0;
    for (int m = 1; m <= 700; m++) {
        const int blocks = (m + ALIGN - 1) / ALIGN;
        for (int parts = 1; parts <= blocks && parts < 69; parts++) {
            kv_row_cuts(cut, m, parts, ALIGN);
            bad += cut[0] != 0 || cut[parts] != m;
            for (int i = 1; i <= parts; i++) {
                bad += cut[i] <= cut[i - 1];
                bad += i < parts && cut[i] % ALIGN != 0;
                bad += cut[i] - cut[i - 1] > (m + parts - 1) / parts + ALIGN;
            }
        }
    }
    CHECK(bad == 0, "kv_row_cuts: %d violations", bad);
    kv_row_cuts(cut, 512, 2, ALIGN);
    CHECK(cut[1] == 252, "512 rows on 2 workers cut at %d, not 252", cut[1]);
}

static void test_rmsnorm(void) {
    enum { T = 3, D = 67 };
    float *x = rand_buf(T * D, 3.0f), *w = rand_buf(D, 1.0f), out[T * D], inplace[T * D];
    double ref[T * D];
    const float eps = 1e-5f;
    x[5] = 0; /* a row need not be nonzero everywhere */
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < D; i++) ss += (double)x[t * D + i] * x[t * D + i];
        double r = 1.0 / sqrt(ss / D + eps);
        for (int i = 0; i < D; i++) ref[t * D + i] = (double)x[t * D + i] * r * w[i];
    }
    kv_rmsnorm(out, x, w, T, D, eps);
    memcpy(inplace, x, sizeof inplace);
    kv_rmsnorm(inplace, inplace, w, T, D, eps);
    CHECK(worst(out, ref, T * D, 1e-6, 1e-6) <= 1, "rmsnorm vs double");
    CHECK(memcmp(out, inplace, sizeof out) == 0, "rmsnorm in place differs");
    /* all-zero row: eps keeps it finite, output zero */
    float z[D] = {0}, zo[D];
    kv_rmsnorm(zo, z, w, 1, D, eps);
    int ok = 1;
    for (int i = 0; i < D; i++) ok &= zo[i] == 0.0f;
    CHECK(ok, "rmsnorm of a zero row is not zero");
    free(x), free(w);
}

static void test_embedding(void) {
    enum { V = 10, D = 5 };
    float *table = rand_buf(V * D, 1.0f), out[3 * D];
    int32_t ids[3] = {7, 0, 9};
    kv_error err = {0};
    CHECK(kv_embedding(out, table, V, D, ids, 3, &err) == 0, "embedding: %s", err.msg);
    CHECK(memcmp(out, table + 7 * D, sizeof(float) * D) == 0 &&
              memcmp(out + D, table, sizeof(float) * D) == 0 &&
              memcmp(out + 2 * D, table + 9 * D, sizeof(float) * D) == 0,
          "embedding rows");
    int32_t bad[2] = {3, 10};
    CHECK(kv_embedding(out, table, V, D, bad, 2, &err) == KV_EINVAL, "id 10 of 10 accepted");
    CHECK(strstr(err.msg, "10") && strstr(err.msg, "position 1"), "message: %s", err.msg);
    int32_t neg[1] = {-1};
    CHECK(kv_embedding(out, table, V, D, neg, 1, &err) == KV_EINVAL, "negative id accepted");
    free(table);
}

static void test_rope_freq(void) {
    kv_error err = {0};
    double f[64];
    /* plain, hd = 8, theta = 10000: f_i = 10000^(-i/4) = 1, 0.1, 0.01, 0.001 */
    kv_rope_config plain = {.theta = 10000.0};
    CHECK(kv_rope_inv_freq(f, 8, &plain, &err) == 0, "%s", err.msg);
    const double want_plain[4] = {1.0, 0.1, 0.01, 0.001};
    for (int i = 0; i < 4; i++)
        CHECK_NEAR(f[i], want_plain[i], 1e-15 * want_plain[i] + 1e-18, "plain f");

    /* llama3, hd = 8, theta = 10000, factor 8, low 1, high 4, original 1024:
     * wavelengths 2*pi/f = 6.28, 62.8, 628.3, 6283.2; hi = 1024/4 = 256, lo = 1024/1 = 1024.
     * f0, f1: wavelength < 256, unchanged. f3: > 1024, 0.001/8 = 0.000125.
     * f2: s = (1024*0.01/(2 pi) - 1)/3 = (1.6297466172 - 1)/3 = 0.2099155391;
     *     (1-s)*0.01/8 + s*0.01 = 0.000987605576 + 0.002099155391 = 0.003086760967 */
    kv_rope_config l3 = {.theta = 10000.0,
                         .scaling = KV_ROPE_LLAMA3,
                         .factor = 8.0,
                         .low_freq_factor = 1.0,
                         .high_freq_factor = 4.0,
                         .original_max_position = 1024};
    CHECK(kv_rope_inv_freq(f, 8, &l3, &err) == 0, "%s", err.msg);
    CHECK_NEAR(f[0], 1.0, 1e-15, "llama3 f0");
    CHECK_NEAR(f[1], 0.1, 1e-15, "llama3 f1");
    CHECK_NEAR(f[2], 0.003086760967, 2e-12, "llama3 f2 (smoothed)");
    CHECK_NEAR(f[3], 0.000125, 1e-16, "llama3 f3 (scaled)");

    /* Llama 3.1 settings, hd = 128, theta 500000, factor 8, low 1, high 4, original 8192:
     * base f_i = 500000^(-i/64); wavelength in [2048, 8192] <=> i in 29..34 (by hand:
     * ln f = -0.20503 i; 2 pi/8192 = e^-7.173, 2 pi/2048 = e^-5.787). */
    kv_rope_config l31 = {.theta = 500000.0,
                          .scaling = KV_ROPE_LLAMA3,
                          .factor = 8.0,
                          .low_freq_factor = 1.0,
                          .high_freq_factor = 4.0,
                          .original_max_position = 8192};
    CHECK(kv_rope_inv_freq(f, 128, &l31, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 64; i++) {
        double base = pow(500000.0, -i / 64.0);
        if (i <= 28) CHECK_NEAR(f[i], base, 1e-14 * base, "llama3.1 high frequency unchanged");
        else if (i >= 35) CHECK_NEAR(f[i], base / 8, 1e-14 * base, "llama3.1 low frequency / 8");
        else
            CHECK(f[i] > base / 8 * (1 + 1e-9) && f[i] < base * (1 - 1e-9),
                  "llama3.1 f[%d] = %g not strictly between %g and %g", i, f[i], base / 8, base);
    }

    CHECK(kv_rope_inv_freq(f, 7, &plain, &err) == KV_EINVAL, "odd head_dim accepted");
    kv_rope_config bad = l3;
    bad.high_freq_factor = 1.0;
    CHECK(kv_rope_inv_freq(f, 8, &bad, &err) == KV_EINVAL, "high == low accepted");
    bad = l3;
    bad.original_max_position = 0;
    CHECK(kv_rope_inv_freq(f, 8, &bad, &err) == KV_EINVAL, "original_max_position 0 accepted");
    CHECK(strstr(err.msg, "original_max_position_embeddings") != NULL, "message: %s", err.msg);
}

static void test_rope_apply(void) {
    enum { T = 4, NH = 3, HD = 10, HALF = HD / 2 };
    kv_error err = {0};
    kv_rope_config c = {.theta = 10000.0};
    kv_rope_table tab;
    const int max_pos = 70001;
    CHECK(kv_rope_table_init(&tab, HD, max_pos, &c, &err) == 0, "%s", err.msg);
    double f[HALF];
    kv_rope_inv_freq(f, HD, &c, &err);
    /* angles in double: at p = 70000, (float)p * (float)f differs from p*f in double */
    int exact = 1;
    for (int p = 69990; p < max_pos; p++)
        for (int i = 0; i < HALF; i++)
            exact &= tab.cos[p * HALF + i] == (float)cos(p * f[i]) &&
                     tab.sin[p * HALF + i] == (float)sin(p * f[i]);
    CHECK(exact, "rope table is not cos/sin of the double angle, rounded");

    int32_t pos[T] = {0, 3, 70000, 17};
    float *x = rand_buf(T * NH * HD, 2.0f), y[T * NH * HD];
    double ref[T * NH * HD];
    memcpy(y, x, sizeof y);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < HALF; i++) {
                const float *a = x + (t * NH + h) * HD;
                double ang = pos[t] * f[i], cs = (float)cos(ang), sn = (float)sin(ang);
                ref[(t * NH + h) * HD + i] = a[i] * cs - a[i + HALF] * sn;
                ref[(t * NH + h) * HD + i + HALF] = a[i + HALF] * cs + a[i] * sn;
            }
    kv_rope(y, T, NH, pos, &tab);
    CHECK(worst(y, ref, T * NH * HD, 1e-6, 1e-6) <= 1, "rope vs double");
    int zero_pos_same = 1;
    for (int i = 0; i < NH * HD; i++) zero_pos_same &= y[i] == x[i];
    CHECK(zero_pos_same, "rope at position 0 is not the identity");
    /* the inverse rotation undoes it */
    kv_rope_backward(y, T, NH, pos, &tab);
    double back[T * NH * HD];
    for (int i = 0; i < T * NH * HD; i++) back[i] = x[i];
    CHECK(worst(y, back, T * NH * HD, 1e-6, 1e-6) <= 1, "rope_backward does not invert rope");
    kv_rope_table_free(&tab);
    CHECK(tab.cos == NULL && tab.max_pos == 0, "table freed");
    CHECK(kv_rope_table_init(&tab, HD, 0, &c, &err) == KV_EINVAL, "0 positions accepted");
    free(x);
}

static void test_activations(void) {
    enum { N = 257 };
    float *g = rand_buf(N, 8.0f), *u = rand_buf(N, 2.0f), h[N], alias[N];
    double ref[N];
    g[0] = -90.0f; /* exp overflow territory */
    g[1] = 90.0f;
    for (int i = 0; i < N; i++) ref[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    kv_swiglu(h, g, u, N);
    CHECK(worst(h, ref, N, 1e-6, 1e-6) <= 1, "swiglu vs double");
    memcpy(alias, g, sizeof alias);
    kv_swiglu(alias, alias, u, N);
    CHECK(memcmp(alias, h, sizeof h) == 0, "swiglu aliased to gate differs");

    /* softmax rows with a large offset (stability) */
    enum { R = 3, V = 50 };
    float *x = rand_buf(R * V, 5.0f), sm[R * V], ls[R * V];
    for (int i = 0; i < V; i++) x[2 * V + i] += 1000.0f;
    double smr[R * V], lsr[R * V];
    for (int r = 0; r < R; r++) {
        double m = -INFINITY, s = 0;
        for (int i = 0; i < V; i++) m = fmax(m, x[r * V + i]);
        for (int i = 0; i < V; i++) s += exp(x[r * V + i] - m);
        for (int i = 0; i < V; i++) {
            smr[r * V + i] = exp(x[r * V + i] - m) / s;
            lsr[r * V + i] = x[r * V + i] - m - log(s);
        }
        kv_log_softmax(ls + r * V, x + r * V, V);
        double ce = kv_cross_entropy(x + r * V, V, 7);
        CHECK_NEAR(ce, -lsr[r * V + 7], 1e-12 * (1 + fabs(lsr[r * V + 7])), "cross entropy");
    }
    memcpy(sm, x, sizeof sm);
    kv_softmax(sm, R, V);
    CHECK(worst(sm, smr, R * V, 1e-9, 1e-6) <= 1, "softmax vs double");
    CHECK(worst(ls, lsr, R * V, 1e-6, 1e-6) <= 1, "log_softmax vs double");
    /* uniform logits: cross-entropy = log V */
    float flat[V] = {0};
    CHECK_NEAR(kv_cross_entropy(flat, V, 3), log((double)V), 1e-12, "uniform cross entropy");
    free(g), free(u), free(x);
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2,fma"))) static void expf8_avx2_store(float out[8], const float *x) {
    _mm256_storeu_ps(out, kv_expf8_avx2(_mm256_loadu_ps(x)));
}
__attribute__((target("avx512f"))) static void expf16_avx512_store(float out[16], const float *x) {
    _mm512_storeu_ps(out, kv_expf16_avx512(_mm512_loadu_ps(x)));
}

/* the elements of x [n] (n a multiple of width <= 16) where a vector exp, `store` of width
 * lanes, differs from kv_expf in any bit */
static int vector_exp_differs(void (*store)(float *, const float *), int width, const float *x,
                              int n) {
    int differ = 0;
    for (int i = 0; i < n; i += width) {
        float v[16];
        store(v, x + i);
        for (int k = 0; k < width; k++) {
            const float c = kv_expf(x[i + k]);
            differ += memcmp(&c, &v[k], sizeof c) != 0;
        }
    }
    return differ;
}
#endif

/* |got - want| in units in the last place of want as an F32 (want normal) */
static double ulps(float got, double want) {
    int e;
    frexp(want, &e);
    return fabs((double)got - want) / ldexp(1.0, e - 24);
}

/* a float from a random 32-bit pattern (NaNs, infinities, subnormals included) */
static float any_float(void) {
    uint32_t bits = (uint32_t)(frand() * 65536.0f) << 16 ^ (uint32_t)((frand() + 1.0f) * 32768.0f);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* kv_expf against exp in double (<= 2 ulp wherever the result is normal, 0 below KV_EXP_LO,
 * inf above KV_EXP_HI, NaN through), and its AVX2 and AVX-512 twins bit for bit */
static void test_expf(void) {
    double worst_ulps = 0.0;
    int bad_edges = 0;
    for (float x = -110.0f; x < 90.0f; x += 0.00390625f * (1.0f + fabsf(x))) {
        const float got = kv_expf(x);
        const double want = exp((double)x);
        if (want >= 0x1p-126 && want <= 0x1.fffffep127) {
            const double u = ulps(got, want);
            if (u > worst_ulps) worst_ulps = u;
        } else if (x < KV_EXP_LO) {
            bad_edges += got != 0.0f;
        } else if (x > KV_EXP_HI) {
            bad_edges += !isinf(got);
        } else { /* subnormal: within one subnormal step */
            bad_edges += fabs((double)got - want) > 0x1p-149;
        }
    }
    CHECK(worst_ulps <= 2.0, "kv_expf: %.3f ulp", worst_ulps);
    CHECK(bad_edges == 0, "kv_expf: %d results off past the normal range", bad_edges);
    CHECK(kv_expf(0.0f) == 1.0f && kv_expf(-0.0f) == 1.0f, "exp(0) != 1");
    CHECK(kv_expf(-INFINITY) == 0.0f && isinf(kv_expf(INFINITY)), "exp(+-inf)");
    CHECK(isnan(kv_expf(NAN)), "exp(NaN) not NaN");
    enum { N = 4096 };
    static float x[N];
    for (int i = 0; i < N; i++) x[i] = i % 2 ? any_float() : 120.0f * frand() - 10.0f;
    const float edges[] = {KV_EXP_LO,
                           KV_EXP_HI,
                           nextafterf(KV_EXP_LO, -200.0f),
                           nextafterf(KV_EXP_HI, 200.0f),
                           -87.5f,
                           -103.9f,
                           88.72f,
                           0.0f,
                           -0.0f,
                           INFINITY,
                           -INFINITY,
                           NAN,
                           1e-30f,
                           -1e-30f,
                           0x1p-149f};
    memcpy(x, edges, sizeof edges);
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    if (kv_gemv_isa_supported(KV_GEMV_AVX2)) {
        const int differ = vector_exp_differs(expf8_avx2_store, 8, x, N);
        CHECK(differ == 0, "AVX2 exp differs from kv_expf on %d of %d", differ, N);
    }
    if (kv_gemv_isa_supported(KV_GEMV_AVX512)) {
        const int differ = vector_exp_differs(expf16_avx512_store, 16, x, N);
        CHECK(differ == 0, "AVX-512 exp differs from kv_expf on %d of %d", differ, N);
    }
#endif
}

/* a and b [n] bit for bit, where both are NaN whatever their sign and payload */
static int same_bits(const float *a, const float *b, int n) {
    for (int i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof *a) && !(isnan(a[i]) && isnan(b[i]))) return 0;
    return 1;
}

/* SwiGLU: every variant this CPU runs gives the portable loop's bits (odd lengths, gates past
 * exp's range, infinities, NaN: a NaN wherever the loop gives one) */
static void test_swiglu_variants(void) {
    enum { N = 1037 };
    float *g = rand_buf(N, 12.0f), *u = rand_buf(N, 3.0f), want[N], got[N];
    const float odd_gates[] = {-120.0f, 120.0f, -88.9f, 88.9f, INFINITY, -INFINITY, NAN, 0.0f};
    memcpy(g, odd_gates, sizeof odd_gates);
    const int lengths[] = {1, 7, 8, 9, 31, N};
    for (int isa = KV_GEMV_AVX2; isa < KV_GEMV_N_ISA; isa++) {
        if (!kv_gemv_isa_supported((kv_gemv_isa)isa)) continue;
        for (size_t k = 0; k < sizeof lengths / sizeof *lengths; k++) {
            const int n = lengths[k];
            kv_gemv_force(KV_GEMV_C);
            kv_swiglu(want, g + N - n, u, (size_t)n);
            kv_gemv_force((kv_gemv_isa)isa);
            kv_swiglu(got, g + N - n, u, (size_t)n);
            CHECK(same_bits(want, got, n), "%s swiglu n %d != C",
                  kv_gemv_isa_name((kv_gemv_isa)isa), n);
            kv_swiglu(got, g, u, (size_t)n); /* the odd gates at the start */
            kv_gemv_force(KV_GEMV_C);
            kv_swiglu(want, g, u, (size_t)n);
            CHECK(same_bits(want, got, n), "%s swiglu n %d (odd gates)",
                  kv_gemv_isa_name((kv_gemv_isa)isa), n);
        }
    }
    kv_gemv_force(KV_GEMV_N_ISA);
    free(g), free(u);
}

static void test_losses(void) {
    enum { T = 3, V = 40 };
    float *s = rand_buf(T * V, 4.0f), *te = rand_buf(T * V, 4.0f);
    const double temp = 2.0;
    double want = 0;
    for (int t = 0; t < T; t++) {
        double ms = -INFINITY, mt = -INFINITY, zs = 0, zt = 0;
        for (int i = 0; i < V; i++)
            ms = fmax(ms, s[t * V + i] / temp), mt = fmax(mt, te[t * V + i] / temp);
        for (int i = 0; i < V; i++)
            zs += exp(s[t * V + i] / temp - ms), zt += exp(te[t * V + i] / temp - mt);
        for (int i = 0; i < V; i++) {
            double p = exp(te[t * V + i] / temp - mt) / zt, q = exp(s[t * V + i] / temp - ms) / zs;
            want += temp * temp * p * log(p / q);
        }
    }
    want /= T;
    double kl = kv_distill_kl(NULL, s, te, NULL, T, V, (float)temp, 1.0f);
    CHECK_NEAR(kl, want, 1e-10 * fabs(want), "distill KL");
    CHECK(kl > 0, "KL of different distributions is %g", kl);
    CHECK_NEAR(kv_distill_kl(NULL, s, s, NULL, T, V, 2.0f, 1.0f), 0.0, 1e-12, "KL of equal logits");
    /* a constant shift of the student changes nothing */
    float shifted[T * V];
    for (int i = 0; i < T * V; i++) shifted[i] = te[i] + 3.0f;
    CHECK_NEAR(kv_distill_kl(NULL, shifted, te, NULL, T, V, 2.0f, 1.0f), 0.0, 1e-10,
               "KL shift-invariant");

    double mse = 0;
    for (int i = 0; i < T * V; i++) mse += ((double)s[i] - te[i]) * ((double)s[i] - te[i]);
    mse /= T * V;
    CHECK_NEAR(kv_mse(NULL, s, te, T * V, 1.0f), mse, 1e-12 * mse, "mse");
    free(s), free(te);
}

int main(void) {
    kv_kernels_set_threads(2);
    CHECK(kv_kernels_threads() == 2, "threads setter");
    test_matmul(1, 37, 23, 0);
    test_matmul(1, 37, 23, 1);
    test_matmul(5, 37, 23, 0);
    test_matmul(7, 64, 172, 1);
    test_matmul(130, 96, 80, 1);
    { /* no outputs (n_out 0): dW has no rows, dx gets nothing added */
        float x[12] = {1}, dx[12] = {2}, dx0[12] = {2}, dout[1] = {0}, W[1] = {0}, dW[1] = {7};
        kv_matmul_backward(dx, dW, NULL, dout, x, W, 3, 4, 0);
        CHECK(!memcmp(dx, dx0, sizeof dx) && dW[0] == 7, "n_out 0: dx or dW changed");
    }
    test_matmul_threads(301, 64, 512);
    test_matmul_threads(513, 72, 200);
    test_matmul_threads(97, 288, 130);
    test_row_cuts();
    test_rmsnorm();
    test_embedding();
    test_rope_freq();
    test_rope_apply();
    test_activations();
    test_expf();
    test_swiglu_variants();
    test_losses();
    return check_done("test_kernels");
}
