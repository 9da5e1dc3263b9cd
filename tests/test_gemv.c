/* kernels/cpu/gemv.h: every variant the CPU runs against an exact (double) sum and against the C
 * reference, on odd sizes, F32, BF16 and F16 weights, with and without bias and accumulate; results
 * independent of the thread count; the CPU backend's T == 1 matmul on this path. */
#include "tests/check.h"

#include <cblas.h>

#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "base/dtype.h"
#include "kernels/backend.h"
#include "kernels/cpu/gemv.h"
#include "kernels/kernels.h"

/* the documented bound (gemv.h): |y - exact| <= REL * (sum |w x| + |bias| + |y0|) */
#define REL 1e-6

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float urand(void) { /* [-1, 1) */
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

static double weight(const void *W, kv_dtype t, size_t i) {
    if (t == KV_BF16) return kv_bf16_to_f32(((const uint16_t *)W)[i]);
    if (t == KV_F16) return kv_f16_to_f32(((const uint16_t *)W)[i]);
    return ((const float *)W)[i];
}

/* W [n_out, n_in] as t, random; returns malloc'd storage */
static void *make_w(kv_dtype t, int n_out, int n_in) {
    size_t n = (size_t)n_out * n_in;
    if (t == KV_BF16 || t == KV_F16) {
        uint16_t *w = malloc(sizeof *w * n);
        for (size_t i = 0; w && i < n; i++)
            w[i] = t == KV_BF16 ? kv_f32_to_bf16(urand()) : kv_f32_to_f16(urand());
        return w;
    }
    float *w = malloc(sizeof *w * n);
    for (size_t i = 0; w && i < n; i++) w[i] = urand();
    return w;
}

static double max_rel_seen;

static void check_sizes(kv_dtype t, int n_in, int n_out) {
    void *W = make_w(t, n_out, n_in);
    float *x = malloc(sizeof(float) * n_in), *y0 = malloc(sizeof(float) * n_out),
          *bias = malloc(sizeof(float) * n_out), *y = malloc(sizeof(float) * n_out),
          *yc = malloc(sizeof(float) * n_out);
    if (!W || !x || !y0 || !bias || !y || !yc) {
        CHECK(0, "out of memory");
        goto out;
    }
    for (int i = 0; i < n_in; i++) x[i] = urand();
    for (int o = 0; o < n_out; o++) y0[o] = urand(), bias[o] = urand();
    for (int with_bias = 0; with_bias < 2; with_bias++)
        for (int acc = 0; acc < 2; acc++) {
            const float *b = with_bias ? bias : NULL;
            memcpy(yc, y0, sizeof(float) * n_out);
            kv_gemv_rows(KV_GEMV_C, yc, x, W, t, b, n_in, 0, n_out, acc);
            for (int isa = 0; isa < KV_GEMV_N_ISA; isa++) {
                if (!kv_gemv_isa_supported((kv_gemv_isa)isa)) continue;
                memcpy(y, y0, sizeof(float) * n_out);
                kv_gemv_rows((kv_gemv_isa)isa, y, x, W, t, b, n_in, 0, n_out, acc);
                double worst = 0, worst_c = 0;
                for (int o = 0; o < n_out; o++) {
                    double exact = 0, scale = 0;
                    for (int i = 0; i < n_in; i++) {
                        double p = weight(W, t, (size_t)o * n_in + i) * x[i];
                        exact += p;
                        scale += fabs(p);
                    }
                    if (b) exact += b[o], scale += fabs(b[o]);
                    if (acc) exact += y0[o], scale += fabs(y0[o]);
                    double e = fabs(y[o] - exact) / scale, ec = fabs((double)y[o] - yc[o]) / scale;
                    if (e > worst) worst = e;
                    if (ec > worst_c) worst_c = ec;
                }
                if (worst > max_rel_seen) max_rel_seen = worst;
                CHECK(worst <= REL, "%s %s n_in %d n_out %d bias %d acc %d: rel error %.3g",
                      kv_gemv_isa_name((kv_gemv_isa)isa), kv_dtype_name(t), n_in, n_out, with_bias,
                      acc, worst);
                CHECK(worst_c <= 2 * REL, "%s vs c, %s n_in %d n_out %d: rel diff %.3g",
                      kv_gemv_isa_name((kv_gemv_isa)isa), kv_dtype_name(t), n_in, n_out, worst_c);
            }
        }
out:
    free(W), free(x), free(y0), free(bias), free(y), free(yc);
}

/* the same rows whatever the thread count and split: 1 vs 2 threads vs one call, bit for bit */
static void check_threads(kv_dtype t) {
    const int n_in = 1001, n_out = 1037;
    void *W = make_w(t, n_out, n_in);
    float *x = malloc(sizeof(float) * n_in), *bias = malloc(sizeof(float) * n_out),
          *y1 = malloc(sizeof(float) * n_out), *y2 = malloc(sizeof(float) * n_out),
          *yr = malloc(sizeof(float) * n_out);
    if (!W || !x || !bias || !y1 || !y2 || !yr) {
        CHECK(0, "out of memory");
        goto out;
    }
    for (int i = 0; i < n_in; i++) x[i] = urand();
    for (int o = 0; o < n_out; o++) bias[o] = urand();
    for (int isa = 0; isa < KV_GEMV_N_ISA; isa++) {
        if (!kv_gemv_isa_supported((kv_gemv_isa)isa)) continue;
        CHECK((int)kv_gemv_force((kv_gemv_isa)isa) == isa, "force %d", isa);
        kv_kernels_set_threads(1);
        CHECK(kv_gemv(y1, x, W, t, bias, n_in, n_out, 0) == 0, "gemv 1 thread");
        kv_kernels_set_threads(2);
        CHECK(kv_parallel_workers((n_out + 15) / 16, 2.0 * n_in * n_out) == 2, "2 workers");
        CHECK(kv_gemv(y2, x, W, t, bias, n_in, n_out, 0) == 0, "gemv 2 threads");
        kv_gemv_rows((kv_gemv_isa)isa, yr, x, W, t, bias, n_in, 0, n_out, 0);
        CHECK(!memcmp(y1, y2, sizeof(float) * n_out), "%s %s: 1 vs 2 threads differ",
              kv_gemv_isa_name((kv_gemv_isa)isa), kv_dtype_name(t));
        CHECK(!memcmp(y1, yr, sizeof(float) * n_out), "%s %s: threaded vs one call differ",
              kv_gemv_isa_name((kv_gemv_isa)isa), kv_dtype_name(t));
        /* accumulate on top of the first result, threaded vs one call */
        memcpy(y2, y1, sizeof(float) * n_out);
        memcpy(yr, y1, sizeof(float) * n_out);
        CHECK(kv_gemv(y2, x, W, t, bias, n_in, n_out, 1) == 0, "gemv acc");
        kv_gemv_rows((kv_gemv_isa)isa, yr, x, W, t, bias, n_in, 0, n_out, 1);
        CHECK(!memcmp(y2, yr, sizeof(float) * n_out), "%s %s: accumulate threaded vs one call",
              kv_gemv_isa_name((kv_gemv_isa)isa), kv_dtype_name(t));
    }
    kv_gemv_force(KV_GEMV_N_ISA);
out:
    free(W), free(x), free(bias), free(y1), free(y2), free(yr);
}

/* long rows (4096 weights or more) run four at a time (BF16 on AVX-512, then a pair and one
 * alone) or two at a time (F32 by the AVX2 loop where the CPU has AVX-512): each row's bits are
 * those of the row computed alone (a call of one row), with bias and accumulate, 11 rows (two
 * fours, a pair, one alone), tails of 32 and of fewer */
static void check_long_rows(kv_dtype t) {
    static const int n_ins[] = {4096, 4133, 4165, 5632};
    const int n_out = 11;
    for (size_t a = 0; a < sizeof n_ins / sizeof *n_ins; a++) {
        const int n_in = n_ins[a];
        void *W = make_w(t, n_out, n_in);
        float *x = malloc(sizeof(float) * n_in), *y0 = malloc(sizeof(float) * n_out),
              *bias = malloc(sizeof(float) * n_out), *y = malloc(sizeof(float) * n_out),
              *ys = malloc(sizeof(float) * n_out);
        if (!W || !x || !y0 || !bias || !y || !ys) {
            CHECK(0, "out of memory");
            free(W), free(x), free(y0), free(bias), free(y), free(ys);
            return;
        }
        for (int i = 0; i < n_in; i++) x[i] = urand();
        for (int o = 0; o < n_out; o++) y0[o] = urand(), bias[o] = urand();
        for (int isa = 0; isa < KV_GEMV_N_ISA; isa++) {
            if (!kv_gemv_isa_supported((kv_gemv_isa)isa)) continue;
            for (int acc = 0; acc < 2; acc++) {
                memcpy(y, y0, sizeof(float) * n_out);
                memcpy(ys, y0, sizeof(float) * n_out);
                kv_gemv_rows((kv_gemv_isa)isa, y, x, W, t, bias, n_in, 0, n_out, acc);
                for (int o = 0; o < n_out; o++)
                    kv_gemv_rows((kv_gemv_isa)isa, ys, x, W, t, bias, n_in, o, o + 1, acc);
                CHECK(!memcmp(y, ys, sizeof(float) * n_out),
                      "%s %s n_in %d acc %d: rows together != rows alone",
                      kv_gemv_isa_name((kv_gemv_isa)isa), kv_dtype_name(t), n_in, acc);
                double worst = 0;
                for (int o = 0; o < n_out; o++) {
                    double exact = bias[o] + (acc ? y0[o] : 0.0), scale = fabs(exact);
                    for (int i = 0; i < n_in; i++) {
                        const double p = weight(W, t, (size_t)o * n_in + i) * x[i];
                        exact += p;
                        scale += fabs(p);
                    }
                    const double e = fabs(y[o] - exact) / scale;
                    if (e > worst) worst = e;
                }
                CHECK(worst <= 4 * REL, "%s %s n_in %d: rel error %.3g",
                      kv_gemv_isa_name((kv_gemv_isa)isa), kv_dtype_name(t), n_in, worst);
            }
        }
        free(W), free(x), free(y0), free(bias), free(y), free(ys);
    }
}

/* the backend's T == 1 matmul is the active variant's gemv; T == 2 rows agree within the bound */
static void check_backend(kv_dtype t) {
    const int n_in = 100, n_out = 257;
    kv_backend b;
    kv_error err = {0};
    CHECK(kv_backend_cpu_init(&b, 2, &err) == 0, "cpu init: %s", err.msg);
    void *W = make_w(t, n_out, n_in);
    float x[2 * 100], y[257], yr[257], y2[2 * 257];
    for (int i = 0; i < 2 * n_in; i++) x[i] = urand();
    CHECK(W != NULL, "out of memory");
    if (!W) return;
    CHECK(b.ops->matmul(&b, y, x, W, t, NULL, 1, n_in, n_out, 0, &err) == 0, "%s", err.msg);
    kv_gemv_rows(kv_gemv_isa_for(t), yr, x, W, t, NULL, n_in, 0, n_out, 0);
    CHECK(!memcmp(y, yr, sizeof y), "%s: backend T=1 is not the gemv path", kv_dtype_name(t));
    CHECK(b.ops->matmul(&b, y2, x, W, t, NULL, 2, n_in, n_out, 0, &err) == 0, "%s", err.msg);
    double worst = 0;
    for (int o = 0; o < n_out; o++) {
        double scale = 0;
        for (int i = 0; i < n_in; i++) scale += fabs(weight(W, t, (size_t)o * n_in + i) * x[i]);
        double e = fabs((double)y2[o] - y[o]) / scale;
        if (e > worst) worst = e;
    }
    CHECK(worst <= 2 * REL, "%s: T=1 vs T=2 row 0 rel diff %.3g", kv_dtype_name(t), worst);
    free(W);
    kv_backend_free(&b);
}

/* The backend's T > 1 product of BF16/F16 weights (backend_cpu.c matmul_half): blocks of rows of
 * W (1 MiB of F32, at least 128 rows) widened and each one sgemm over all T tokens, parts of the
 * (block, token) work cut per worker. Under OpenBLAS's Haswell kernels every output has the bits
 * of that per-block sgemm at 1, 2 and 3 threads, with bias and accumulating; shapes whose blocks
 * and cuts fall unevenly. Elsewhere the bound of check_backend's T = 2 rows. */
static void check_backend_prefill(kv_dtype t, int T, int n_in, int n_out) {
    const int haswell = strcmp(openblas_get_corename(), "Haswell") == 0;
    int rows = (1 << 18) / n_in;
    if (rows < 128) rows = 128;
    if (rows > n_out) rows = n_out;
    const size_t nw = (size_t)n_out * n_in, ny = (size_t)T * n_out;
    void *W = make_w(t, n_out, n_in);
    float *wide = malloc(sizeof(float) * nw), *x = malloc(sizeof(float) * (size_t)T * n_in);
    float *bias = malloc(sizeof(float) * n_out), *y0 = malloc(sizeof(float) * ny);
    float *ref = malloc(sizeof(float) * ny), *prod = malloc(sizeof(float) * ny);
    float *y = malloc(sizeof(float) * ny);
    CHECK(W && wide && x && bias && y0 && ref && prod && y, "out of memory");
    if (!(W && wide && x && bias && y0 && ref && prod && y)) return;
    kv_dtype_cast(wide, KV_F32, W, t, nw);
    for (size_t i = 0; i < (size_t)T * n_in; i++) x[i] = urand();
    for (int o = 0; o < n_out; o++) bias[o] = urand();
    for (size_t i = 0; i < ny; i++) y0[i] = urand();
    for (int acc = 0; acc < 2; acc++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            /* the reference: per block, out = x W_b^T (+ bias) by one sgemm, then y0 + it */
            for (int o0 = 0; o0 < n_out; o0 += rows) {
                const int nr = n_out - o0 < rows ? n_out - o0 : rows;
                for (int r = 0; with_bias && r < T; r++)
                    memcpy(prod + (size_t)r * n_out + o0, bias + o0, sizeof(float) * nr);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, nr, n_in, 1.0f, x, n_in,
                            wide + (size_t)o0 * n_in, n_in, with_bias ? 1.0f : 0.0f, prod + o0,
                            n_out);
            }
            for (size_t i = 0; i < ny; i++) ref[i] = acc ? y0[i] + prod[i] : prod[i];
            for (int threads = 1; threads <= 3; threads++) {
                kv_backend b;
                kv_error err = {0};
                CHECK(kv_backend_cpu_init(&b, threads, &err) == 0, "cpu init: %s", err.msg);
                memcpy(y, y0, sizeof(float) * ny);
                CHECK(b.ops->matmul(&b, y, x, W, t, with_bias ? bias : NULL, T, n_in, n_out, acc,
                                    &err) == 0,
                      "%s", err.msg);
                double worst = 0;
                for (size_t i = 0; i < ny; i++) {
                    const double e = fabs((double)y[i] - ref[i]) / (1.0 + fabs(ref[i]));
                    if (e > worst) worst = e;
                }
                if (haswell)
                    CHECK(!memcmp(y, ref, sizeof(float) * ny),
                          "%s T=%d [%d x %d] acc %d bias %d, %d threads: not the per-block sgemm "
                          "bits (max rel %.3g)",
                          kv_dtype_name(t), T, n_out, n_in, acc, with_bias, threads, worst);
                else
                    CHECK(worst <= 1e-4, "%s T=%d [%d x %d]: rel diff %.3g", kv_dtype_name(t), T,
                          n_out, n_in, worst);
                kv_backend_free(&b);
            }
        }
    kv_kernels_set_threads(1);
    free(W), free(wide), free(x), free(bias), free(y0), free(ref), free(prod), free(y);
}

