/* Matrix-vector kernels (gemv.h): a C reference and AVX2 / AVX-512 variants picked at run time. */
#include "kernels/cpu/gemv.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/pool.h"
#include "kernels/kernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define KV_GEMV_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define KV_GEMV_X86 0
#endif

/* ---- the C reference: 8 partial sums (lane i % 8), combined pairwise in a fixed order ---- */

static float bf16_widen(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static float sum8(const float a[8]) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

static float dot_f32_c(const float *w, const float *x, int n) {
    float a[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] += w[i + l] * x[i + l];
    for (int l = 0; i + l < n; l++) a[l] += w[i + l] * x[i + l];
    return sum8(a);
}

/* a row of 16-bit weights, BF16 (f16 = 0) or F16 (f16 = 1, a constant where inlined), widened
 * exactly */
static inline __attribute__((always_inline)) float dot_half_c(const uint16_t *w, const float *x,
                                                              int n, int f16) {
    float a[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            a[l] += (f16 ? kv_f16_to_f32(w[i + l]) : bf16_widen(w[i + l])) * x[i + l];
    for (int l = 0; i + l < n; l++)
        a[l] += (f16 ? kv_f16_to_f32(w[i + l]) : bf16_widen(w[i + l])) * x[i + l];
    return sum8(a);
}

static float dot_bf16_c(const uint16_t *w, const float *x, int n) { return dot_half_c(w, x, n, 0); }
static float dot_f16_c(const uint16_t *w, const float *x, int n) { return dot_half_c(w, x, n, 1); }

#if KV_GEMV_X86
/* the line KV_STREAM_PREFETCH_BYTES (+ off) past p, into L1 (a hint: never faults, also past
 * the end of W) */
#define GEMV_PREFETCH(p, off)                                                                      \
    _mm_prefetch((const char *)(p) + KV_STREAM_PREFETCH_BYTES + (off), _MM_HINT_T0)

/* The default loops on AVX-512 machines (F32 by AVX2, BF16 by the even/odd loop) prefetch 3 KB
 * ahead with the non-temporal hint instead: each weight line is read once per token. On the Zen 5
 * VM of 2026-12-06, alternating in one process over 256 MiB of matrices of each decode shape of
 * 110M and 1.1B, against the T0 hint 2 KB ahead: BF16 1.05-1.12x on 1 thread and 1.04-1.23x on
 * 2, F32 1.07-1.11x and 1.09-1.34x (docs/RESULTS.md, round 8); 4 KB ahead was slower on rows of
 * 2048. Measured on Zen 5 only: machines without AVX-512 keep the T0 hint. A hint: the results
 * are the same bits. */
#define GEMV_NTA_BYTES 3072
#define GEMV_PREFETCH_NTA(p, off)                                                                  \
    _mm_prefetch((const char *)(p) + GEMV_NTA_BYTES + (off), _MM_HINT_NTA)

/* ---- AVX2 + FMA: 4 accumulators of 8 lanes; the tail (< 8) zero-padded through a buffer ---- */

__attribute__((target("avx2,fma"))) static float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static __m256 bf16x8_avx2(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* a[0..3] += the 32 weights at w against x [32] */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void f32_step_avx2(
    __m256 *a, const float *w, const float *x) {
    a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(w), _mm256_loadu_ps(x), a[0]);
    a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(w + 8), _mm256_loadu_ps(x + 8), a[1]);
    a[2] = _mm256_fmadd_ps(_mm256_loadu_ps(w + 16), _mm256_loadu_ps(x + 16), a[2]);
    a[3] = _mm256_fmadd_ps(_mm256_loadu_ps(w + 24), _mm256_loadu_ps(x + 24), a[3]);
}

/* a row's end after its 32-weight steps up to i: blocks of 8 into a[0], the tail (< 8)
 * zero-padded into a[1], then the sum */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) float
f32_finish_avx2(__m256 *a, const float *w, const float *x, int i, int n) {
    for (; i + 8 <= n; i += 8)
        a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a[0]);
    if (i < n) {
        float wt[8] = {0}, xt[8] = {0};
        memcpy(wt, w + i, sizeof(float) * (size_t)(n - i));
        memcpy(xt, x + i, sizeof(float) * (size_t)(n - i));
        a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(wt), _mm256_loadu_ps(xt), a[1]);
    }
    return hsum256(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

/* nta: the non-temporal prefetch 3 KB ahead (a constant where inlined), else T0 2 KB ahead */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) float
dot_f32_avx2_pf(const float *w, const float *x, int n, int nta) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        if (nta) GEMV_PREFETCH_NTA(w + i, 0), GEMV_PREFETCH_NTA(w + i, 64);
        else GEMV_PREFETCH(w + i, 0), GEMV_PREFETCH(w + i, 64);
        f32_step_avx2(a, w + i, x + i);
    }
    return f32_finish_avx2(a, w, x, i, n);
}

