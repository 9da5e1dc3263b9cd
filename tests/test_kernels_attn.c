/* Attention: against a naive double-precision reference (both masks, GQA, cache offsets),
 * zero output at t = 0 under the diagonal mask, GQA head grouping, numerical stability,
 * prefill == decode bit for bit, results independent of the thread count, and the BF16-cache
 * variant equal to the F32 kernel on the same values; every ISA variant (C, AVX2) identical to
 * the C reference bit for bit; the head-by-head layout (kv_attention_cache) equal to the
 * position-major one on the same keys bit for bit. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/gemv.h"
#include "kernels/kernels.h"
#include "tests/check.h"
#define TEST_RAND_SEED 0x2545f4914f6cdd1dull
#include "tests/rand.h"

/* the definition, in double: out [T, nh*hd] */
static void attention_ref(double *out, const float *q, const float *k, const float *v, int T,
                          int pos0, int S, int nh, int nkv, int hd, kv_attn_mask mask) {
    double *w = malloc(sizeof(double) * (S > 0 ? S : 1));
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++) {
            const int g = h / (nh / nkv), p = pos0 + t;
            double m = -INFINITY, z = 0;
            int n = 0;
            for (int s = 0; s < S; s++) {
                int visible = mask == KV_MASK_CAUSAL ? s <= p : s < p;
                if (!visible) break;
                double d = 0;
                for (int i = 0; i < hd; i++)
                    d += (double)q[(t * nh + h) * hd + i] * k[(s * nkv + g) * hd + i];
                w[s] = d / sqrt((double)hd);
                m = fmax(m, w[s]);
                n = s + 1;
            }
            for (int s = 0; s < n; s++) z += (w[s] = exp(w[s] - m));
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int s = 0; s < n; s++) o += w[s] / z * v[(s * nkv + g) * hd + i];
                out[(t * nh + h) * hd + i] = o; /* n == 0: 0 */
            }
        }
    free(w);
}

/* K/V buffers hold exactly S rows, so ASan catches any read past the cache */
static void check_case(int T, int pos0, int S, int nh, int nkv, int hd, kv_attn_mask mask,
                       float qscale) {
    float *q = rand_buf((size_t)T * nh * hd, qscale);
    float *k = rand_buf((size_t)(S ? S : 1) * nkv * hd, 1.0f);
    float *v = rand_buf((size_t)(S ? S : 1) * nkv * hd, 1.0f);
    float *out = rand_buf((size_t)T * nh * hd, 1e3f); /* garbage to be overwritten */
    double *ref = malloc(sizeof(double) * T * nh * hd);
    attention_ref(ref, q, k, v, T, pos0, S, nh, nkv, hd, mask);
    CHECK(kv_attention(out, q, k, v, T, pos0, S, nh, nkv, hd, mask, 0, 0) == 0, "attention rc");
    double w = worst(out, ref, (size_t)T * nh * hd, 2e-6, 2e-5);
    CHECK(w <= 1, "attention T=%d pos0=%d S=%d nh=%d nkv=%d hd=%d mask=%d qscale=%g: %.3g x tol", T,
          pos0, S, nh, nkv, hd, (int)mask, qscale, w);
    free(q), free(k), free(v), free(out), free(ref);
}

static void test_reference(void) {
    for (int mask = 0; mask < 2; mask++) {
        check_case(1, 0, 1, 4, 2, 8, mask, 1.0f); /* first decode step */
        check_case(1, 9, 10, 4, 2, 8, mask, 1.0f); /* decode */
        check_case(6, 0, 6, 4, 4, 8, mask, 1.0f); /* prefill, MHA */
        check_case(5, 3, 8, 8, 2, 16, mask, 1.0f); /* prefill after a cached prefix */
        check_case(37, 100, 137, 6, 3, 12, mask, 2.0f); /* spans key blocks, odd hd */
        check_case(70, 0, 70, 2, 1, 32, mask, 1.0f); /* spans query blocks, MQA */
        check_case(3, 0, 3, 2, 2, 4, mask, 300.0f); /* huge logits: stable softmax */
        check_case(5, 2, 7, 32, 1, 8, mask, 1.0f); /* group wider than a work item */
        check_case(21, 0, 21, 12, 4, 8, mask, 1.0f); /* group 3: rows not a power of 2 */
    }
    /* strict mask only needs positions < p: a cache one row short is enough */
    check_case(4, 2, 5, 4, 2, 8, KV_MASK_STRICT, 1.0f);
    /* a cache longer than the queries' positions: later keys stay invisible */
    check_case(3, 1, 9, 4, 2, 8, KV_MASK_CAUSAL, 1.0f);
}

