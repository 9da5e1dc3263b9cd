/* Linear layers on OpenBLAS: out = x @ W^T (+ bias), W in HF [out, in] layout, and its gradients. */
#include "kernels/kernels.h"

#include <cblas.h>
#include <string.h>

/* out[T, n_out] = x @ W^T + beta * out */
static void gemm_xwt(float *out, const float *x, const float *W, int T, int n_in, int n_out,
                     float beta) {
    if (T == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n_out, n_in, 1.0f, W, n_in, x, 1, beta, out, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n_out, n_in, 1.0f, x, n_in, W, n_in,
                    beta, out, n_out);
}

static void add_bias(float *out, const float *bias, int T, int n_out) {
    for (int t = 0; t < T; t++) {
        float *row = out + (size_t)t * n_out;
        for (int o = 0; o < n_out; o++) row[o] += bias[o];
    }
}

void kv_matmul(float *out, const float *x, const float *W, const float *bias, int T, int n_in,
               int n_out) {
    if (bias) {
        for (int t = 0; t < T; t++) memcpy(out + (size_t)t * n_out, bias, sizeof(float) * n_out);
        gemm_xwt(out, x, W, T, n_in, n_out, 1.0f);
    } else {
        gemm_xwt(out, x, W, T, n_in, n_out, 0.0f);
    }
}

void kv_matmul_acc(float *out, const float *x, const float *W, const float *bias, int T, int n_in,
                   int n_out) {
    gemm_xwt(out, x, W, T, n_in, n_out, 1.0f);
    if (bias) add_bias(out, bias, T, n_out);
}

void kv_matmul_backward(float *dx, float *dW, float *dbias, const float *dout, const float *x,
                        const float *W, int T, int n_in, int n_out) {
    if (dx) {
        if (T == 1) /* dx[n_in] += W^T dout */
            cblas_sgemv(CblasRowMajor, CblasTrans, n_out, n_in, 1.0f, W, n_in, dout, 1, 1.0f, dx,
                        1);
        else /* dx[T, n_in] += dout[T, n_out] @ W[n_out, n_in] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, n_in, n_out, 1.0f, dout,
                        n_out, W, n_in, 1.0f, dx, n_in);
    }
    if (dW) {
        if (T == 1) /* dW += dout x^T (rank one) */
            cblas_sger(CblasRowMajor, n_out, n_in, 1.0f, dout, 1, x, 1, dW, n_in);
        else /* dW[n_out, n_in] += dout^T @ x */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n_out, n_in, T, 1.0f, dout, n_out,
                        x, n_in, 1.0f, dW, n_in);
    }
    if (dbias) {
        for (int o = 0; o < n_out; o++) {
            double s = 0.0;
            for (int t = 0; t < T; t++) s += dout[(size_t)t * n_out + o];
            dbias[o] += (float)s;
        }
    }
}