/* T0 2 KB ahead where there is no AVX-512 (measured best on the Xeon VM, round 5); the
 * non-temporal hint where there is (f32_dot picks) */
__attribute__((target("avx2,fma"))) static float dot_f32_avx2(const float *w, const float *x,
                                                              int n) {
    return dot_f32_avx2_pf(w, x, n, 0);
}

__attribute__((target("avx2,fma"))) static float dot_f32_avx2_nta(const float *w, const float *x,
                                                                  int n) {
    return dot_f32_avx2_pf(w, x, n, 1);
}

/* Long rows run two at a time, x's loads shared between them: at GEMV_PAIR_MIN_IN weights or
 * more x (de-interleaved for BF16) is 16 KB or more, and one row at a time streamed 15-25%
 * slower than rows of 2048 (docs/RESULTS.md, rounds 8 and 9); two rows meet each x line once.
 * The prefetch runs GEMV_NTA_BYTES ahead in each row and past a row's end into the next pair's
 * rows (whole rows later: a hint). Each row keeps its own operations in its own order, so the
 * bits are those of the row alone (tests/test_gemv.c). */
enum { GEMV_PAIR_MIN_IN = 4096 };

/* the next GEMV_NTA_BYTES-ahead line of a row pair's row at byte off (of row_bytes), past the
 * row's end the same distance into the row next_row (the next pair's): a prefetch address */
static inline __attribute__((always_inline)) const char *pair_ahead(const void *row,
                                                                    const void *next_row,
                                                                    size_t off, size_t row_bytes) {
    const size_t ahead = off + GEMV_NTA_BYTES;
    return ahead < row_bytes ? (const char *)row + ahead
                             : (const char *)next_row + (ahead - row_bytes);
}

/* the two lines GEMV_NTA_BYTES ahead of byte off in each row of the pair w, u = w + row_bytes,
 * non-temporal (a hint; past a row's end, the next pair's rows) */
static inline __attribute__((always_inline)) void pair_prefetch(const void *w, size_t off,
                                                                size_t row_bytes) {
    const char *u = (const char *)w + row_bytes;
    const char *pw = pair_ahead(w, u + row_bytes, off, row_bytes),
               *pu = pair_ahead(u, u + 2 * row_bytes, off, row_bytes);
    _mm_prefetch(pw, _MM_HINT_NTA), _mm_prefetch(pw + 64, _MM_HINT_NTA);
    _mm_prefetch(pu, _MM_HINT_NTA), _mm_prefetch(pu + 64, _MM_HINT_NTA);
}

/* F32 rows w and u = w + n together, each with dot_f32_avx2_nta's operations in its order (the
 * same bits), x's loads shared, as dot2_bf16_evenodd does for BF16 (rows of 5632 at 1 thread
 * 21.9-22.9 -> 26.2-28.4 GB/s, 4096 20.7 -> 22.9, 2048 0.96x; same VM and day) */
__attribute__((target("avx2,fma"))) static void dot2_f32_avx2_nta(float *sw, float *su,
                                                                  const float *w, const float *x,
                                                                  int n) {
    const float *u = w + n;
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    __m256 b[4] = {a[0], a[1], a[2], a[3]};
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        pair_prefetch(w, sizeof(float) * (size_t)i, sizeof(float) * (size_t)n);
        f32_step_avx2(a, w + i, x + i);
        f32_step_avx2(b, u + i, x + i);
    }
    *sw = f32_finish_avx2(a, w, x, i, n);
    *su = f32_finish_avx2(b, u, x, i, n);
}