static void test_masks(void) {
    enum { T = 4, NH = 2, NKV = 1, HD = 4 };
    float *q = rand_buf(T * NH * HD, 1.0f), *k = rand_buf(T * NKV * HD, 1.0f);
    float v[T * NKV * HD], out[T * NH * HD];
    for (int s = 0; s < T; s++)
        for (int i = 0; i < HD; i++) v[s * HD + i] = (float)(s + 1); /* v_s = s+1 everywhere */
    /* causal: t = 0 sees only itself -> exactly v_0 */
    kv_attention(out, q, k, v, T, 0, T, NH, NKV, HD, KV_MASK_CAUSAL, 0, 0);
    CHECK(out[0] == 1.0f && out[HD] == 1.0f, "causal t=0 must equal v_0: %g %g", out[0], out[HD]);
    int in_range = 1;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < NH * HD; i++) in_range &= out[t * NH * HD + i] <= t + 1 + 1e-6f;
    CHECK(in_range, "causal output mixes in future values");
    /* strict: t = 0 is the zero vector, t = 1 is exactly v_0 */
    kv_attention(out, q, k, v, T, 0, T, NH, NKV, HD, KV_MASK_STRICT, 0, 0);
    int zero = 1, first = 1;
    for (int i = 0; i < NH * HD; i++) zero &= out[i] == 0.0f;
    for (int i = 0; i < NH * HD; i++) first &= out[NH * HD + i] == 1.0f;
    CHECK(zero, "strict mask: t=0 is not the zero vector");
    CHECK(first, "strict mask: t=1 must equal v_0");
    in_range = 1;
    for (int t = 1; t < T; t++)
        for (int i = 0; i < NH * HD; i++) in_range &= out[t * NH * HD + i] <= t + 1e-6f;
    CHECK(in_range, "strict mask lets a query see its own position");
    /* strict decode at position 0 with an empty cache */
    float o1[NH * HD];
    for (int i = 0; i < NH * HD; i++) o1[i] = 7.0f;
    kv_attention(o1, q, k, v, 1, 0, 0, NH, NKV, HD, KV_MASK_STRICT, 0, 0);
    zero = 1;
    for (int i = 0; i < NH * HD; i++) zero &= o1[i] == 0.0f;
    CHECK(zero, "strict mask, empty cache: output not zero");
    free(q), free(k);
}

/* query heads 0,1 read kv head 0; heads 2,3 read kv head 1 (nh=4, nkv=2) */
static void test_gqa_grouping(void) {
    enum { T = 3, NH = 4, NKV = 2, HD = 8, N = T * NH * HD };
    float *q = rand_buf(N, 1.0f), *k = rand_buf(T * NKV * HD, 1.0f),
          *v = rand_buf(T * NKV * HD, 1.0f);
    float a[N], b[N];
    kv_attention(a, q, k, v, T, 0, T, NH, NKV, HD, KV_MASK_CAUSAL, 0, 0);
    for (int s = 0; s < T; s++)
        for (int i = 0; i < HD; i++) {
            k[(s * NKV + 1) * HD + i] = frand();
            v[(s * NKV + 1) * HD + i] = frand() + 5.0f;
        }
    kv_attention(b, q, k, v, T, 0, T, NH, NKV, HD, KV_MASK_CAUSAL, 0, 0);
    int same01 = 1, changed23 = 1;
    for (int t = 0; t < T; t++) {
        same01 &= memcmp(a + t * NH * HD, b + t * NH * HD, sizeof(float) * 2 * HD) == 0;
        for (int i = 2 * HD; i < 4 * HD; i++) changed23 &= a[t * NH * HD + i] != b[t * NH * HD + i];
    }
    CHECK(same01, "heads 0,1 changed when kv head 1 changed");
    CHECK(changed23, "heads 2,3 did not follow kv head 1");
    free(q), free(k), free(v);
}

