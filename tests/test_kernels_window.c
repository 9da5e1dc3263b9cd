/* Sliding-window attention (kernels.h: window W, ring R): against a naive double-precision
 * reference that runs a full softmax over exactly the visible keys (odd sizes, GQA, both masks,
 * F32 and BF16 caches, windows 1, 2, 7, across a 64-key block and >= S); a window no row reaches
 * past equal to no window bit for bit; a ring of R rows equal to the full cache bit for bit;
 * prefill == decode and thread counts for windowed rows; every ISA variant equal to C; bad
 * window / ring arguments refused. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/dtype.h"
#include "base/error.h"
#include "kernels/cpu/gemv.h"
#include "kernels/kernels.h"
#include "tests/check.h"
#include "tests/rand.h"

/* the definition, in double, out [T, nh*hd]: the query at p = pos0 + t sees the keys s < S with
 * s <= p (causal) or s < p (strict) and, with W > 0, s > p - W; softmax over exactly those */
static void window_ref(double *out, const float *q, const float *k, const float *v, int T, int pos0,
                       int S, int nh, int nkv, int hd, kv_attn_mask mask, int W) {
    double *w = malloc(sizeof(double) * (S > 0 ? S : 1));
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++) {
            const int g = h / (nh / nkv), p = pos0 + t;
            int lo = 0, hi = mask == KV_MASK_CAUSAL ? p + 1 : p; /* keys [lo, hi) */
            if (W > 0 && p - W + 1 > lo) lo = p - W + 1;
            if (hi > S) hi = S;
            double m = -INFINITY, z = 0;
            for (int s = lo; s < hi; s++) {
                double d = 0;
                for (int i = 0; i < hd; i++)
                    d += (double)q[(t * nh + h) * hd + i] * k[(s * nkv + g) * hd + i];
                w[s] = d / sqrt((double)hd);
                m = fmax(m, w[s]);
            }
            for (int s = lo; s < hi; s++) z += (w[s] = exp(w[s] - m));
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int s = lo; s < hi; s++) o += w[s] / z * v[(s * nkv + g) * hd + i];
                out[(t * nh + h) * hd + i] = o; /* nothing visible: 0 */
            }
        }
    free(w);
}

/* k, v rounded to BF16 in place (the widened values), the bits into k16, v16 */
static void to_bf16(float *k, float *v, uint16_t *k16, uint16_t *v16, size_t n) {
    for (size_t i = 0; i < n; i++) {
        k16[i] = kv_f32_to_bf16(k[i]), v16[i] = kv_f32_to_bf16(v[i]);
        k[i] = kv_bf16_to_f32(k16[i]), v[i] = kv_bf16_to_f32(v16[i]);
    }
}

/* keys pos0 - W + 1 .. S-1 of a full cache [S, kvd] copied to their rows s % R of a ring [R, kvd]
 * (rows never written stay garbage: the kernel must not read them) */
static void *ring_of(const void *full, size_t elem, int S, int R, int first, size_t kvd) {
    unsigned char *r = malloc(elem * (size_t)R * kvd);
    memset(r, 0x7f, elem * (size_t)R * kvd); /* large finite garbage (F32 and BF16) */
    for (int s = first < 0 ? 0 : first; s < S; s++)
        memcpy(r + elem * (size_t)(s % R) * kvd, (const unsigned char *)full + elem * s * kvd,
               elem * kvd);
    return r;
}

/* one shape: F32 and BF16 caches against the reference; window >= every p == no window bit
 * for bit; a ring of W + T - 1 (and a roomier one) == the full cache bit for bit */