/* 8 F16 weights as F32 (exact: vcvtph2ps) */
__attribute__((target("avx2,fma,f16c"))) static __m256 f16x8_avx2(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* a row of 16-bit weights, BF16 (f16 = 0) or F16 (f16 = 1, a constant where inlined) */
__attribute__((target("avx2,fma,f16c"))) static inline __attribute__((always_inline)) __m256
half8_avx2(const uint16_t *p, int f16) {
    return f16 ? f16x8_avx2(p) : bf16x8_avx2(p);
}

__attribute__((target("avx2,fma,f16c"))) static inline __attribute__((always_inline)) float
dot_half_avx2(const uint16_t *w, const float *x, int n, int f16, int prefetch) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        if (prefetch) GEMV_PREFETCH(w + i, 0);
        a0 = _mm256_fmadd_ps(half8_avx2(w + i, f16), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(half8_avx2(w + i + 8, f16), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(half8_avx2(w + i + 16, f16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(half8_avx2(w + i + 24, f16), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(half8_avx2(w + i, f16), _mm256_loadu_ps(x + i), a0);
    if (i < n) {
        uint16_t wt[8] = {0};
        float xt[8] = {0};
        memcpy(wt, w + i, sizeof(uint16_t) * (size_t)(n - i));
        memcpy(xt, x + i, sizeof(float) * (size_t)(n - i));
        a1 = _mm256_fmadd_ps(half8_avx2(wt, f16), _mm256_loadu_ps(xt), a1);
    }
    return hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

/* with the prefetch hint (the tables), and without it (_hw: the hardware prefetcher alone) for
 * machines without AVX-512, where on Zen 3 it decoded 1.04-1.13x faster for BF16 and F16
 * (docs/RESULTS.md, round 6); half_dot picks */
__attribute__((target("avx2,fma,f16c"))) static float dot_bf16_avx2(const uint16_t *w,
                                                                    const float *x, int n) {
    return dot_half_avx2(w, x, n, 0, 1);
}

__attribute__((target("avx2,fma,f16c"))) static float dot_bf16_avx2_hw(const uint16_t *w,
                                                                       const float *x, int n) {
    return dot_half_avx2(w, x, n, 0, 0);
}

__attribute__((target("avx2,fma,f16c"))) static float dot_f16_avx2(const uint16_t *w,
                                                                   const float *x, int n) {
    return dot_half_avx2(w, x, n, 1, 1);
}

__attribute__((target("avx2,fma,f16c"))) static float dot_f16_avx2_hw(const uint16_t *w,
                                                                      const float *x, int n) {
    return dot_half_avx2(w, x, n, 1, 0);
}

/* ---- AVX-512F: 4 accumulators of 16 lanes; the tail (< 16) zero-padded through a buffer ---- */

__attribute__((target("avx512f"))) static float hsum512(__m512 v) {
    /* fixed order: halves, then quarters, then within 128 bits */
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx512f"))) static __m512 bf16x16_avx512(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* elements before w + i starts on an `align`-byte boundary (at most n); 64-byte loads that
 * straddle cache lines ran at about half the bandwidth of aligned ones here */
static int head_to_align(const void *w, size_t elem, size_t align, int n) {
    size_t mis = (uintptr_t)w % align;
    if (!mis || mis % elem) return 0;
    size_t h = (align - mis) / elem;
    return h < (size_t)n ? (int)h : n;
}

__attribute__((target("avx512f"))) static float dot_f32_avx512(const float *w, const float *x,
                                                               int n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = head_to_align(w, sizeof(float), 64, n);
    if (i) { /* the head, zero-padded: W's loads below are aligned */
        float wt[16] = {0}, xt[16] = {0};
        memcpy(wt, w, sizeof(float) * (size_t)i);
        memcpy(xt, x, sizeof(float) * (size_t)i);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(wt), _mm512_loadu_ps(xt), a3);
    }
    for (; i + 64 <= n; i += 64) {
        GEMV_PREFETCH(w + i, 0), GEMV_PREFETCH(w + i, 64);
        GEMV_PREFETCH(w + i, 128), GEMV_PREFETCH(w + i, 192);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 32), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 48), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16)
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    if (i < n) {
        float wt[16] = {0}, xt[16] = {0};
        memcpy(wt, w + i, sizeof(float) * (size_t)(n - i));
        memcpy(xt, x + i, sizeof(float) * (size_t)(n - i));
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(wt), _mm512_loadu_ps(xt), a1);
    }
    return hsum512(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* 16 F16 weights as F32 (exact: vcvtph2ps) */
__attribute__((target("avx512f"))) static __m512 f16x16_avx512(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) __m512
half16_avx512(const uint16_t *p, int f16) {
    return f16 ? f16x16_avx512(p) : bf16x16_avx512(p);
}

/* a row of 16-bit weights, BF16 (f16 = 0) or F16 (f16 = 1, a constant where inlined) */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) float
dot_half_avx512(const uint16_t *w, const float *x, int n, int f16) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = head_to_align(w, sizeof(uint16_t), 32, n);
    if (i) {
        uint16_t wt[16] = {0};
        float xt[16] = {0};
        memcpy(wt, w, sizeof(uint16_t) * (size_t)i);
        memcpy(xt, x, sizeof(float) * (size_t)i);
        a3 = _mm512_fmadd_ps(half16_avx512(wt, f16), _mm512_loadu_ps(xt), a3);
    }
    for (; i + 64 <= n; i += 64) {
        GEMV_PREFETCH(w + i, 0), GEMV_PREFETCH(w + i, 64);
        a0 = _mm512_fmadd_ps(half16_avx512(w + i, f16), _mm512_loadu_ps(x + i), a0);
        a1 = _mm512_fmadd_ps(half16_avx512(w + i + 16, f16), _mm512_loadu_ps(x + i + 16), a1);
        a2 = _mm512_fmadd_ps(half16_avx512(w + i + 32, f16), _mm512_loadu_ps(x + i + 32), a2);
        a3 = _mm512_fmadd_ps(half16_avx512(w + i + 48, f16), _mm512_loadu_ps(x + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16)
        a0 = _mm512_fmadd_ps(half16_avx512(w + i, f16), _mm512_loadu_ps(x + i), a0);
    if (i < n) {
        uint16_t wt[16] = {0};
        float xt[16] = {0};
        memcpy(wt, w + i, sizeof(uint16_t) * (size_t)(n - i));
        memcpy(xt, x + i, sizeof(float) * (size_t)(n - i));
        a1 = _mm512_fmadd_ps(half16_avx512(wt, f16), _mm512_loadu_ps(xt), a1);
    }
    return hsum512(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

__attribute__((target("avx512f"))) static float dot_bf16_avx512(const uint16_t *w, const float *x,
                                                                int n) {
    return dot_half_avx512(w, x, n, 0);
}

__attribute__((target("avx512f"))) static float dot_f16_avx512(const uint16_t *w, const float *x,
                                                               int n) {
    return dot_half_avx512(w, x, n, 1);
}

/* ---- AVX-512F, BF16 weights, x de-interleaved once per call (gemv.h): a 64-byte load of 32
 * weights is 16 dwords, dword k holding w[2k] in its low half and w[2k+1] in its high half; a
 * shift by 16 makes the evens F32 and a mask the odds, each multiplied by x's matching half, so
 * a line costs one load, two integer ops and two FMAs (no cross-lane widening) ---- */

/* xd [n]: per full block of 32 at b, xd[b + k] = x[b + 2k], xd[b + 16 + k] = x[b + 2k + 1]
 * (k < 16), by two permutes a block; the last n % 32 as in x */
__attribute__((target("avx512f"))) static void deinterleave_x_avx512(float *xd, const float *x,
                                                                     int n) {
    const __m512i evens =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odds =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    int b = 0;
    for (; b + 32 <= n; b += 32) {
        const __m512 lo = _mm512_loadu_ps(x + b), hi = _mm512_loadu_ps(x + b + 16);
        _mm512_storeu_ps(xd + b, _mm512_permutex2var_ps(lo, evens, hi));
        _mm512_storeu_ps(xd + b + 16, _mm512_permutex2var_ps(lo, odds, hi));
    }
    for (; b < n; b++) xd[b] = x[b];
}

/* a[0..3] += the 32 weights at w against xd [32] (evens and odds of one block) */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void evenodd_half(
    __m512 *a, const uint16_t *w, const float *xd, __m512i odd) {
    const __m512i v = _mm512_loadu_si512((const void *)w);
    a[0] =
        _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), _mm512_loadu_ps(xd), a[0]);
    a[1] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, odd)), _mm512_loadu_ps(xd + 16),
                           a[1]);
}

/* the 64 weights at w against xd [64]: accumulators 0, 1 take the first 32, 2, 3 the next */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void evenodd_step(
    __m512 *a, const uint16_t *w, const float *xd, __m512i odd) {
    evenodd_half(a, w, xd, odd);
    evenodd_half(a + 2, w + 32, xd + 32, odd);
}

/* a row's end after its 64-weight steps up to i: one block of 32, the tail (< 32, in x's order,
 * widened and zero-padded), then the sum */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) float
evenodd_finish(__m512 *a, const uint16_t *w, const float *xd, int i, int n, __m512i odd) {
    if (i + 32 <= n) {
        evenodd_half(a, w + i, xd + i, odd);
        i += 32;
    }
    if (i < n) {
        uint16_t wt[32] = {0};
        float xt[32] = {0};
        memcpy(wt, w + i, sizeof(uint16_t) * (size_t)(n - i));
        memcpy(xt, xd + i, sizeof(float) * (size_t)(n - i));
        a[2] = _mm512_fmadd_ps(bf16x16_avx512(wt), _mm512_loadu_ps(xt), a[2]);
        a[3] = _mm512_fmadd_ps(bf16x16_avx512(wt + 16), _mm512_loadu_ps(xt + 16), a[3]);
    }
    return hsum512(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
}

__attribute__((target("avx512f"))) static float dot_bf16_evenodd(const uint16_t *w, const float *xd,
                                                                 int n) {
    const __m512i odd = _mm512_set1_epi32((int)0xffff0000u);
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        GEMV_PREFETCH_NTA(w + i, 0), GEMV_PREFETCH_NTA(w + i, 64);
        evenodd_step(a, w + i, xd + i, odd);
    }
    return evenodd_finish(a, w, xd, i, n, odd);
}

/* BF16 rows w and u = w + n together (GEMV_PAIR_MIN_IN), each with dot_bf16_evenodd's
 * operations in its order (the same bits), x's loads shared (one thread, Zen 5 VM, 2026-12-06:
 * rows of 5632 22.6-24.0 -> 26.6-29.6 GB/s, 4096 27.6 -> 30.9; 2816 the same, 2048 0.96x, 768
 * 0.78x) */
__attribute__((target("avx512f"))) static void dot2_bf16_evenodd(float *sw, float *su,
                                                                 const uint16_t *w, const float *xd,
                                                                 int n) {
    const __m512i odd = _mm512_set1_epi32((int)0xffff0000u);
    const uint16_t *u = w + n;
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
    __m512 b[4] = {a[0], a[1], a[2], a[3]};
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        pair_prefetch(w, sizeof(uint16_t) * (size_t)i, sizeof(uint16_t) * (size_t)n);
        evenodd_step(a, w + i, xd + i, odd);
        evenodd_step(b, u + i, xd + i, odd);
    }
    *sw = evenodd_finish(a, w, xd, i, n, odd);
    *su = evenodd_finish(b, u, xd, i, n, odd);
}

