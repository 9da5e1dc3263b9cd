/* exp for the CPU kernels' softmax (attention) and SwiGLU: one definition in plain C, the
 * reference, and its AVX2 and AVX-512 twins, which run the same operations in the same order
 * (a fused multiply-add wherever the C calls fmaf, correctly rounded in both), so every variant
 * gives the same bits on every input, on any libm.
 *
 * exp(x) = 2^n e^r: n = x / ln 2 rounded to nearest (even), r = x - n ln 2 in two steps (ln 2's
 * leading bits, then the rest), e^r by a degree-6 polynomial on |r| <= ln 2 / 2 (Cephes' expf
 * coefficients), 2^n applied as two normal powers of two (n split in halves), so results in the
 * subnormal range are rounded once, by the last multiply. At most 2 ulp from the exact value on
 * normal results (tests/test_kernels.c sweeps it against exp in double). x below KV_EXP_LO gives
 * 0 (exp < 2^-150: rounds to 0), above KV_EXP_HI +inf, NaN itself. */
#ifndef KV_CPU_VEXP_H
#define KV_CPU_VEXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define KV_EXP_LO     (-104.0f)
#define KV_EXP_HI     88.7228394f /* ln(FLT_MAX) rounded up */
#define KV_EXP_LOG2E  1.44269504f
#define KV_EXP_ROUND  12582912.0f /* 1.5 * 2^23: x + it - it rounds x to an integer */
#define KV_EXP_LN2_HI 0.693359375f /* 9 bits: n * it is exact */
#define KV_EXP_LN2_LO (-2.12194440e-4f)
#define KV_EXP_P0     1.9875691500e-4f
#define KV_EXP_P1     1.3981999507e-3f
#define KV_EXP_P2     8.3334519073e-3f
#define KV_EXP_P3     4.1665795894e-2f
#define KV_EXP_P4     1.6666665459e-1f
#define KV_EXP_P5     5.0000001201e-1f

/* 2^k as an F32, for k in [-126, 127] */
static inline float kv_exp2i(int32_t k) {
    const uint32_t bits = (uint32_t)(k + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float kv_expf(float x) {
    if (x != x) return x;
    if (x < KV_EXP_LO) return 0.0f;
    if (x > KV_EXP_HI) return INFINITY;
    const float n = fmaf(x, KV_EXP_LOG2E, KV_EXP_ROUND) - KV_EXP_ROUND; /* [-150, 128] */
    float r = fmaf(n, -KV_EXP_LN2_HI, x);
    r = fmaf(n, -KV_EXP_LN2_LO, r);
    float p = KV_EXP_P0;
    p = fmaf(p, r, KV_EXP_P1);
    p = fmaf(p, r, KV_EXP_P2);
    p = fmaf(p, r, KV_EXP_P3);
    p = fmaf(p, r, KV_EXP_P4);
    p = fmaf(p, r, KV_EXP_P5);
    const float y = fmaf(p, r * r, r) + 1.0f;
    /* n = n1 + n2, both in [-75, 64]: n1 = floor(n / 2) (shifted positive first) */
    const int32_t ni = (int32_t)n, n1 = ((ni + 256) >> 1) - 128, n2 = ni - n1;
    return y * kv_exp2i(n1) * kv_exp2i(n2);
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* kv_expf of each lane */
__attribute__((target("avx2,fma"))) static inline __m256 kv_expf8_avx2(__m256 x) {
    const __m256 lo = _mm256_set1_ps(KV_EXP_LO), hi = _mm256_set1_ps(KV_EXP_HI);
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi); /* NaN lanes: hi (replaced) */
    const __m256 round = _mm256_set1_ps(KV_EXP_ROUND);
    const __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(KV_EXP_LOG2E), round), round);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-KV_EXP_LN2_HI), xc);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-KV_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(KV_EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KV_EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KV_EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KV_EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KV_EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KV_EXP_P5));
    const __m256 y =
        _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i ni = _mm256_cvtps_epi32(n), bias = _mm256_set1_epi32(127);
    const __m256i n1 = _mm256_sub_epi32(
        _mm256_srai_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(256)), 1), _mm256_set1_epi32(128));
    const __m256i n2 = _mm256_sub_epi32(ni, n1);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    __m256 e = _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
    e = _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    e = _mm256_blendv_ps(e, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    return _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

__attribute__((target("avx512f"))) static inline __m512 kv_expf16_avx512(__m512 x) {
    const __m512 lo = _mm512_set1_ps(KV_EXP_LO), hi = _mm512_set1_ps(KV_EXP_HI);
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    const __m512 round = _mm512_set1_ps(KV_EXP_ROUND);
    const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(KV_EXP_LOG2E), round), round);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-KV_EXP_LN2_HI), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-KV_EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(KV_EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KV_EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KV_EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KV_EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KV_EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KV_EXP_P5));
    const __m512 y =
        _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i ni = _mm512_cvtps_epi32(n), bias = _mm512_set1_epi32(127);
    const __m512i n1 = _mm512_sub_epi32(
        _mm512_srai_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(256)), 1), _mm512_set1_epi32(128));
    const __m512i n2 = _mm512_sub_epi32(ni, n1);
    const __m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
    const __m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
    __m512 e = _mm512_mul_ps(_mm512_mul_ps(y, s1), s2);
    e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), _mm512_setzero_ps());
    e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}
#endif

#endif
