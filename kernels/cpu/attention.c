/* Causal / diagonal-masked GQA attention over a KV cache, forward and backward.
 * Forward: blocked online softmax (flash style). Keys are visited in blocks of KB, the same
 * blocks in the same order for every query row, so a row's result does not depend on T, on how
 * rows are grouped into work items, or on threads.
 *
 * The forward has two variants: portable C (the reference) and AVX2, picked at run time with the
 * matrix-vector kernels' choice (kernels/cpu/gemv.h: KV_CPU_ISA; AVX-512 runs AVX2 here, except
 * decode's usual rows, BF16 of 64 dims head by head, which take an AVX-512 pass where BF16
 * matrix-vector products run AVX-512). Every variant does the reference's arithmetic in the
 * reference's order (8 partial sums, lane u = element i % 8, combined pairwise; multiplies and
 * adds rounded separately, never fused; exp by kv_expf, kernels/cpu/vexp.h, whose vector twins
 * give its bits), so they give identical bits (tests/test_kernels_attn.c checks it). */
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/gemv.h"
#include "kernels/cpu/vexp.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define KV_ATTN_X86 1
#include <immintrin.h>
#else
#define KV_ATTN_X86 0
#endif

/* number of keys 0 .. n-1 visible to the query at position p in a cache of S positions */
static int attn_visible(int p, int S, kv_attn_mask mask) {
    int n = mask == KV_MASK_STRICT ? p : p + 1;
    return n < S ? n : S;
}

/* first key visible to the query at position p under a window of W positions (0: none): keys
 * s > p - W */
static int attn_first(int p, int W) { return W > 0 && p >= W ? p - W + 1 : 0; }

/* keys one query row of a call reads, at most: the positions up to the last query's (capped at
 * S), or the window (the threads' work estimate) */
static int attn_keys_per_row(int T, int pos0, int S, int W) {
    const int keys = S < pos0 + T ? S : pos0 + T;
    return W > 0 && W < keys ? W : keys;
}

/* row of k / v holding key s: s % R in a ring of R rows, s without one (R = 0) */
static inline int attn_row(int s, int ring) { return ring ? s % ring : s; }

/* BF16 bits -> F32 (exact: the BF16 value is the F32 with the low 16 mantissa bits zero) */
static inline float attn_widen(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* element i of a key/value row: F32 (b) or, when bf16, BF16 (bh); bf16 is a constant wherever
 * this is inlined, so the choice folds away and the loops stay vectorized */
#define ATTN_AT(bf16, b, bh, i) ((bf16) ? attn_widen((bh)[i]) : (b)[i])

/* 8 partial sums combined pairwise: ((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7)), the order of every
 * sum of the reference */
static inline float attn_pairwise8(const float part[8]) {
    return ((part[0] + part[1]) + (part[2] + part[3])) +
           ((part[4] + part[5]) + (part[6] + part[7]));
}

/* dot product of a with an F32 (b) or BF16 (bh) row, 8 running partial sums (vectorizable, fixed
 * order: both row types give the same result on the same values) */
static inline __attribute__((always_inline)) float attn_dot_row(const float *a, const float *b,
                                                                const uint16_t *bh, int bf16,
                                                                int n) {
    float part[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++) part[u] += a[i + u] * ATTN_AT(bf16, b, bh, i + u);
    float s = attn_pairwise8(part);
    for (; i < n; i++) s += a[i] * ATTN_AT(bf16, b, bh, i);
    return s;
}

static inline float attn_dot(const float *a, const float *b, int n) {
    return attn_dot_row(a, b, NULL, 0, n);
}

/* ar[d] = ar[d] * corr (corr != 1), then ar[d] += p * row[d] for the rows of one block: the
 * reference loops, and their AVX2 twins below */
static inline __attribute__((always_inline)) void attn_axpy_row(float *ar, float p, const float *b,
                                                                const uint16_t *bh, int bf16,
                                                                int n) {
    for (int d = 0; d < n; d++) ar[d] += p * ATTN_AT(bf16, b, bh, d);
}

/* 8 partial sums combined pairwise, then x's elements from i to n in order */
static inline float attn_sum8_finish(const float part[8], const float *x, int i, int n) {
    float s = attn_pairwise8(part);
    for (; i < n; i++) s += x[i];
    return s;
}

/* The sum of x [n] as the dot products sum: 8 running partial sums (lane u = element i % 8),
 * combined pairwise, then the last n % 8 in order */
static inline float attn_sum8(const float *x, int n) {
    float part[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++) part[u] += x[i + u];
    return attn_sum8_finish(part, x, i, n);
}

/* scores of keys b .. e-1 (at score + b - s0) replaced by their exps against the new max mb
 * (kv_expf: vexp.h), and their sum (attn_sum8); *corr = exp(m_old - mb) rescales what came
 * before (0 on the first block: m = -inf). The reference; the vector twins below give its bits. */
static inline float attn_block_exps(float *score, int s0, int b, int e, float m_old, float mb,
                                    float *corr) {
    *corr = kv_expf(m_old - mb);
    float *x = score + (b - s0);
    for (int i = 0; i < e - b; i++) x[i] = kv_expf(x[i] - mb);
    return attn_sum8(x, e - b);
}

#if KV_ATTN_X86
__attribute__((target("avx2"))) static inline __m256 attn_load8(const float *b, const uint16_t *bh,
                                                                int bf16, int i) {
    if (!bf16) return _mm256_loadu_ps(b + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)(bh + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* attn_dot_row's sums: lane u of one vector is part[u] */
__attribute__((target("avx2"))) static inline float attn_dot_row_avx2(const float *a,
                                                                      const float *b,
                                                                      const uint16_t *bh, int bf16,
                                                                      int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), attn_load8(b, bh, bf16, i)));
    float part[8];
    _mm256_storeu_ps(part, acc);
    float s = attn_pairwise8(part);
    for (; i < n; i++) s += a[i] * ATTN_AT(bf16, b, bh, i);
    return s;
}

__attribute__((target("avx2"))) static inline void attn_axpy_row_avx2(float *ar, float p,
                                                                      const float *b,
                                                                      const uint16_t *bh, int bf16,
                                                                      int n) {
    const __m256 pv = _mm256_set1_ps(p);
    int d = 0;
    for (; d + 8 <= n; d += 8)
        _mm256_storeu_ps(ar + d, _mm256_add_ps(_mm256_loadu_ps(ar + d),
                                               _mm256_mul_ps(pv, attn_load8(b, bh, bf16, d))));
    for (; d < n; d++) ar[d] += p * ATTN_AT(bf16, b, bh, d);
}

enum { ATTN_PF_KEYS = 16 }; /* keys ahead whose K rows the AVX2 row pass prefetches */

/* every 64-byte line of [p, p + bytes) towards L1 (a hint: no fault, no result) */
static inline void attn_prefetch(const void *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)p + o);
}