/* Four BF16 rows w + k n (k < 4) together, each with dot_bf16_evenodd's operations in its order
 * (the same bits), x's loads shared four ways: rows of GEMV_PAIR_MIN_IN or more read a 16 KB or
 * larger x once per row, and a matrix-vector loop over such rows streamed slower than over rows
 * of 2048 (xd's lines leave L1 between uses: wrapping the same loop over the first 8 KB of x gave
 * rows of 5632 the speed of rows of 2048). Four rows take one x line per four weight lines;
 * gemv_bench, 1.1B down_proj [2048 x 5632], one binary, 6 rounds in alternating order, against
 * pairs: 1.06x at 1 thread and 1.065x at 2 (medians of the per-round ratios; docs/RESULTS.md,
 * round 11). The prefetch runs GEMV_NTA_BYTES ahead in each row and past a row's end into the
 * next four's rows (a hint). */
__attribute__((target("avx512f"))) static void dot4_bf16_evenodd(float s[4], const uint16_t *w,
                                                                 const float *xd, int n) {
    const __m512i odd = _mm512_set1_epi32((int)0xffff0000u);
    const size_t row_bytes = sizeof(uint16_t) * (size_t)n;
    const __m512 z = _mm512_setzero_ps();
    __m512 a[4][4] = {{z, z, z, z}, {z, z, z, z}, {z, z, z, z}, {z, z, z, z}};
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        const char *p = pair_ahead(w, (const char *)w + 4 * row_bytes, sizeof(uint16_t) * (size_t)i,
                                   row_bytes); /* row 0's; row k's is k rows on */
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            _mm_prefetch(p + k * row_bytes, _MM_HINT_NTA);
            _mm_prefetch(p + k * row_bytes + 64, _MM_HINT_NTA);
        }
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) evenodd_step(a[k], w + (size_t)k * n + i, xd + i, odd);
    }
    for (int k = 0; k < 4; k++) s[k] = evenodd_finish(a[k], w + (size_t)k * n, xd, i, n, odd);
}