static void check_window(int T, int pos0, int nh, int nkv, int hd, int W, float qscale) {
    const int S = pos0 + T;
    const size_t kvd = (size_t)nkv * hd, n_kv = (size_t)S * kvd, n_out = (size_t)T * nh * hd;
    float *q = rand_buf(n_out, qscale), *k = rand_buf(n_kv, 1.5f), *v = rand_buf(n_kv, 1.0f);
    uint16_t *k16 = malloc(sizeof *k16 * (n_kv ? n_kv : 1));
    uint16_t *v16 = malloc(sizeof *v16 * (n_kv ? n_kv : 1));
    to_bf16(k, v, k16, v16, n_kv);
    float *got = malloc(sizeof(float) * n_out), *full = malloc(sizeof(float) * n_out);
    float *ring = malloc(sizeof(float) * n_out);
    double *ref = malloc(sizeof(double) * n_out);
    for (int mask = 0; mask < 2; mask++) {
        window_ref(ref, q, k, v, T, pos0, S, nh, nkv, hd, mask, W);
        for (int bf16 = 0; bf16 < 2; bf16++) {
            const void *kc = bf16 ? (const void *)k16 : k, *vc = bf16 ? (const void *)v16 : v;
#define RUN(o, K, V, w, r)                                                                         \
    (bf16 ? kv_attention_bf16(o, q, K, V, T, pos0, S, nh, nkv, hd, mask, w, r)                     \
          : kv_attention(o, q, K, V, T, pos0, S, nh, nkv, hd, mask, w, r))
            memset(got, 0xff, sizeof(float) * n_out);
            CHECK(RUN(got, kc, vc, W, 0) == 0, "window rc");
            const double e = worst(got, ref, n_out, 2e-6, 2e-5);
            CHECK(e <= 1, "window %d T=%d pos0=%d heads %d/%d hd=%d mask %d %s cache: %.3g x tol",
                  W, T, pos0, nh, nkv, hd, mask, bf16 ? "BF16" : "F32", e);
            if (W >= S) { /* no row reaches past the window: the windowless bits */
                CHECK(RUN(full, kc, vc, 0, 0) == 0, "rc");
                CHECK(memcmp(got, full, sizeof(float) * n_out) == 0,
                      "window %d >= S %d differs from no window (mask %d, %s)", W, S, mask,
                      bf16 ? "BF16" : "F32");
            }
            const size_t es = bf16 ? 2 : 4;
            for (int extra = 0; extra < 2; extra++) {
                const int R = W + T - 1 + extra * 5;
                void *kr = ring_of(kc, es, S, R, pos0 - W + 1, kvd);
                void *vr = ring_of(vc, es, S, R, pos0 - W + 1, kvd);
                memset(ring, 0xff, sizeof(float) * n_out);
                CHECK(RUN(ring, kr, vr, W, R) == 0, "ring rc");
                CHECK(memcmp(got, ring, sizeof(float) * n_out) == 0,
                      "ring of %d rows != full cache: window %d T=%d pos0=%d mask %d %s", R, W, T,
                      pos0, mask, bf16 ? "BF16" : "F32");
                free(kr), free(vr);
            }
#undef RUN
        }
    }
    free(q), free(k), free(v), free(k16), free(v16), free(got), free(full), free(ring), free(ref);
}

static void test_reference(void) {
    const int windows[] = {1, 2, 7, 70, 1000};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        const int W = windows[w];
        check_window(1, 0, 4, 2, 8, W, 1.0f); /* first decode step */
        check_window(1, 140, 4, 2, 8, W, 1.0f); /* decode far past the window */
        check_window(13, 0, 6, 3, 12, W, 1.0f); /* prefill from 0, odd hd */
        check_window(37, 100, 6, 3, 9, W, 2.0f); /* after a prefix, across a key block */
        check_window(70, 5, 2, 1, 32, W, 1.0f); /* spans query blocks, MQA */
        check_window(5, 2, 32, 1, 8, W, 1.0f); /* group wider than a work item */
        check_window(21, 60, 12, 4, 8, W, 1.0f); /* group 3, rows around the 64-key edge */
        check_window(3, 9, 2, 2, 4, W, 300.0f); /* huge logits: stable softmax */
    }
}

/* windowed rows: prefill == decode steps == a split prefill, bit for bit, at 1..3 threads */
static void test_prefill_decode(void) {
    const int T = 150, nh = 8, nkv = 2, hd = 16, W = 23, Wd = nh * hd;
    const size_t kvd = (size_t)nkv * hd;
    float *q = rand_buf((size_t)T * Wd, 2.0f), *k = rand_buf(T * kvd, 1.5f);
    float *v = rand_buf(T * kvd, 1.0f);
    float *pre = malloc(sizeof(float) * T * Wd), *dec = malloc(sizeof(float) * T * Wd);
    for (int mask = 0; mask < 2; mask++)
        for (int threads = 1; threads <= 3; threads++) {
            kv_kernels_set_threads(threads);
            kv_attention(pre, q, k, v, T, 0, T, nh, nkv, hd, mask, W, 0);
            for (int t = 0; t < T; t++)
                kv_attention(dec + (size_t)t * Wd, q + (size_t)t * Wd, k, v, 1, t, t + 1, nh, nkv,
                             hd, mask, W, 0);
            CHECK(memcmp(pre, dec, sizeof(float) * T * Wd) == 0,
                  "window prefill != decode (mask %d, %d threads)", mask, threads);
            kv_attention(dec, q, k, v, 77, 0, 77, nh, nkv, hd, mask, W, 0);
            kv_attention(dec + 77 * Wd, q + 77 * Wd, k, v, T - 77, 77, T, nh, nkv, hd, mask, W, 0);
            CHECK(memcmp(pre, dec, sizeof(float) * T * Wd) == 0,
                  "window prefill != split prefill (mask %d, %d threads)", mask, threads);
        }
    kv_kernels_set_threads(2);
    free(q), free(k), free(v), free(pre), free(dec);
}