/* The weighted sum of a BF16 block of 64 dims reads V rows its scores pass fetched; the memory
 * would idle through it. Each of its keys s fetches the K row of key s + next_from instead (while
 * that is below next_end: 0 for none), the next block's keys past the ones the scores pass
 * fetches ATTN_PF_KEYS ahead. attention_bench, BF16 head by head from DRAM, the same binary with
 * and without it, the order alternating: time 0.939x at 1 thread (0.88-0.995 in 8 rounds), 0.983x
 * at 2; F32 rows (4 lines a key) gained nothing (1.014x, 1.026x) and go without (docs/RESULTS.md,
 * round 10). */
static inline void attn_prefetch_next_k(const uint16_t *kh, size_t st, int base, int ring, int key,
                                        int next_end) {
    if (key < next_end) attn_prefetch(kh + (size_t)attn_row(key - base, ring) * st, 64 * 2);
}

/* the pairwise combination of attn_dot_row for eight keys at once: a[u] holds key u's eight
 * partial sums; lane u of the result is ((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7)) of key u (hadd adds
 * neighbours, the last add joins the two 128-bit halves) */
__attribute__((target("avx2"))) static inline __m256 attn_hsum8(__m256 a0, __m256 a1, __m256 a2,
                                                                __m256 a3, __m256 a4, __m256 a5,
                                                                __m256 a6, __m256 a7) {
    const __m256 k0123 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m256 k4567 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(k0123, k4567, 0x20),
                         _mm256_permute2f128_ps(k0123, k4567, 0x31));
}

/* ar[0 .. 8 nv - 1] = ar * corr, then ar += p_s * row_s[d ..] for keys s = b .. e-1 in order
 * (p_s = score[s - b]; row s at attn_row(s - base, ring) * st of vf (F32) or vh (BF16)): nv
 * (a constant: 8, 4 or 1) accumulators of 8 dims stay in registers across the keys */
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) void attn_v_avx2(
    float *ar, const float *score, const float *vf, const uint16_t *vh, int bf16, int d, size_t st,
    int base, int ring, int b, int e, __m256 corrv, const int nv) {
    __m256 c[8];
#pragma GCC unroll 8
    for (int i = 0; i < nv; i++) c[i] = _mm256_mul_ps(_mm256_loadu_ps(ar + 8 * i), corrv);
    for (int s = b; s < e; s++) {
        const size_t at = (size_t)attn_row(s - base, ring) * st;
        const float *vr = bf16 ? NULL : vf + at;
        const uint16_t *vr16 = bf16 ? vh + at : NULL;
        const __m256 pv = _mm256_set1_ps(score[s - b]);
#pragma GCC unroll 8
        for (int i = 0; i < nv; i++)
            c[i] = _mm256_add_ps(c[i], _mm256_mul_ps(pv, attn_load8(vr, vr16, bf16, d + 8 * i)));
    }
#pragma GCC unroll 8
    for (int i = 0; i < nv; i++) _mm256_storeu_ps(ar + 8 * i, c[i]);
}

/* ar[0..63] = ar * corr, then ar += p_s * row_s for keys s = b .. e-1 in order (p_s =
 * score[s - b]; row s: BF16 at vh + attn_row(s - base, ring) * st): the reference's arithmetic,
 * with each 32-byte load of 16 BF16 widened by a shift (even dims) and a mask (odd dims), so the
 * accumulators hold dims d, d+2, .. and d+1, d+3, ..: de-interleaved on entry, interleaved back
 * on exit (the order of operations per dim is the reference's) */
__attribute__((target("avx2"))) static inline void attn_v64_bf16_avx2(
    float *ar, const float *score, const uint16_t *vh, size_t st, int base, int ring, int b, int e,
    __m256 corrv, const uint16_t *kh, int next_end) {
    __m256 ev[4], od[4];
    for (int c = 0; c < 4; c++) {
        const __m256 lo = _mm256_loadu_ps(ar + 16 * c), hi = _mm256_loadu_ps(ar + 16 * c + 8);
        /* [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6] -> quads 0 2 1 3: [lo0 lo2 lo4 lo6 hi0 hi2 hi4 hi6] */
        const __m256 e4 = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
        const __m256 o4 = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
        ev[c] = _mm256_mul_ps(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e4), 0xd8)),
                              corrv);
        od[c] = _mm256_mul_ps(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o4), 0xd8)),
                              corrv);
    }
    const __m256i odd_mask = _mm256_set1_epi32((int)0xffff0000u);
    const int next_from = e + ATTN_PF_KEYS - b;
    for (int s = b; s < e; s++) {
        const uint16_t *vr = vh + (size_t)attn_row(s - base, ring) * st;
        attn_prefetch_next_k(kh, st, base, ring, s + next_from, next_end);
        const __m256 pv = _mm256_set1_ps(score[s - b]);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            const __m256i r = _mm256_loadu_si256((const __m256i *)(vr + 16 * c));
            const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(r, 16));
            const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(r, odd_mask));
            ev[c] = _mm256_add_ps(ev[c], _mm256_mul_ps(pv, even));
            od[c] = _mm256_add_ps(od[c], _mm256_mul_ps(pv, odd));
        }
    }
    for (int c = 0; c < 4; c++) {
        /* back: quads 0 2 1 3 again, then pairs (even, odd) of each 128-bit half */
        const __m256 e4 = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev[c]), 0xd8));
        const __m256 o4 = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od[c]), 0xd8));
        _mm256_storeu_ps(ar + 16 * c, _mm256_unpacklo_ps(e4, o4));
        _mm256_storeu_ps(ar + 16 * c + 8, _mm256_unpackhi_ps(e4, o4));
    }
}

/* mb against the eight lanes of mbv (a group pass's running maxima) */
__attribute__((target("avx2"))) static inline float attn_max8(__m256 mbv, float mb) {
    float lane[8];
    _mm256_storeu_ps(lane, mbv);
    for (int u = 0; u < 8; u++)
        if (lane[u] > mb) mb = lane[u];
    return mb;
}

/* attn_sum8_finish of the partial sums in lanes 0-7 of acc */
__attribute__((target("avx2"))) static inline float attn_sum8_finish_avx2(__m256 acc,
                                                                          const float *x, int i,
                                                                          int n) {
    float part[8];
    _mm256_storeu_ps(part, acc);
    return attn_sum8_finish(part, x, i, n);
}

/* attn_block_exps, 8 keys at a time (the same bits) */
__attribute__((target("avx2,fma"))) static float attn_block_exps_avx2(float *score, int s0, int b,
                                                                      int e, float m_old, float mb,
                                                                      float *corr) {
    *corr = kv_expf(m_old - mb);
    float *x = score + (b - s0);
    const int n = e - b;
    const __m256 mbv = _mm256_set1_ps(mb);
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 p = kv_expf8_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), mbv));
        _mm256_storeu_ps(x + i, p);
        acc = _mm256_add_ps(acc, p);
    }
    for (int k = i; k < n; k++) x[k] = kv_expf(x[k] - mb);
    return attn_sum8_finish_avx2(acc, x, i, n);
}