int main(void) {
    static const int n_ins[] = {1, 7, 15, 16, 17, 33, 100, 1001};
    static const int n_outs[] = {1, 3, 64, 257};
    kv_gemv_isa p;
    CHECK(kv_gemv_isa_parse(&p, "avx2") == 0 && p == KV_GEMV_AVX2, "parse avx2");
    CHECK(kv_gemv_isa_parse(&p, "sse") == -1, "parse sse");
    CHECK(kv_gemv_isa_supported(KV_GEMV_C), "c always runs");
    CHECK(kv_gemv_force(KV_GEMV_C) == KV_GEMV_C, "force c");
    CHECK(kv_gemv(NULL, NULL, NULL, KV_I32, NULL, 1, 1, 0) == -1, "I32 refused");
    kv_gemv_force(KV_GEMV_N_ISA);
    printf("gemv: active variant %s; this CPU runs:", kv_gemv_isa_name(kv_gemv_isa_active()));
    for (int i = 0; i < KV_GEMV_N_ISA; i++)
        if (kv_gemv_isa_supported((kv_gemv_isa)i)) printf(" %s", kv_gemv_isa_name((kv_gemv_isa)i));
    printf("\n");
    /* BF16 weights default to avx512 where it runs; F32 and any explicit choice are left alone */
    if (!getenv("KV_CPU_ISA")) {
        const kv_gemv_isa active = kv_gemv_isa_active();
        const kv_gemv_isa bf16_want =
            active == KV_GEMV_AVX2 && kv_gemv_isa_supported(KV_GEMV_AVX512) ? KV_GEMV_AVX512
                                                                            : active;
        CHECK(kv_gemv_isa_for(KV_F32) == active, "F32 takes the active variant");
        CHECK(kv_gemv_isa_for(KV_BF16) == bf16_want, "BF16 default %s, want %s",
              kv_gemv_isa_name(kv_gemv_isa_for(KV_BF16)), kv_gemv_isa_name(bf16_want));
        kv_gemv_force(KV_GEMV_AVX2);
        CHECK(kv_gemv_isa_for(KV_BF16) == KV_GEMV_AVX2, "a forced variant holds for BF16");
        kv_gemv_force(KV_GEMV_N_ISA);
    }
    static const kv_dtype types[] = {KV_F32, KV_BF16, KV_F16};
    for (int d = 0; d < 3; d++) {
        const kv_dtype t = types[d];
        for (size_t a = 0; a < sizeof n_ins / sizeof *n_ins; a++)
            for (size_t c = 0; c < sizeof n_outs / sizeof *n_outs; c++)
                check_sizes(t, n_ins[a], n_outs[c]);
        check_threads(t);
        check_long_rows(t);
        check_backend(t);
        if (t != KV_F32) { /* blocks of 873 + 127, 128 + 128 + 44, 4096 + 904; 13 tokens */
            check_backend_prefill(t, 37, 300, 1000);
            check_backend_prefill(t, 130, 2100, 300);
            check_backend_prefill(t, 25, 64, 5000);
            check_backend_prefill(t, 13, 96, 700);
        }
    }
    printf("gemv: max relative error against the exact sum %.3g (bound %g)\n", max_rel_seen, REL);
    return check_done("test_gemv");
}