/* one prefill of T tokens == T decode steps over a growing cache, bit for bit; and the
 * thread count does not change a bit */
static void test_prefill_decode_threads(void) {
    enum { T = 150, NH = 4, NKV = 2, HD = 16, W = NH * HD };
    float *q = rand_buf(T * W, 1.0f), *k = rand_buf(T * NKV * HD, 1.0f),
          *v = rand_buf(T * NKV * HD, 1.0f);
    float *pre = malloc(sizeof(float) * T * W), *dec = malloc(sizeof(float) * T * W);
    float *one = malloc(sizeof(float) * T * W);
    for (int mask = 0; mask < 2; mask++) {
        kv_kernels_set_threads(4);
        kv_attention(pre, q, k, v, T, 0, T, NH, NKV, HD, mask, 0, 0);
        for (int t = 0; t < T; t++)
            kv_attention(dec + t * W, q + t * W, k, v, 1, t, mask ? t : t + 1, NH, NKV, HD, mask, 0,
                         0);
        kv_kernels_set_threads(1);
        kv_attention(one, q, k, v, T, 0, T, NH, NKV, HD, mask, 0, 0);
        CHECK(memcmp(pre, dec, sizeof(float) * T * W) == 0, "mask %d: prefill != decode", mask);
        CHECK(memcmp(pre, one, sizeof(float) * T * W) == 0, "mask %d: 4 threads != 1", mask);
        /* a chunked prefill (two calls) matches too */
        kv_kernels_set_threads(3);
        kv_attention(one, q, k, v, 61, 0, mask ? 60 : 61, NH, NKV, HD, mask, 0, 0);
        kv_attention(one + 61 * W, q + 61 * W, k, v, T - 61, 61, T, NH, NKV, HD, mask, 0, 0);
        CHECK(memcmp(pre, one, sizeof(float) * T * W) == 0, "mask %d: chunked prefill", mask);
    }
    kv_kernels_set_threads(2);
    free(q), free(k), free(v), free(pre), free(dec), free(one);
}

/* BF16 cache: equal bit for bit to the F32 kernel on the widened values (shapes across the
 * 64-key block edge, both masks, GQA groups of 1, 2, 4 and 8, offsets, threads; rows widened as
 * read by the default variant, blocks staged by the portable one at 4 rows per item or more);
 * prefill == decode */
static void test_bf16_cache_variant(kv_gemv_isa isa) {
    kv_gemv_force(isa);
    const int shapes[][5] = {/* T, pos0, nh, nkv, hd */
                             {1, 0, 4, 4, 8},     {70, 0, 8, 2, 16},  {1, 129, 8, 1, 64},
                             {33, 100, 4, 1, 32}, {130, 0, 16, 2, 8}, {3, 50, 4, 4, 16},
                             {1, 70, 4, 2, 16}}; /* the last two: < 4 rows per
                                                                       item, widened as read */
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int T = shapes[c][0], pos0 = shapes[c][1], nh = shapes[c][2], nkv = shapes[c][3],
                  hd = shapes[c][4], S = pos0 + T, W = nh * hd;
        const size_t n_kv = (size_t)S * nkv * hd;
        float *q = rand_buf((size_t)T * W, 2.0f), *k = rand_buf(n_kv, 2.0f),
              *v = rand_buf(n_kv, 1.0f);
        uint16_t *k16 = malloc(sizeof *k16 * n_kv), *v16 = malloc(sizeof *v16 * n_kv);
        for (size_t i = 0; i < n_kv; i++) { /* truncate to BF16; k, v keep the widened values */
            uint32_t bk, bv;
            memcpy(&bk, &k[i], 4), memcpy(&bv, &v[i], 4);
            k16[i] = (uint16_t)(bk >> 16), v16[i] = (uint16_t)(bv >> 16);
            bk &= 0xffff0000u, bv &= 0xffff0000u;
            memcpy(&k[i], &bk, 4), memcpy(&v[i], &bv, 4);
        }
        float *want = malloc(sizeof(float) * T * W), *got = malloc(sizeof(float) * T * W);
        for (int mask = 0; mask < 2; mask++) {
            kv_kernels_set_threads(1 + (int)c % 3);
            kv_attention(want, q, k, v, T, pos0, S, nh, nkv, hd, mask, 0, 0);
            memset(got, 0xff, sizeof(float) * T * W);
            CHECK(kv_attention_bf16(got, q, k16, v16, T, pos0, S, nh, nkv, hd, mask, 0, 0) == 0,
                  "bf16 rc");
            CHECK(memcmp(want, got, sizeof(float) * T * W) == 0,
                  "%s: shape %zu mask %d: BF16 cache != F32 kernel on the same values",
                  kv_gemv_isa_name(kv_gemv_isa_active()), c, mask);
            for (int t = 0; t < T; t++) /* decode steps over the BF16 cache */
                kv_attention_bf16(got + (size_t)t * W, q + (size_t)t * W, k16, v16, 1, pos0 + t,
                                  pos0 + t + 1, nh, nkv, hd, mask, 0, 0);
            CHECK(memcmp(want, got, sizeof(float) * T * W) == 0,
                  "%s: shape %zu mask %d: BF16 prefill != decode",
                  kv_gemv_isa_name(kv_gemv_isa_active()), c, mask);
        }
        free(q), free(k), free(v), free(k16), free(v16), free(want), free(got);
    }
    kv_gemv_force(KV_GEMV_N_ISA);
    kv_kernels_set_threads(2);
}