/* the scores of keys s .. e-1 one at a time (fewer than a group left), mb carried on: rows as
 * attn_row_block_body's */
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) float attn_tail_scores(
    float *score, const float *qr, const float *kf, const uint16_t *kh, int bf16, size_t st,
    int base, int ring, int s0, int s, int e, int hd, float scale, float mb) {
    for (; s < e; s++) {
        const size_t at = (size_t)attn_row(s - base, ring) * st;
        const float x =
            attn_dot_row_avx2(qr, bf16 ? NULL : kf + at, bf16 ? kh + at : NULL, bf16, hd) * scale;
        score[s - s0] = x;
        if (x > mb) mb = x;
    }
    return mb;
}

/* one query row qr [hd] over keys b .. e-1 of the block starting at s0, for hd % 8 == 0: the
 * reference's per-row step (scores, running max, rescale, exp, weighted sum of values) with its
 * arithmetic in its order. Eight keys' dot products run interleaved; the row's accumulator stays
 * in registers across the keys, up to 64 dims at a time. Key s is row attn_row(s - base, ring) * st of
 * kf / vf (F32) or kh / vh (BF16); K rows are prefetched up to key pf_end - 1 (past the block when
 * the rows are the cache's, so the next block's first keys are on their way); the weighted sum
 * fetches K rows on up to key next_end - 1 (attn_prefetch_next_k). */
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) void
attn_row_block_body(float *ar, float *m, float *l, float *score, const float *qr, const float *kf,
                    const float *vf, const uint16_t *kh, const uint16_t *vh, int bf16, size_t st,
                    int base, int ring, int s0, int b, int e, int pf_end, int next_end, int hd,
                    float scale) {
    float mb = *m;
    __m256 mbv = _mm256_set1_ps(mb);
    const __m256 scalev = _mm256_set1_ps(scale);
    const size_t row_bytes = (size_t)hd * (bf16 ? sizeof(uint16_t) : sizeof(float));
    int s = b;
    for (; s + 8 <= e; s += 8) {
        /* the group's K rows; in decode the cache rows come from DRAM (the weights stream evicts
         * them), one head's row every pos_stride elements: fetch the K rows ATTN_PF_KEYS ahead and
         * this group's V rows */
        const float *kr[8] = {0};
        const uint16_t *kr16[8] = {0};
        for (int u = 0; u < 8; u++) {
            const size_t at = (size_t)attn_row(s + u - base, ring) * st;
            if (bf16) kr16[u] = kh + at;
            else kr[u] = kf + at;
            attn_prefetch(bf16 ? (const void *)(vh + at) : (const void *)(vf + at), row_bytes);
            if (s + u + ATTN_PF_KEYS < pf_end) {
                const size_t ak = (size_t)attn_row(s + u + ATTN_PF_KEYS - base, ring) * st;
                attn_prefetch(bf16 ? (const void *)(kh + ak) : (const void *)(kf + ak), row_bytes);
            }
        }
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
               a7 = a0;
        for (int i = 0; i < hd; i += 8) {
            const __m256 qv = _mm256_loadu_ps(qr + i);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(qv, attn_load8(kr[0], kr16[0], bf16, i)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(qv, attn_load8(kr[1], kr16[1], bf16, i)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(qv, attn_load8(kr[2], kr16[2], bf16, i)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(qv, attn_load8(kr[3], kr16[3], bf16, i)));
            a4 = _mm256_add_ps(a4, _mm256_mul_ps(qv, attn_load8(kr[4], kr16[4], bf16, i)));
            a5 = _mm256_add_ps(a5, _mm256_mul_ps(qv, attn_load8(kr[5], kr16[5], bf16, i)));
            a6 = _mm256_add_ps(a6, _mm256_mul_ps(qv, attn_load8(kr[6], kr16[6], bf16, i)));
            a7 = _mm256_add_ps(a7, _mm256_mul_ps(qv, attn_load8(kr[7], kr16[7], bf16, i)));
        }
        const __m256 x = _mm256_mul_ps(attn_hsum8(a0, a1, a2, a3, a4, a5, a6, a7), scalev);
        _mm256_storeu_ps(score + (s - s0), x);
        mbv = _mm256_max_ps(x, mbv); /* a NaN x keeps mbv, as "x > mb" does */
    }
    mb = attn_tail_scores(score, qr, kf, kh, bf16, st, base, ring, s0, s, e, hd, scale,
                          attn_max8(mbv, mb));
    float corr;
    const float lsum = attn_block_exps_avx2(score, s0, b, e, *m, mb, &corr);
    const __m256 corrv = _mm256_set1_ps(corr);
    int d = 0;
    if (bf16) /* the first 64 dims' pass fetches the next K rows */
        for (; d + 64 <= hd; d += 64, next_end = 0)
            attn_v64_bf16_avx2(ar + d, score + (b - s0), vh + d, st, base, ring, b, e, corrv, kh,
                               next_end);
    for (; d + 64 <= hd; d += 64)
        attn_v_avx2(ar + d, score + (b - s0), vf, vh, bf16, d, st, base, ring, b, e, corrv, 8);
    for (; d + 32 <= hd; d += 32)
        attn_v_avx2(ar + d, score + (b - s0), vf, vh, bf16, d, st, base, ring, b, e, corrv, 4);
    for (; d < hd; d += 8)
        attn_v_avx2(ar + d, score + (b - s0), vf, vh, bf16, d, st, base, ring, b, e, corrv, 1);
    *l = *l * corr + lsum;
    *m = mb;
}

/* the row pass for any rows (F32 or BF16, any stride, a ring or none) */
__attribute__((target("avx2"))) static void attn_row_block_avx2(
    float *ar, float *m, float *l, float *score, const float *qr, const float *kf, const float *vf,
    const uint16_t *kh, const uint16_t *vh, int bf16, size_t st, int base, int ring, int s0, int b,
    int e, int pf_end, int next_end, int hd, float scale) {
    attn_row_block_body(ar, m, l, score, qr, kf, vf, kh, vh, bf16, st, base, ring, s0, b, e, pf_end,
                        next_end, hd, scale);
}

/* the same for decode's usual rows: BF16, 64 dims, a head's rows back to back (the cache's
 * layout), no ring; the constants fold every key's row address into one pointer and an offset */
__attribute__((target("avx2"))) static void attn_row_block_bf16_64(
    float *ar, float *m, float *l, float *score, const float *qr, const uint16_t *kh,
    const uint16_t *vh, int base, int s0, int b, int e, int pf_end, int next_end, float scale) {
    attn_row_block_body(ar, m, l, score, qr, NULL, NULL, kh, vh, 1, 64, base, 0, s0, b, e, pf_end,
                        next_end, 64, scale);
}

/* ---- AVX-512F: the same rows (BF16, 64 dims, back to back, no ring) in 512-bit vectors. The dot
 * products hold two keys' eight partial sums per vector (lanes 0-7 key u, 8-15 key u + 1), the
 * weighted sum 32 dims per vector; every element sees the reference's operations in its order,
 * so the bits are attn_row_block_bf16_64's ---- */

/* q[i .. i+7] in both halves */
__attribute__((target("avx512f"))) static inline __m512 attn_q_twice(const float *q) {
    const __m256d h = _mm256_castps_pd(_mm256_loadu_ps(q));
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(h), h, 1));
}