/* ---- AVX512_BF16: vdpbf16ps against x split into BF16 parts hi + mid + lo == x (gemv.h) ---- */

/* xs [3, n]: hi, mid, lo, each the nearest-even BF16 of what the parts before leave of x; the
 * remainders are exact in F32, and the third takes the last 8 significant bits whole */
static void split_x3(uint16_t *xs, const float *x, int n) {
    for (int i = 0; i < n; i++) {
        const uint16_t hi = kv_f32_to_bf16(x[i]);
        const float r = x[i] - kv_bf16_to_f32(hi);
        const uint16_t mid = kv_f32_to_bf16(r);
        xs[i] = hi, xs[n + i] = mid, xs[2 * n + i] = kv_f32_to_bf16(r - kv_bf16_to_f32(mid));
    }
}

__attribute__((target("avx512f,avx512bf16"))) static __m512bh bf16x32(const uint16_t *p) {
    return (__m512bh)_mm512_loadu_si512((const void *)p);
}

/* w[n] . (hi + mid + lo)[n]; xs from split_x3 */
__attribute__((target("avx512f,avx512bf16"))) static float dot_bf16_dp(const uint16_t *w,
                                                                       const uint16_t *xs, int n) {
    const uint16_t *xh = xs, *xm = xs + n, *xl = xs + 2 * (size_t)n;
    __m512 ah = _mm512_setzero_ps(), am = ah, al = ah;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        GEMV_PREFETCH(w + i, 0);
        const __m512bh wv = bf16x32(w + i);
        ah = _mm512_dpbf16_ps(ah, wv, bf16x32(xh + i));
        am = _mm512_dpbf16_ps(am, wv, bf16x32(xm + i));
        al = _mm512_dpbf16_ps(al, wv, bf16x32(xl + i));
    }
    if (i < n) { /* the tail, zero-padded */
        uint16_t wt[32] = {0}, ht[32] = {0}, mt[32] = {0}, lt[32] = {0};
        const size_t k = sizeof(uint16_t) * (size_t)(n - i);
        memcpy(wt, w + i, k), memcpy(ht, xh + i, k), memcpy(mt, xm + i, k), memcpy(lt, xl + i, k);
        const __m512bh wv = bf16x32(wt);
        ah = _mm512_dpbf16_ps(ah, wv, bf16x32(ht));
        am = _mm512_dpbf16_ps(am, wv, bf16x32(mt));
        al = _mm512_dpbf16_ps(al, wv, bf16x32(lt));
    }
    return hsum512(_mm512_add_ps(_mm512_add_ps(al, am), ah));
}