static void test_bf16_cache(void) {
    test_bf16_cache_variant(KV_GEMV_N_ISA); /* the default */
    test_bf16_cache_variant(KV_GEMV_C);
}

/* every variant this CPU runs against the C reference, bit for bit: odd head dims and lengths,
 * GQA ratios 1..8, both masks, F32 and BF16 caches (staged and widened as read), 1 and 2 threads */
static void test_isa_variants(void) {
    const int shapes[][5] = {/* T, pos0, nh, nkv, hd */
                             {1, 0, 3, 3, 7},     {1, 77, 5, 1, 13},   {1, 200, 8, 2, 64},
                             {2, 9, 4, 4, 17},    {37, 0, 6, 2, 9},    {65, 3, 10, 2, 24},
                             {130, 0, 4, 1, 31},  {1, 129, 32, 4, 64}, {19, 64, 6, 3, 40},
                             {1, 300, 4, 2, 128}, {9, 70, 4, 4, 8}, /* AVX2 row pass: 4 x 32, 8 */
                             {3, 100, 12, 2, 64}, {1, 65, 6, 2, 64},   {2, 31, 8, 8, 64},
                             {20, 150, 4, 4, 64}, {9, 200, 8, 2, 64}};
    /* the last five: rows together, heads of one token 4 then 2 (and one alone) at a time, and
     * with one head per kv head a prompt's tokens over the blocks they all see */
    for (int isa = KV_GEMV_AVX2; isa < KV_GEMV_N_ISA; isa++) {
        if (!kv_gemv_isa_supported((kv_gemv_isa)isa)) {
            printf("skip: %s attention (CPU lacks it)\n", kv_gemv_isa_name((kv_gemv_isa)isa));
            continue;
        }
        int compared = 0;
        for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
            const int T = shapes[c][0], pos0 = shapes[c][1], nh = shapes[c][2], nkv = shapes[c][3],
                      hd = shapes[c][4], S = pos0 + T, W = nh * hd;
            const size_t n_kv = (size_t)S * nkv * hd, n_out = (size_t)T * W;
            float *q = rand_buf(n_out, 2.0f), *k = rand_buf(n_kv, 2.0f), *v = rand_buf(n_kv, 1.0f);
            uint16_t *k16 = malloc(sizeof *k16 * n_kv), *v16 = malloc(sizeof *v16 * n_kv);
            for (size_t i = 0; i < n_kv; i++)
                k16[i] = kv_f32_to_bf16(k[i]), v16[i] = kv_f32_to_bf16(v[i]);
            float *want = malloc(sizeof(float) * n_out), *got = malloc(sizeof(float) * n_out);
            for (int cache = 0; cache < 2; cache++)
                for (int mask = 0; mask < 2; mask++) {
                    kv_kernels_set_threads(1 + (int)(c + mask) % 2);
                    kv_gemv_force(KV_GEMV_C);
                    if (cache)
                        kv_attention_bf16(want, q, k16, v16, T, pos0, S, nh, nkv, hd, mask, 0, 0);
                    else kv_attention(want, q, k, v, T, pos0, S, nh, nkv, hd, mask, 0, 0);
                    kv_gemv_force((kv_gemv_isa)isa);
                    memset(got, 0xff, sizeof(float) * n_out);
                    if (cache)
                        kv_attention_bf16(got, q, k16, v16, T, pos0, S, nh, nkv, hd, mask, 0, 0);
                    else kv_attention(got, q, k, v, T, pos0, S, nh, nkv, hd, mask, 0, 0);
                    CHECK(memcmp(want, got, sizeof(float) * n_out) == 0,
                          "%s attention != C: T %d pos0 %d heads %d/%d hd %d mask %d %s cache",
                          kv_gemv_isa_name((kv_gemv_isa)isa), T, pos0, nh, nkv, hd, mask,
                          cache ? "BF16" : "F32");
                    compared++;
                }
            free(q), free(k), free(v), free(k16), free(v16), free(want), free(got);
        }
        CHECK(compared == 64, "%d comparisons", compared);
    }
    kv_gemv_force(KV_GEMV_N_ISA);
    kv_kernels_set_threads(2);
}