/* AVX2 (and whatever else this CPU runs) against C, windowed and ringed, both caches */
static void test_isa_variants(void) {
    const int shapes[][6] = {/* T, pos0, nh, nkv, hd, W */
                             {1, 200, 8, 2, 64, 7},   {19, 64, 6, 3, 40, 70},
                             {65, 3, 10, 2, 24, 2},   {1, 129, 32, 4, 64, 100},
                             {130, 0, 4, 1, 31, 129}, {37, 90, 5, 5, 13, 1}};
    for (int isa = KV_GEMV_AVX2; isa < KV_GEMV_N_ISA; isa++) {
        if (!kv_gemv_isa_supported((kv_gemv_isa)isa)) {
            printf("skip: %s attention (CPU lacks it)\n", kv_gemv_isa_name((kv_gemv_isa)isa));
            continue;
        }
        for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
            const int T = shapes[c][0], pos0 = shapes[c][1], nh = shapes[c][2], nkv = shapes[c][3],
                      hd = shapes[c][4], W = shapes[c][5], S = pos0 + T, R = W + T - 1;
            const size_t kvd = (size_t)nkv * hd, n_kv = (size_t)S * kvd,
                         n_out = (size_t)T * nh * hd;
            float *q = rand_buf(n_out, 2.0f), *k = rand_buf(n_kv, 2.0f), *v = rand_buf(n_kv, 1.0f);
            uint16_t *k16 = malloc(sizeof *k16 * n_kv), *v16 = malloc(sizeof *v16 * n_kv);
            to_bf16(k, v, k16, v16, n_kv);
            float *want = malloc(sizeof(float) * n_out), *got = malloc(sizeof(float) * n_out);
            for (int bf16 = 0; bf16 < 2; bf16++) {
                const void *kc = bf16 ? (const void *)k16 : k, *vc = bf16 ? (const void *)v16 : v;
                void *kr = ring_of(kc, bf16 ? 2 : 4, S, R, pos0 - W + 1, kvd);
                void *vr = ring_of(vc, bf16 ? 2 : 4, S, R, pos0 - W + 1, kvd);
                for (int mask = 0; mask < 2; mask++)
                    for (int ring = 0; ring < 2; ring++) {
                        const void *K = ring ? kr : kc, *V = ring ? vr : vc;
                        const int r = ring ? R : 0;
#define RUN(o)                                                                                     \
    (bf16 ? kv_attention_bf16(o, q, K, V, T, pos0, S, nh, nkv, hd, mask, W, r)                     \
          : kv_attention(o, q, K, V, T, pos0, S, nh, nkv, hd, mask, W, r))
                        kv_kernels_set_threads(1 + (int)(c + mask) % 2);
                        kv_gemv_force(KV_GEMV_C);
                        RUN(want);
                        kv_gemv_force((kv_gemv_isa)isa);
                        memset(got, 0xff, sizeof(float) * n_out);
                        RUN(got);
#undef RUN
                        CHECK(memcmp(want, got, sizeof(float) * n_out) == 0,
                              "%s window attention != C: T %d pos0 %d heads %d/%d hd %d W %d "
                              "mask %d ring %d %s cache",
                              kv_gemv_isa_name((kv_gemv_isa)isa), T, pos0, nh, nkv, hd, W, mask, r,
                              bf16 ? "BF16" : "F32");
                    }
                free(kr), free(vr);
            }
            free(q), free(k), free(v), free(k16), free(v16), free(want), free(got);
        }
    }
    kv_gemv_force(KV_GEMV_N_ISA);
    kv_kernels_set_threads(2);
}

static void test_bad_arguments(void) {
    float q[16] = {0}, k[64] = {0}, v[64] = {0}, out[16];
    CHECK(kv_attention(out, q, k, v, 1, 3, 4, 2, 2, 8, KV_MASK_CAUSAL, -1, 0) == KV_EINVAL,
          "negative window accepted");
    CHECK(kv_attention(out, q, k, v, 1, 3, 4, 2, 2, 8, KV_MASK_CAUSAL, 0, 4) == KV_EINVAL,
          "ring without a window accepted");
    CHECK(kv_attention(out, q, k, v, 2, 2, 4, 1, 1, 8, KV_MASK_CAUSAL, 3, 3) == KV_EINVAL,
          "ring of 3 rows for window 3 and 2 tokens accepted (needs 4)");
    CHECK(kv_attention(out, q, k, v, 2, 2, 4, 1, 1, 8, KV_MASK_CAUSAL, 3, 4) == 0,
          "ring of exactly W + T - 1 rows refused");
}

int main(void) {
    kv_kernels_set_threads(2);
    test_bad_arguments();
    test_reference();
    test_prefill_decode();
    test_isa_variants();
    return check_done("test_kernels_window");
}