/* the calling thread's prepared x (split or de-interleaved), grown as needed */
static _Thread_local void *prep_buf;
static _Thread_local size_t prep_cap;

static void *prep_space(size_t bytes) {
    if (bytes > prep_cap) {
        const size_t cap = (bytes + 63) / 64 * 64;
        void *p = aligned_alloc(64, cap);
        if (!p) return NULL;
        free(prep_buf);
        prep_buf = p, prep_cap = cap;
    }
    return prep_buf;
}
#endif

/* ---- dispatch ---- */

typedef float (*dot_f32_fn)(const float *, const float *, int);
typedef float (*dot_half_fn)(const uint16_t *, const float *, int); /* BF16 or F16 rows */

static const dot_f32_fn dot_f32[KV_GEMV_N_ISA] = {
    dot_f32_c,
#if KV_GEMV_X86
    dot_f32_avx2,
    dot_f32_avx512,
    dot_f32_avx512,
#else
    dot_f32_c,
    dot_f32_c,
    dot_f32_c,
#endif
};
static const dot_half_fn dot_bf16[KV_GEMV_N_ISA] = {
    dot_bf16_c,
#if KV_GEMV_X86
    dot_bf16_avx2, dot_bf16_avx512, dot_bf16_avx512, /* when prep_for has no memory for x */
#else
    dot_bf16_c,
    dot_bf16_c,
    dot_bf16_c,
#endif
};

static const dot_half_fn dot_f16[KV_GEMV_N_ISA] = {
    dot_f16_c,
#if KV_GEMV_X86
    dot_f16_avx2, dot_f16_avx512, dot_f16_avx512, /* vdpbf16ps has no F16 twin: the AVX-512 loop */
#else
    dot_f16_c,
    dot_f16_c,
    dot_f16_c,
#endif
};

static const char *const isa_names[KV_GEMV_N_ISA] = {"c", "avx2", "avx512", "avx512bf16"};

const char *kv_gemv_isa_name(kv_gemv_isa isa) {
    return (int)isa >= 0 && isa < KV_GEMV_N_ISA ? isa_names[isa] : "?";
}

int kv_gemv_isa_parse(kv_gemv_isa *isa, const char *s) {
    for (int i = 0; s && i < KV_GEMV_N_ISA; i++)
        if (!strcmp(s, isa_names[i])) {
            *isa = (kv_gemv_isa)i;
            return 0;
        }
    return -1;
}

static int cpu_has[KV_GEMV_N_ISA];
static kv_gemv_isa env_isa; /* the environment's choice (or the best), resolved once */
static int env_named; /* KV_CPU_ISA named a variant */
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static atomic_int forced = KV_GEMV_N_ISA;

static kv_gemv_isa best_at_most(kv_gemv_isa want) {
    int i = want;
    while (i > 0 && !cpu_has[i]) i--;
    return (kv_gemv_isa)i;
}

static void probe(void) {
    cpu_has[KV_GEMV_C] = 1;
#if KV_GEMV_X86
    __builtin_cpu_init();
    unsigned eax, ebx, ecx = 0, edx;
    const int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C); /* F16 loads */
    cpu_has[KV_GEMV_AVX2] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    cpu_has[KV_GEMV_AVX512] = cpu_has[KV_GEMV_AVX2] && __builtin_cpu_supports("avx512f");
    cpu_has[KV_GEMV_AVX512BF16] = cpu_has[KV_GEMV_AVX512] && __builtin_cpu_supports("avx512bf16");
#endif
    /* AVX2 unless asked: on the Zen 5 machines here the AVX-512 variants streamed weights about
     * 10-30% slower than AVX2's (aligned or not, 1 thread; decode is bandwidth-bound) */
    kv_gemv_isa want = KV_GEMV_AVX2;
    const char *e = getenv("KV_CPU_ISA");
    env_named = e && *e && !kv_gemv_isa_parse(&want, e);
    if (!env_named) want = KV_GEMV_AVX2;
    env_isa = best_at_most(want);
}

int kv_gemv_isa_supported(kv_gemv_isa isa) {
    pthread_once(&probe_once, probe);
    return (int)isa >= 0 && isa < KV_GEMV_N_ISA && cpu_has[isa];
}