/* dims i .. i+7 of the BF16 rows a (lanes 0-7) and b (lanes 8-15) as F32 */
__attribute__((target("avx512f"))) static inline __m512 attn_pair_bf16(const uint16_t *a,
                                                                       const uint16_t *b) {
    const __m256i h =
        _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                _mm_loadu_si128((const __m128i *)b), 1);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx512f"))) static inline __m256 attn_lo(__m512 v) {
    return _mm512_castps512_ps256(v);
}
__attribute__((target("avx512f"))) static inline __m256 attn_hi(__m512 v) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

/* attn_block_exps, 16 keys at a time (the same bits: the sum takes each 16 as two eights, in
 * order) */
__attribute__((target("avx512f"))) static float attn_block_exps_avx512(float *score, int s0, int b,
                                                                       int e, float m_old, float mb,
                                                                       float *corr) {
    *corr = kv_expf(m_old - mb);
    float *x = score + (b - s0);
    const int n = e - b;
    const __m512 mbv = _mm512_set1_ps(mb);
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 p = kv_expf16_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mbv));
        _mm512_storeu_ps(x + i, p);
        acc = _mm256_add_ps(_mm256_add_ps(acc, attn_lo(p)), attn_hi(p));
    }
    if (i < n) { /* the last n - i < 16, masked */
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        const __m512 p = kv_expf16_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), mbv));
        _mm512_mask_storeu_ps(x + i, k, p);
        if (i + 8 <= n) acc = _mm256_add_ps(acc, attn_lo(p)), i += 8;
    }
    return attn_sum8_finish_avx2(acc, x, i, n);
}

/* R query rows that read one kv head over the same keys of a block (R = 1, 2 or 4, a constant
 * where inlined: GQA's heads of one token, or one head's consecutive tokens in a prompt), each
 * K and V row loaded and widened once for all of them; each row's operations are those of the
 * row alone, in its order (the same bits for any R). Row r's accumulator is acc + 64 r, its
 * query q + q_step r, its scores score + KB r; the K and V prefetches run once. */

enum { KB_ROWS = 64 }; /* KB (below): the stride of the rows' score arrays */

/* ar[0..63] = ar * corr[r], then ar += p_s * row_s for keys s = b .. e-1 and each row's ar (p_s
 * of row r at score[KB_ROWS r + s - s0], row s at vh + (s - base) * 64): a 64-byte load is 32
 * dims, dword k holding dim 2k low and 2k + 1 high; a shift makes the even dims F32, a mask the
 * odd (accumulators of dims 0-31 and 32-63, evens and odds apart: de-interleaved on entry,
 * interleaved back on exit). Each key fetches the next block's K row (attn_prefetch_next_k). */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void
attn_v64_bf16_rows_avx512(const int R, float *acc, const float *score, int s0, const uint16_t *vh,
                          int base, int b, int e, const float *corr, const uint16_t *kh,
                          int next_end) {
    const __m512i even_of =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd_of =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i lo_of = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi_of =
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512i odd_mask = _mm512_set1_epi32((int)0xffff0000u);
    __m512 ev[4][2], od[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const __m512 corrv = _mm512_set1_ps(corr[r]);
        for (int c = 0; c < 2; c++) {
            const float *ar = acc + 64 * r + 32 * c;
            const __m512 lo = _mm512_loadu_ps(ar), hi = _mm512_loadu_ps(ar + 16);
            ev[r][c] = _mm512_mul_ps(_mm512_permutex2var_ps(lo, even_of, hi), corrv);
            od[r][c] = _mm512_mul_ps(_mm512_permutex2var_ps(lo, odd_of, hi), corrv);
        }
    }
    const int next_from = e + ATTN_PF_KEYS - b;
    for (int s = b; s < e; s++) {
        const uint16_t *vr = vh + (size_t)(s - base) * 64;
        attn_prefetch_next_k(kh, 64, base, 0, s + next_from, next_end);
        const __m512i r0 = _mm512_loadu_si512((const void *)vr),
                      r1 = _mm512_loadu_si512((const void *)(vr + 32));
        const __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(r0, 16)),
                     o0 = _mm512_castsi512_ps(_mm512_and_si512(r0, odd_mask)),
                     e1 = _mm512_castsi512_ps(_mm512_slli_epi32(r1, 16)),
                     o1 = _mm512_castsi512_ps(_mm512_and_si512(r1, odd_mask));
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m512 pv = _mm512_set1_ps(score[KB_ROWS * r + s - s0]);
            ev[r][0] = _mm512_add_ps(ev[r][0], _mm512_mul_ps(pv, e0));
            od[r][0] = _mm512_add_ps(od[r][0], _mm512_mul_ps(pv, o0));
            ev[r][1] = _mm512_add_ps(ev[r][1], _mm512_mul_ps(pv, e1));
            od[r][1] = _mm512_add_ps(od[r][1], _mm512_mul_ps(pv, o1));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 2; c++) {
            float *ar = acc + 64 * r + 32 * c;
            _mm512_storeu_ps(ar, _mm512_permutex2var_ps(ev[r][c], lo_of, od[r][c]));
            _mm512_storeu_ps(ar + 16, _mm512_permutex2var_ps(ev[r][c], hi_of, od[r][c]));
        }
}

/* dims i .. i+7 of the F32 rows a (lanes 0-7) and b (lanes 8-15) */
__attribute__((target("avx512f"))) static inline __m512 attn_pair_f32(const float *a,
                                                                      const float *b) {
    const __m256d lo = _mm256_castps_pd(_mm256_loadu_ps(a)),
                  hi = _mm256_castps_pd(_mm256_loadu_ps(b));
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(lo), hi, 1));
}

/* attn_v64_bf16_rows_avx512 for F32 rows (vf + (s - base) * 64): the accumulators in the rows'
 * order, no next-K prefetch (F32 rows gained nothing from it, round 10) */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void
