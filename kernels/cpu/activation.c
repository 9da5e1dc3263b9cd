/* SwiGLU and softmax-family kernels. */
#include "kernels/kernels.h"

#include <math.h>

static inline float sigmoidf(float g) { return 1.0f / (1.0f + expf(-g)); }

void kv_swiglu(float *h, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float g = gate[i];
        h[i] = g * sigmoidf(g) * up[i];
    }
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