kv_gemv_isa kv_gemv_isa_active(void) {
    pthread_once(&probe_once, probe);
    int f = atomic_load_explicit(&forced, memory_order_relaxed);
    return f >= 0 && f < KV_GEMV_N_ISA ? best_at_most((kv_gemv_isa)f) : env_isa;
}

kv_gemv_isa kv_gemv_isa_for(kv_dtype w_type) {
    const kv_gemv_isa isa = kv_gemv_isa_active();
    const int chosen =
        env_named || atomic_load_explicit(&forced, memory_order_relaxed) < (int)KV_GEMV_N_ISA;
    return w_type == KV_BF16 && !chosen && isa == KV_GEMV_AVX2 && cpu_has[KV_GEMV_AVX512]
               ? KV_GEMV_AVX512
               : isa;
}

kv_gemv_isa kv_gemv_force(kv_gemv_isa isa) {
    atomic_store(&forced, (int)isa >= 0 && isa < KV_GEMV_N_ISA ? (int)isa : (int)KV_GEMV_N_ISA);
    return kv_gemv_isa_active();
}

/* a BF16 row w [n] against x prepared by prep_for for isa (AVX512: de-interleaved,
 * AVX512_BF16: split); without x86, never called */
static float dot_prepared(kv_gemv_isa isa, const uint16_t *w, const void *xp, int n) {
#if KV_GEMV_X86
    return isa == KV_GEMV_AVX512BF16 ? dot_bf16_dp(w, xp, n) : dot_bf16_evenodd(w, xp, n);
#else
    (void)isa, (void)w, (void)xp, (void)n;
    return 0.0f;
#endif
}

/* the dot product of a BF16 or F16 row for isa: AVX2's without the prefetch hint where there is
 * no AVX-512 */
static dot_half_fn half_dot(kv_gemv_isa isa, kv_dtype w_type) {
#if KV_GEMV_X86
    if (isa == KV_GEMV_AVX2 && !cpu_has[KV_GEMV_AVX512])
        return w_type == KV_BF16 ? dot_bf16_avx2_hw : dot_f16_avx2_hw;
#endif
    return w_type == KV_BF16 ? dot_bf16[isa] : dot_f16[isa];
}

/* the dot product of an F32 row for isa: AVX2's with the non-temporal prefetch where the CPU has
 * AVX-512 */
static dot_f32_fn f32_dot(kv_gemv_isa isa) {
#if KV_GEMV_X86
    if (isa == KV_GEMV_AVX2 && cpu_has[KV_GEMV_AVX512]) return dot_f32_avx2_nta;
#endif
    return dot_f32[isa];
}

/* y[o] = s, after y[o] + s when accumulating, then + bias[o] */
static inline void row_out(float *y, int o, float s, const float *bias, int accumulate) {
    if (accumulate) s = y[o] + s;
    if (bias) s += bias[o];
    y[o] = s;
}

/* rows [o0, o1) of y (+)= W x (+ bias) with isa: BF16 rows against xp when prep_for gave one,
 * else each row's dot product from the tables */
static void rows_run(kv_gemv_isa isa, float *y, const float *x, const void *xp, const void *W,
                     kv_dtype w_type, const float *bias, int n_in, int o0, int o1, int accumulate) {
    const dot_half_fn dot_half =
        w_type == KV_BF16 || w_type == KV_F16 ? half_dot(isa, w_type) : NULL;
    const dot_f32_fn dot = dot_half ? NULL : f32_dot(isa);
    int o = o0;
#if KV_GEMV_X86
    /* long rows four (BF16 on AVX-512) or two at a time (F32 by the AVX2 loop where the CPU has
     * AVX-512: its 16 registers hold two rows' accumulators, not four) */
    const int bf16_pairs = xp && isa == KV_GEMV_AVX512;
    const int f32_pairs = w_type == KV_F32 && isa == KV_GEMV_AVX2 && cpu_has[KV_GEMV_AVX512];
    if (bf16_pairs && n_in >= GEMV_PAIR_MIN_IN) /* fours first, then a pair, then one */
        for (; o + 4 <= o1; o += 4) {
            float s[4];
            dot4_bf16_evenodd(s, (const uint16_t *)W + (size_t)o * (size_t)n_in, xp, n_in);
            for (int k = 0; k < 4; k++) row_out(y, o + k, s[k], bias, accumulate);
        }
    if ((bf16_pairs || f32_pairs) && n_in >= GEMV_PAIR_MIN_IN)
        for (; o + 2 <= o1; o += 2) {
            float s[2];
            const size_t off = (size_t)o * (size_t)n_in;
            if (bf16_pairs) dot2_bf16_evenodd(&s[0], &s[1], (const uint16_t *)W + off, xp, n_in);
            else dot2_f32_avx2_nta(&s[0], &s[1], (const float *)W + off, x, n_in);
            row_out(y, o, s[0], bias, accumulate);
            row_out(y, o + 1, s[1], bias, accumulate);
        }
#endif
    for (; o < o1; o++) {
        const size_t off = (size_t)o * (size_t)n_in;
        float s = xp         ? dot_prepared(isa, (const uint16_t *)W + off, xp, n_in)
                  : dot_half ? dot_half((const uint16_t *)W + off, x, n_in)
                             : dot((const float *)W + off, x, n_in);
        row_out(y, o, s, bias, accumulate);
    }
}