attn_v64_f32_rows_avx512(const int R, float *acc, const float *score, int s0, const float *vf,
                         int base, int b, int e, const float *corr) {
    __m512 a[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        const __m512 corrv = _mm512_set1_ps(corr[r]);
        for (int c = 0; c < 4; c++)
            a[r][c] = _mm512_mul_ps(_mm512_loadu_ps(acc + 64 * r + 16 * c), corrv);
    }
    for (int s = b; s < e; s++) {
        const float *vr = vf + (size_t)(s - base) * 64;
        const __m512 v0 = _mm512_loadu_ps(vr), v1 = _mm512_loadu_ps(vr + 16),
                     v2 = _mm512_loadu_ps(vr + 32), v3 = _mm512_loadu_ps(vr + 48);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m512 pv = _mm512_set1_ps(score[KB_ROWS * r + s - s0]);
            a[r][0] = _mm512_add_ps(a[r][0], _mm512_mul_ps(pv, v0));
            a[r][1] = _mm512_add_ps(a[r][1], _mm512_mul_ps(pv, v1));
            a[r][2] = _mm512_add_ps(a[r][2], _mm512_mul_ps(pv, v2));
            a[r][3] = _mm512_add_ps(a[r][3], _mm512_mul_ps(pv, v3));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 4; c++) _mm512_storeu_ps(acc + 64 * r + 16 * c, a[r][c]);
}

/* attn_row_block_bf16_64 in 512-bit vectors for R rows (above), over BF16 rows (kh, vh) or, f32
 * (a constant where inlined), F32 rows (kf, vf): rows of 64 dims back to back from base */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void
