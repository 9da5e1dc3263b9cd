/* SwiGLU and softmax-family kernels. */
#include "kernels/kernels.h"

#include <math.h>

#include "kernels/cpu/gemv.h"
#include "kernels/cpu/vexp.h"

/* exp by kv_expf (vexp.h), the same bits in every variant */
static inline float sigmoidf(float g) { return 1.0f / (1.0f + kv_expf(-g)); }

/* the reference: h = g sigmoid(g) up, rounded op by op in this order */
static void swiglu_c(float *h, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float g = gate[i];
        h[i] = g * sigmoidf(g) * up[i];
    }
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
/* swiglu_c 8 at a time (the same operations: the division is IEEE's in both) */
__attribute__((target("avx2,fma"))) static void swiglu_avx2(float *h, const float *gate,
                                                            const float *up, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 sg =
            _mm256_div_ps(one, _mm256_add_ps(one, kv_expf8_avx2(_mm256_xor_ps(g, sign))));
        _mm256_storeu_ps(h + i, _mm256_mul_ps(_mm256_mul_ps(g, sg), _mm256_loadu_ps(up + i)));
    }
    swiglu_c(h + i, gate + i, up + i, n - i);
}
#endif

void kv_swiglu(float *h, const float *gate, const float *up, size_t n) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    if (kv_gemv_isa_active() >= KV_GEMV_AVX2) {
        swiglu_avx2(h, gate, up, n);
        return;
    }
#endif
    swiglu_c(h, gate, up, n);
}

/* silu'(g) = sig(g) * (1 + g * (1 - sig(g))) */
void kv_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate,
                        const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float g = gate[i], sg = sigmoidf(g);
        if (dgate) dgate[i] += dh[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
        if (dup) dup[i] += dh[i] * g * sg;
    }
}

static float row_max(const float *x, int n) {
    float m = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > m) m = x[i];
    return m;
}

/* log(sum exp(x)) in double */
static double logsumexp(const float *x, int n) {
    const double m = row_max(x, n);
    double s = 0.0;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - m);
    return m + log(s);
}

void kv_softmax(float *x, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * n;
        const float m = row_max(xr, n);
        double s = 0.0;
        for (int i = 0; i < n; i++) {
            xr[i] = expf(xr[i] - m);
            s += xr[i];
        }
        const float inv = (float)(1.0 / s);
        for (int i = 0; i < n; i++) xr[i] *= inv;
    }
}

void kv_log_softmax(float *out, const float *x, int n) {
    const double lse = logsumexp(x, n);
    for (int i = 0; i < n; i++) out[i] = (float)((double)x[i] - lse);
}

double kv_cross_entropy(const float *logits, int vocab, int target) {
    return logsumexp(logits, vocab) - (double)logits[target];
}