/* k [rows, nkv, hd] of elem bytes into hm [nkv, head_rows, hd] (rows <= head_rows; the rest
 * keeps hm's fill) */
static void to_heads(void *hm, const void *k, int rows, int nkv, int hd, int head_rows,
                     size_t elem) {
    for (int g = 0; g < nkv; g++)
        for (int r = 0; r < rows; r++)
            memcpy((char *)hm + (((size_t)g * head_rows + r) * hd) * elem,
                   (const char *)k + (((size_t)r * nkv + g) * hd) * elem, elem * hd);
}

/* kv_attention_cache head by head == position-major, bit for bit: every ISA variant, F32 and
 * BF16 caches, GQA, both masks, windows with and without a ring, spare rows per head (filled
 * with NaN: a read past a head's keys shows), 1 and 2 threads; and its argument checks */
static void test_head_layout(void) {
    const int shapes[][8] = {/* T, pos0, nh, nkv, hd, window, ring, spare rows */
                             {1, 0, 3, 3, 7, 0, 0, 5},
                             {1, 200, 8, 2, 64, 0, 0, 56},
                             {37, 0, 6, 2, 9, 0, 0, 0},
                             {65, 3, 10, 2, 24, 0, 0, 3},
                             {1, 129, 12, 12, 64, 0, 0, 31},
                             {19, 64, 6, 3, 40, 0, 0, 1},
                             {21, 300, 4, 2, 32, 70, 90, 6},
                             {1, 700, 8, 1, 64, 100, 100, 0},
                             {9, 70, 4, 4, 8, 20, 28, 4},
                             /* decode's BF16 rows of 64 dims (their own pass): across a block
                                edge, fewer keys than a group of 8, a window without a ring */
                             {3, 62, 4, 4, 64, 0, 0, 2},
                             {1, 5, 2, 2, 64, 0, 0, 0},
                             {2, 150, 4, 4, 64, 40, 0, 3}};
    int compared = 0;
    for (int isa = KV_GEMV_C; isa < KV_GEMV_N_ISA; isa++) {
        if (!kv_gemv_isa_supported((kv_gemv_isa)isa)) continue;
        kv_gemv_force((kv_gemv_isa)isa);
        for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
            const int T = shapes[c][0], pos0 = shapes[c][1], nh = shapes[c][2], nkv = shapes[c][3],
                      hd = shapes[c][4], window = shapes[c][5], ring = shapes[c][6];
            const int S = pos0 + T, rows = ring ? ring : S, head_rows = rows + shapes[c][7];
            const size_t n_kv = (size_t)rows * nkv * hd, n_hm = (size_t)head_rows * nkv * hd;
            const size_t n_out = (size_t)T * nh * hd;
            float *q = rand_buf(n_out, 2.0f), *k = rand_buf(n_kv, 2.0f), *v = rand_buf(n_kv, 1.0f);
            uint16_t *k16 = malloc(2 * n_kv), *v16 = malloc(2 * n_kv);
            for (size_t i = 0; i < n_kv; i++)
                k16[i] = kv_f32_to_bf16(k[i]), v16[i] = kv_f32_to_bf16(v[i]);
            float *kh = malloc(4 * n_hm), *vh = malloc(4 * n_hm);
            uint16_t *kh16 = malloc(2 * n_hm), *vh16 = malloc(2 * n_hm);
            memset(kh, 0xff, 4 * n_hm), memset(vh, 0xff, 4 * n_hm); /* NaN */
            memset(kh16, 0xff, 2 * n_hm), memset(vh16, 0xff, 2 * n_hm);
            to_heads(kh, k, rows, nkv, hd, head_rows, 4),
                to_heads(vh, v, rows, nkv, hd, head_rows, 4);
            to_heads(kh16, k16, rows, nkv, hd, head_rows, 2);
            to_heads(vh16, v16, rows, nkv, hd, head_rows, 2);
            float *want = malloc(4 * n_out), *got = malloc(4 * n_out);
            for (int bf16 = 0; bf16 < 2; bf16++)
                for (int mask = 0; mask < 2; mask++) {
                    kv_kernels_set_threads(1 + (int)(c + mask) % 2);
                    const kv_dtype dt = bf16 ? KV_BF16 : KV_F32;
                    CHECK(kv_attention_cache(want, q, bf16 ? (void *)k16 : k,
                                             bf16 ? (void *)v16 : v, dt, 0, T, pos0, S, nh, nkv, hd,
                                             mask, window, ring) == 0,
                          "rc, position-major");
                    memset(got, 0xff, 4 * n_out);
                    CHECK(kv_attention_cache(got, q, bf16 ? (void *)kh16 : kh,
                                             bf16 ? (void *)vh16 : vh, dt, head_rows, T, pos0, S,
                                             nh, nkv, hd, mask, window, ring) == 0,
                          "rc, head by head");
                    CHECK(memcmp(want, got, 4 * n_out) == 0,
                          "%s: head-by-head != position-major: T %d pos0 %d heads %d/%d hd %d "
                          "window %d ring %d rows/head %d mask %d %s",
                          kv_gemv_isa_name((kv_gemv_isa)isa), T, pos0, nh, nkv, hd, window, ring,
                          head_rows, mask, bf16 ? "BF16" : "F32");
                    compared++;
                }
            free(q), free(k), free(v), free(k16), free(v16), free(kh), free(vh), free(kh16);
            free(vh16), free(want), free(got);
        }
    }
    CHECK(compared >= 36, "%d comparisons", compared);
    kv_gemv_force(KV_GEMV_N_ISA);
    kv_kernels_set_threads(2);
    float q[8] = {0}, kv[8 * 4] = {0}, out[8];
    CHECK(kv_attention_cache(out, q, kv, kv, KV_F32, 3, 1, 3, 4, 1, 1, 8, KV_MASK_CAUSAL, 0, 0) ==
              KV_EINVAL,
          "3 rows per head for 4 keys accepted");
    CHECK(kv_attention_cache(out, q, kv, kv, KV_F32, -1, 1, 0, 1, 1, 1, 8, KV_MASK_CAUSAL, 0, 0) ==
              KV_EINVAL,
          "negative rows per head accepted");
    CHECK(kv_attention_cache(out, q, kv, kv, KV_F16, 0, 1, 0, 1, 1, 1, 8, KV_MASK_CAUSAL, 0, 0) ==
              KV_EINVAL,
          "an F16 cache accepted");
    CHECK(kv_attention_cache(out, q, kv, kv, KV_F32, 4, 1, 3, 4, 1, 1, 8, KV_MASK_CAUSAL, 0, 0) ==
              0,
          "4 rows per head for 4 keys refused");
}

int main(void) {
    kv_kernels_set_threads(2);
    test_head_layout();
    test_isa_variants();
    test_bf16_cache();
    test_reference();
    test_masks();
    test_gqa_grouping();
    test_prefill_decode_threads();
    return check_done("test_kernels_attn");
}