attn_rows_block_64_avx512(const int R, const int f32, float *acc, float *m, float *l, float *score,
                          const float *q, size_t q_step, const float *kf, const float *vf,
                          const uint16_t *kh, const uint16_t *vh, int base, int s0, int b, int e,
                          int pf_end, int next_end, float scale) {
    const size_t row_bytes = f32 ? 64 * sizeof(float) : 64 * sizeof(uint16_t);
    __m512 q2[4][8];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        for (int c = 0; c < 8; c++) q2[r][c] = attn_q_twice(q + q_step * r + 8 * c);
    __m256 mbv[4];
    for (int r = 0; r < R; r++) mbv[r] = _mm256_set1_ps(m[r]);
    const __m256 scalev = _mm256_set1_ps(scale);
    int s = b;
    for (; s + 8 <= e; s += 8) {
        /* the group's 8 rows */
        const size_t at = (size_t)(s - base) * 64;
        const float *k = f32 ? kf + at : NULL;
        const uint16_t *k16 = f32 ? NULL : kh + at;
        attn_prefetch(f32 ? (const void *)(vf + at) : (const void *)(vh + at), 8 * row_bytes);
        if (s + ATTN_PF_KEYS < pf_end) /* the rows ATTN_PF_KEYS ahead, up to the last key */
            attn_prefetch(f32 ? (const void *)(k + ATTN_PF_KEYS * 64)
                              : (const void *)(k16 + ATTN_PF_KEYS * 64),
                          (size_t)(pf_end - s - ATTN_PF_KEYS < 8 ? pf_end - s - ATTN_PF_KEYS : 8) *
                              row_bytes);
        __m512 p[4][4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            for (int u = 0; u < 4; u++) p[r][u] = _mm512_setzero_ps();
        for (int c = 0; c < 8; c++) {
            const int i = 8 * c;
            const __m512 k01 = f32 ? attn_pair_f32(k + i, k + 64 + i)
                                   : attn_pair_bf16(k16 + i, k16 + 64 + i),
                         k23 = f32 ? attn_pair_f32(k + 128 + i, k + 192 + i)
                                   : attn_pair_bf16(k16 + 128 + i, k16 + 192 + i),
                         k45 = f32 ? attn_pair_f32(k + 256 + i, k + 320 + i)
                                   : attn_pair_bf16(k16 + 256 + i, k16 + 320 + i),
                         k67 = f32 ? attn_pair_f32(k + 384 + i, k + 448 + i)
                                   : attn_pair_bf16(k16 + 384 + i, k16 + 448 + i);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                p[r][0] = _mm512_add_ps(p[r][0], _mm512_mul_ps(q2[r][c], k01));
                p[r][1] = _mm512_add_ps(p[r][1], _mm512_mul_ps(q2[r][c], k23));
                p[r][2] = _mm512_add_ps(p[r][2], _mm512_mul_ps(q2[r][c], k45));
                p[r][3] = _mm512_add_ps(p[r][3], _mm512_mul_ps(q2[r][c], k67));
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256 x = _mm256_mul_ps(
                attn_hsum8(attn_lo(p[r][0]), attn_hi(p[r][0]), attn_lo(p[r][1]), attn_hi(p[r][1]),
                           attn_lo(p[r][2]), attn_hi(p[r][2]), attn_lo(p[r][3]), attn_hi(p[r][3])),
                scalev);
            _mm256_storeu_ps(score + KB_ROWS * r + (s - s0), x);
            mbv[r] = _mm256_max_ps(x, mbv[r]); /* a NaN x keeps mbv, as "x > mb" does */
        }
    }
    float corr[4], lsum[4], mb[4];
    for (int r = 0; r < R; r++) {
        mb[r] =
            attn_tail_scores(score + KB_ROWS * r, q + q_step * r, f32 ? kf : NULL, f32 ? NULL : kh,
                             !f32, 64, base, 0, s0, s, e, 64, scale, attn_max8(mbv[r], m[r]));
        lsum[r] = attn_block_exps_avx512(score + KB_ROWS * r, s0, b, e, m[r], mb[r], &corr[r]);
    }
    if (f32) attn_v64_f32_rows_avx512(R, acc, score, s0, vf, base, b, e, corr);
    else attn_v64_bf16_rows_avx512(R, acc, score, s0, vh, base, b, e, corr, kh, next_end);
    for (int r = 0; r < R; r++) {
        l[r] = l[r] * corr[r] + lsum[r];
        m[r] = mb[r];
    }
}

/* the pass for R = 4, 2, 1 rows of BF16 or F32, compiled apart; attn_rows_pass[f32][0, 1, 2] */
typedef void (*attn_rows_fn)(float *acc, float *m, float *l, float *score, const float *q,
                             size_t q_step, const float *kf, const float *vf, const uint16_t *kh,
                             const uint16_t *vh, int base, int s0, int b, int e, int pf_end,
                             int next_end, float scale);
#define ATTN_ROWS_FN(name, R, F32)                                                                 \
    __attribute__((target("avx512f"))) static void name(                                           \
        float *acc, float *m, float *l, float *score, const float *q, size_t q_step,               \
        const float *kf, const float *vf, const uint16_t *kh, const uint16_t *vh, int base,        \
        int s0, int b, int e, int pf_end, int next_end, float scale) {                             \
        attn_rows_block_64_avx512(R, F32, acc, m, l, score, q, q_step, kf, vf, kh, vh, base, s0,   \
                                  b, e, pf_end, next_end, scale);                                  \
    }
ATTN_ROWS_FN(attn_rows4_bf16, 4, 0)
ATTN_ROWS_FN(attn_rows2_bf16, 2, 0)
ATTN_ROWS_FN(attn_rows1_bf16, 1, 0)
ATTN_ROWS_FN(attn_rows4_f32, 4, 1)
ATTN_ROWS_FN(attn_rows2_f32, 2, 1)
ATTN_ROWS_FN(attn_rows1_f32, 1, 1)
#undef ATTN_ROWS_FN
static const attn_rows_fn attn_rows_pass[2][3] = {
    {attn_rows4_bf16, attn_rows2_bf16, attn_rows1_bf16},
    {attn_rows4_f32, attn_rows2_f32, attn_rows1_f32}};

#define ATTN_DOT(avx2, ...)  ((avx2) ? attn_dot_row_avx2(__VA_ARGS__) : attn_dot_row(__VA_ARGS__))
#define ATTN_AXPY(avx2, ...) ((avx2) ? attn_axpy_row_avx2(__VA_ARGS__) : attn_axpy_row(__VA_ARGS__))
#else
#define ATTN_DOT(avx2, ...)  attn_dot_row(__VA_ARGS__)
#define ATTN_AXPY(avx2, ...) attn_axpy_row(__VA_ARGS__)
#endif

enum { ROWS = 16, KB = 64 }; /* about ROWS query rows per work item, KB keys per block */
_Static_assert((int)KB == (int)KB_ROWS, "the GQA rows pass strides the score rows by KB");

typedef struct {
    float *out;
    const float *q, *k, *v;
    const uint16_t *k16, *v16; /* BF16 cache instead of k, v (both NULL for F32) */
    int T, pos0, S, nh, nkv, hd;
    kv_attn_mask mask;
    int window, ring; /* keys s > p - window (0: all); key s at row s % ring (0: row s) */
    /* elements from a key row to the next of a head, and from a head to the next
     * (kv_attention_strides) */
    size_t pos_stride, head_stride;
    int group; /* query heads per kv head */
    int tokens; /* tokens per work item; rows per item = tokens * group */
    int n_tblocks;
    float scale;
    size_t scratch_per_worker;
    int stage; /* BF16 rows widened once per block into scratch (portable loops, rows per item >= 4) */
    int avx512; /* rows of 64 dims by the AVX-512 rows pass (the BF16 matrix-vector choice) */
    float *scratch; /* per worker: acc [rows, hd], m [rows], l [rows], scores [rows, KB];
                         staging: then K, V of one block of head g as F32 [KB, hd] each */
} attn_job;

/* BF16 keys s0 .. e-1 of kv head g (rows attn_row(s, ring)) widened into blk [e-s0, hd] */
static void attn_stage(float *blk, const uint16_t *bf16, int s0, int e, int g, size_t pos_stride,
                       size_t head_stride, int hd, int ring) {
    for (int s = s0; s < e; s++) {
        const uint16_t *src =
            bf16 + (size_t)attn_row(s, ring) * pos_stride + (size_t)g * head_stride;
        float *dst = blk + (size_t)(s - s0) * hd;
        for (int d = 0; d < hd; d++) dst[d] = attn_widen(src[d]);
    }
}

#if KV_ATTN_X86
/* how many of an item's rows from r on (of rows, token t0 first) run together over block s0,
 * whose keys b .. e-1 row r reads: 4, 2 or 1. With GQA the heads of r's token (their queries hd
 * apart); with one head per kv head the next tokens while they read the same keys (queries a
 * token apart): in a prompt every block but the one holding their own positions. *q_step: the
 * elements from one row's query to the next's. */
static int attn_rows_together(const attn_job *j, int r, int rows, int t0, int s0, int b, int e,
                              size_t *q_step) {
    int n = 1;
    if (j->group > 1) {
        *q_step = (size_t)j->hd;
        n = j->group - r % j->group;
    } else {
        *q_step = (size_t)j->nh * j->hd;
        for (; n < 4 && r + n < rows; n++) {
            const int p = j->pos0 + t0 + r + n, n_vis = attn_visible(p, j->S, j->mask),
                      lo = attn_first(p, j->window);
            if ((s0 > lo ? s0 : lo) != b || (s0 + KB < n_vis ? s0 + KB : n_vis) != e) break;
        }
    }
    return n >= 4 ? 4 : n >= 2 ? 2 : 1;
}
#endif

/* item = (token block, kv head g): the rows are every query head reading g for every token of
 * the block, so each K/V block is loaded once for all of them */
static inline __attribute__((always_inline)) void attn_item_rows(const attn_job *j, int item,
                                                                 int worker, int bf16, int avx2) {
    const int hd = j->hd, g = item % j->nkv, tb = item / j->nkv, group = j->group;
    const int t0 = tb * j->tokens, t1 = t0 + j->tokens < j->T ? t0 + j->tokens : j->T;
    const int rows = (t1 - t0) * group;
    const size_t q_stride = (size_t)j->nh * hd;
    float *acc = j->scratch + (size_t)worker * j->scratch_per_worker;
    float *m = acc + (size_t)rows * hd, *l = m + rows, *score = l + rows; /* [rows, KB] */
    for (int r = 0; r < rows; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    for (size_t i = 0; i < (size_t)rows * hd; i++) acc[i] = 0.0f;
    const int s_end = attn_visible(j->pos0 + t1 - 1, j->S, j->mask); /* the last sees most */
    const int s_first = attn_first(j->pos0 + t0, j->window); /* the first sees the earliest */
    float *k_blk = score + (size_t)rows * KB, *v_blk = k_blk + (size_t)KB * hd;
    /* blocks aligned to multiples of KB whatever the window, so a row meets the same blocks in
     * any grouping (a block before a row's first key is skipped for it) */
    for (int s0 = s_first / KB * KB; s0 < s_end; s0 += KB) {
        /* row s of this block: F32 at kf/vf + (s - base) * st, or (bf16) BF16 at kh/vh + ... */
        const size_t head = (size_t)g * j->head_stride;
        const float *kf = j->k ? j->k + head : NULL, *vf = j->v ? j->v + head : NULL;
        const uint16_t *kh = j->k16 ? j->k16 + head : NULL, *vh = j->v16 ? j->v16 + head : NULL;
        size_t st = j->pos_stride;
        int base = 0, ring = j->ring;
        const int staged = !bf16 && j->stage;
        if (staged) {
            const int b = s0 > s_first ? s0 : s_first, e = s0 + KB < s_end ? s0 + KB : s_end;
            const size_t skip = (size_t)(b - s0) * hd; /* keys no row of the item sees */
            attn_stage(k_blk + skip, j->k16, b, e, g, j->pos_stride, j->head_stride, hd, ring);
            attn_stage(v_blk + skip, j->v16, b, e, g, j->pos_stride, j->head_stride, hd, ring);
            kf = k_blk, vf = v_blk, st = (size_t)hd, base = s0, ring = 0;
        }
        /* the block's first row to run fetches the next block's K rows (the others find them
         * cached): up to the item's last visible key (the portable loops, the only ones that
         * stage, fetch nothing) */
        int next_end = s_end;
        for (int r = 0; r < rows; r++) {
            const int t = t0 + r / group, h = g * group + r % group;
            const int n_vis = attn_visible(j->pos0 + t, j->S, j->mask);
            const int lo = attn_first(j->pos0 + t, j->window);
            const int b = s0 > lo ? s0 : lo, e = s0 + KB < n_vis ? s0 + KB : n_vis;
            if (e <= b) continue;
            const float *qr = j->q + (size_t)t * q_stride + (size_t)h * hd;
            const int next = next_end;
            next_end = 0;
#if KV_ATTN_X86
            /* rows of 64 dims back to back, AVX-512: 4, 2 or 1 at a time (attn_rows_together) */
            if (avx2 && j->avx512 && hd == 64 && st == 64 && !ring) {
                size_t q_step;
                const int R = attn_rows_together(j, r, rows, t0, s0, b, e, &q_step);
                attn_rows_pass[!bf16][R == 4   ? 0
                                      : R == 2 ? 1
                                               : 2](acc + (size_t)r * hd, m + r, l + r, score, qr,
                                                    q_step, kf, vf, kh, vh, base, s0, b, e, n_vis,
                                                    bf16 ? next : 0, j->scale);
                r += R - 1;
                continue;
            }
            if (avx2 && bf16 && hd == 64 && st == 64 && !ring) { /* decode's usual rows */
                attn_row_block_bf16_64(acc + (size_t)r * hd, m + r, l + r, score, qr, kh, vh, base,
                                       s0, b, e, n_vis, next, j->scale);
                continue;
            }
            if (avx2 && hd % 8 == 0) {
                attn_row_block_avx2(acc + (size_t)r * hd, m + r, l + r, score, qr, kf, vf, kh, vh,
                                    bf16, st, base, ring, s0, b, e, n_vis, next, hd, j->scale);
                continue;
            }
#endif
            (void)next;
            float mb = m[r];
            for (int s = b; s < e; s++) {
                const size_t at = (size_t)attn_row(s - base, ring) * st;
                float x =
                    ATTN_DOT(avx2, qr, bf16 ? NULL : kf + at, bf16 ? kh + at : NULL, bf16, hd) *
                    j->scale; /* only the row in use is offset: the other pointer is NULL */
                score[s - s0] = x;
                if (x > mb) mb = x;
            }
            float corr;
            const float lsum = attn_block_exps(score, s0, b, e, m[r], mb, &corr);
            float *ar = acc + (size_t)r * hd;
            for (int d = 0; d < hd; d++) ar[d] *= corr;
            for (int s = b; s < e; s++) {
                const float p = score[s - s0];
                const size_t at = (size_t)attn_row(s - base, ring) * st;
                const float *vs = bf16 ? NULL : vf + at;
                const uint16_t *vsh = bf16 ? vh + at : NULL;
                ATTN_AXPY(avx2, ar, p, vs, vsh, bf16, hd);
            }
            l[r] = l[r] * corr + lsum;
            m[r] = mb;
        }
    }
    for (int r = 0; r < rows; r++) {
        const int t = t0 + r / group, h = g * group + r % group;
        float *o = j->out + (size_t)t * q_stride + (size_t)h * hd;
        const float *ar = acc + (size_t)r * hd;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f; /* nothing visible: zero row */
        for (int d = 0; d < hd; d++) o[d] = ar[d] * inv;
    }
}

/* each compiled with its loads inlined: F32 rows (an F32 cache, or BF16 staged per block), and
 * BF16 rows widened as they are read (few rows per item: staging would not pay); C and AVX2 */
static void attn_item(void *ctx, int item, int worker) { attn_item_rows(ctx, item, worker, 0, 0); }
static void attn_item_bf16(void *ctx, int item, int worker) {
    attn_item_rows(ctx, item, worker, 1, 0);
}
#if KV_ATTN_X86
__attribute__((target("avx2"))) static void attn_item_avx2(void *ctx, int item, int worker) {
    attn_item_rows(ctx, item, worker, 0, 1);
}
__attribute__((target("avx2"))) static void attn_item_bf16_avx2(void *ctx, int item, int worker) {
    attn_item_rows(ctx, item, worker, 1, 1);
}
#else
#define attn_item_avx2      attn_item
#define attn_item_bf16_avx2 attn_item_bf16
#endif

int kv_attention_strides(int head_rows, int ring, int S, int n_kv_heads, int head_dim,
                         size_t *pos_stride, size_t *head_stride) {
    if (head_rows < 0 || (head_rows && head_rows < (ring ? ring : S))) return KV_EINVAL;
    *pos_stride = head_rows ? (size_t)head_dim : (size_t)n_kv_heads * head_dim;
    *head_stride = head_rows ? (size_t)head_rows * head_dim : (size_t)head_dim;
    return 0;
}

static int attention_run(attn_job j, int head_rows, int T, int pos0, int S, int n_heads,
                         int n_kv_heads, int head_dim) {
    if (j.window < 0 || j.ring < 0 || (j.ring && (!j.window || j.ring < j.window + T - 1)) ||
        kv_attention_strides(head_rows, j.ring, S, n_kv_heads, head_dim, &j.pos_stride,
                             &j.head_stride))
        return KV_EINVAL;
    j.T = T, j.pos0 = pos0, j.S = S, j.nh = n_heads, j.nkv = n_kv_heads, j.hd = head_dim;
    j.group = n_heads / n_kv_heads;
    j.scale = (float)(1.0 / sqrt((double)head_dim));
    j.tokens = ROWS / j.group > 0 ? ROWS / j.group : 1;
    j.n_tblocks = (T + j.tokens - 1) / j.tokens;
    const size_t rows = (size_t)j.tokens * j.group;
    const int avx2 = kv_gemv_isa_active() >= KV_GEMV_AVX2;
    /* Staging pays only where rows are read by the portable loops: the vector passes widen a BF16
     * row in registers (a shift and a mask) faster than attn_stage writes it out. Zen 5 VM,
     * 2026-12-07, one thread, the same bits either way (docs/RESULTS.md, round 11): decode at 512
     * keys, GQA 32/4, 64 dims: AVX-512 247 -> 123 us a layer, AVX2 248 -> 135; 32/8 of 128 dims
     * 628 -> 273 (AVX-512); prefill of 64 rows, MHA 12/12: AVX2 4.4 -> 3.0 ms, AVX-512 4.6 -> 2.6;
     * portable C 11.6 staged against 12.8 not. */
    j.stage = !avx2 && j.k16 && (size_t)(T < j.tokens ? T : j.tokens) * j.group >= 4;
    j.scratch_per_worker = rows * (head_dim + 2 + KB) + (j.stage ? 2 * (size_t)KB * head_dim : 0);
    const int n_items = j.n_tblocks * n_kv_heads;
    const double flops =
        4.0 * n_heads * (double)T * attn_keys_per_row(T, pos0, S, j.window) * head_dim;
    const int workers = kv_parallel_workers(n_items, flops);
    j.scratch = malloc(sizeof(float) * workers * j.scratch_per_worker);
    if (!j.scratch) return KV_ENOMEM;
    j.avx512 = avx2 && kv_gemv_isa_for(KV_BF16) >= KV_GEMV_AVX512;
    const int widen = j.k16 && !j.stage;
    kv_parallel_for(n_items, workers,
                    avx2 ? (widen ? attn_item_bf16_avx2 : attn_item_avx2)
                         : (widen ? attn_item_bf16 : attn_item),
                    &j);
    free(j.scratch);
    return 0;
}

int kv_attention_cache(float *out, const float *q, const void *k, const void *v,
                       kv_dtype cache_type, int head_rows, int T, int pos0, int S, int n_heads,
                       int n_kv_heads, int head_dim, kv_attn_mask mask, int window, int ring) {
    attn_job j = {.out = out, .q = q, .mask = mask, .window = window, .ring = ring};
    if (cache_type == KV_F32) j.k = k, j.v = v;
    else if (cache_type == KV_BF16) j.k16 = k, j.v16 = v;
    else return KV_EINVAL;
    return attention_run(j, head_rows, T, pos0, S, n_heads, n_kv_heads, head_dim);
}

int kv_attention(float *out, const float *q, const float *k, const float *v, int T, int pos0, int S,
                 int n_heads, int n_kv_heads, int head_dim, kv_attn_mask mask, int window,
                 int ring) {
    return kv_attention_cache(out, q, k, v, KV_F32, 0, T, pos0, S, n_heads, n_kv_heads, head_dim,
                              mask, window, ring);
}

int kv_attention_bf16(float *out, const float *q, const uint16_t *k, const uint16_t *v, int T,
                      int pos0, int S, int n_heads, int n_kv_heads, int head_dim, kv_attn_mask mask,
                      int window, int ring) {
    return kv_attention_cache(out, q, k, v, KV_BF16, 0, T, pos0, S, n_heads, n_kv_heads, head_dim,
                              mask, window, ring);
}

/* ---- backward ---------------------------------------------------------------------------
 * Work item = one kv head g: it owns dk/dv[:, g, :] and dq of the query heads reading g, so no
 * two threads write the same memory. Per query row, with P the recomputed probabilities:
 *   dP_s = dout . v_s;  dS_s = P_s (dP_s - sum_u P_u dP_u);
 *   dq += scale sum_s dS_s k_s;  dk_s += scale dS_s q;  dv_s += P_s dout. */

typedef struct {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v;
    int T, pos0, S, nh, nkv, hd;
    kv_attn_mask mask;
    int window; /* keys s > p - window (0: all) */
    float scale;
    float *scratch; /* per worker: p [S], dp [S] */
} attn_grad_job;

static void attn_grad_item(void *ctx, int g, int worker) {
    const attn_grad_job *j = ctx;
    const int hd = j->hd, group = j->nh / j->nkv;
    const size_t q_stride = (size_t)j->nh * hd, kv_stride = (size_t)j->nkv * hd;
    float *p = j->scratch + (size_t)worker * 2 * j->S, *dp = p + j->S;
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int t = 0; t < j->T; t++) {
            const int n = attn_visible(j->pos0 + t, j->S, j->mask);
            const int lo = attn_first(j->pos0 + t, j->window); /* keys lo .. n-1 */
            if (n <= lo) continue; /* zero output: no gradient flows */
            const size_t qoff = (size_t)t * q_stride + (size_t)h * hd;
            const float *qr = j->q + qoff, *go = j->dout + qoff;
            float mx = -INFINITY;
            for (int s = lo; s < n; s++) {
                p[s] = attn_dot(qr, j->k + (size_t)s * kv_stride + (size_t)g * hd, hd) * j->scale;
                if (p[s] > mx) mx = p[s];
            }
            double sum = 0.0;
            for (int s = lo; s < n; s++) {
                p[s] = kv_expf(p[s] - mx);
                sum += p[s];
            }
            const float inv = (float)(1.0 / sum);
            double pdp = 0.0;
            for (int s = lo; s < n; s++) {
                p[s] *= inv;
                dp[s] = attn_dot(go, j->v + (size_t)s * kv_stride + (size_t)g * hd, hd);
                pdp += (double)p[s] * dp[s];
            }
            float *dqr = j->dq ? j->dq + qoff : NULL;
            for (int s = lo; s < n; s++) {
                const size_t kvoff = (size_t)s * kv_stride + (size_t)g * hd;
                const float ds = p[s] * (dp[s] - (float)pdp) * j->scale;
                if (dqr) {
                    const float *ks = j->k + kvoff;
                    for (int d = 0; d < hd; d++) dqr[d] += ds * ks[d];
                }
                if (j->dk) {
                    float *dks = j->dk + kvoff;
                    for (int d = 0; d < hd; d++) dks[d] += ds * qr[d];
                }
                if (j->dv) {
                    float *dvs = j->dv + kvoff;
                    for (int d = 0; d < hd; d++) dvs[d] += p[s] * go[d];
                }
            }
        }
    }
}

int kv_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                          const float *k, const float *v, int T, int pos0, int S, int n_heads,
                          int n_kv_heads, int head_dim, kv_attn_mask mask, int window) {
    if (!dq && !dk && !dv) return 0;
    if (window < 0) return KV_EINVAL;
    attn_grad_job j = {.dq = dq,
                       .dk = dk,
                       .dv = dv,
                       .dout = dout,
                       .q = q,
                       .k = k,
                       .v = v,
                       .T = T,
                       .pos0 = pos0,
                       .S = S,
                       .nh = n_heads,
                       .nkv = n_kv_heads,
                       .hd = head_dim,
                       .mask = mask,
                       .window = window,
                       .scale = (float)(1.0 / sqrt((double)head_dim))};
    const double flops =
        8.0 * n_heads * (double)T * attn_keys_per_row(T, pos0, S, window) * head_dim;
    const int workers = kv_parallel_workers(n_kv_heads, flops);
    j.scratch = malloc(sizeof(float) * (size_t)workers * 2 * (size_t)(S > 0 ? S : 1));
    if (!j.scratch) return KV_ENOMEM;
    kv_parallel_for(n_kv_heads, workers, attn_grad_item, &j);
    free(j.scratch);
    return 0;
}