/* x prepared for BF16 weights under AVX512 (de-interleaved) or AVX512_BF16 (split into three
 * BF16 parts), in the calling thread's buffer; NULL when isa takes x as it is or there is no
 * memory (*isa then falls back: AVX512_BF16 to AVX512's widening, AVX512 to AVX2) */
static const void *prep_for(kv_gemv_isa *isa, kv_dtype w_type, const float *x, int n_in) {
#if KV_GEMV_X86
    if (w_type != KV_BF16 || *isa < KV_GEMV_AVX512) return NULL;
    if (*isa == KV_GEMV_AVX512BF16) {
        uint16_t *xs = prep_space(sizeof(uint16_t) * 3 * (size_t)n_in);
        if (xs) split_x3(xs, x, n_in);
        else *isa = KV_GEMV_AVX512;
        return xs;
    }
    float *xd = prep_space(sizeof(float) * (size_t)n_in);
    if (xd) deinterleave_x_avx512(xd, x, n_in);
    else *isa = KV_GEMV_AVX2;
    return xd;
#else
    (void)isa, (void)w_type, (void)x, (void)n_in;
    return NULL;
#endif
}

void kv_gemv_rows(kv_gemv_isa isa, float *y, const float *x, const void *W, kv_dtype w_type,
                  const float *bias, int n_in, int o0, int o1, int accumulate) {
    const void *xp = o1 > o0 ? prep_for(&isa, w_type, x, n_in) : NULL;
    rows_run(isa, y, x, xp, W, w_type, bias, n_in, o0, o1, accumulate);
}

/* Rows handed out in blocks; each row is one thread's dot product whatever the split. Worker w
 * starts on the same share of a matrix every token (kv_parallel_for), so the rows a core read
 * last token are the ones it reads again: on the 110M shape, whose 219 MB of BF16 weights partly
 * stay in the last-level cache from one token to the next, that decoded 5-20% faster at 2
 * threads than turning the shares per call so that a worker's stream carried on into the next
 * matrix (round 8's lead; 49 calls a token flipped every share each token), and the same on
 * 1.1B (docs/RESULTS.md, round 12). */
enum { GEMV_ROWS_PER_ITEM = 16 };

typedef struct {
    kv_gemv_isa isa;
    float *y;
    const float *x, *bias;
    const void *xp; /* x prepared once by the caller (prep_for), read by every worker */
    const void *W;
    kv_dtype w_type;
    int n_in, n_out, accumulate;
} gemv_job;

static void gemv_item(void *ctx, int item, int worker) {
    (void)worker;
    const gemv_job *j = ctx;
    const int o0 = item * GEMV_ROWS_PER_ITEM;
    const int o1 = j->n_out - o0 < GEMV_ROWS_PER_ITEM ? j->n_out : o0 + GEMV_ROWS_PER_ITEM;
    /* x prepared once by kv_gemv (or, where that failed, isa already lowered to take x as is) */
    rows_run(j->isa, j->y, j->x, j->xp, j->W, j->w_type, j->bias, j->n_in, o0, o1, j->accumulate);
}

int kv_gemv(float *y, const float *x, const void *W, kv_dtype w_type, const float *bias, int n_in,
            int n_out, int accumulate) {
    if (w_type != KV_F32 && w_type != KV_BF16 && w_type != KV_F16) return -1;
    if (n_out <= 0) return 0;
    gemv_job j = {.isa = kv_gemv_isa_for(w_type),
                  .y = y,
                  .x = x,
                  .bias = bias,
                  .W = W,
                  .w_type = w_type,
                  .n_in = n_in,
                  .n_out = n_out,
                  .accumulate = accumulate};
    const int items = (n_out + GEMV_ROWS_PER_ITEM - 1) / GEMV_ROWS_PER_ITEM;
    const int workers = kv_parallel_workers(items, 2.0 * n_in * n_out);
    if (workers <= 1) {
        kv_gemv_rows(j.isa, y, x, W, w_type, bias, n_in, 0, n_out, accumulate);
        return 0;
    }
    /* once per call, not per block of rows (per block it cost as much as the rows at 2 threads) */
    j.xp = prep_for(&j.isa, w_type, x, n_in);
    kv_parallel_for(items, workers, gemv_item, &j);
    return 0;
}
