/* Linear layers on OpenBLAS: out = x @ W^T (+ bias), W in HF [out, in] layout, and its gradients.
 *
 * OpenBLAS runs single-threaded. A matrix product with more than one worker is cut into one
 * block of rows of its output per worker (row-major; OpenBLAS's N), each a multiple of
 * ROW_ALIGN rows but the last, run on the kernels' pool (kv_parallel_for), one OpenBLAS call per
 * block. Under OpenBLAS's Haswell kernels (OPENBLAS_CORETYPE=Haswell, as the tests and CI run)
 * such a cut leaves every output's bits those of one unsplit call, so they do not depend on the
 * thread count (tests/test_kernels.c checks it); cutting at other rows, or cutting the columns,
 * changes bits, and other OpenBLAS kernels may block differently. With OpenBLAS's own threads
 * prefill's bits did depend on the thread count, and after each threaded call its threads spin
 * on sched_yield for about 2^28 cycles (its THREAD_TIMEOUT, about 0.1 s), which on a machine
 * with as many cores as kernel threads took that time from the decode steps after a prefill.
 * The cuts fall at the multiples of ROW_ALIGN nearest to equal shares: 512 rows on 2 workers
 * are 252 + 260 (at multiples of 48, as before, 240 + 272: 6% apart). An ad-hoc check kept
 * the bits in all of 270 random shapes (the three products below, m up to 2112, n up to 2063, k
 * up to 6047) at cuts at multiples of 12; cuts at the other multiples of 4 up to 52 changed them.
 * Matrix-vector products and rank-one updates (T = 1, rare here: decode has its own kernels)
 * are single calls. */
#include "kernels/kernels.h"

#include <cblas.h>
#include <pthread.h>
#include <string.h>

enum { ROW_ALIGN = KV_GEMM_ROW_ALIGN };

enum { MAX_CUTS = 257 }; /* workers + 1 (kernels' thread cap + 1) */

/* C[m, n] (+)= op(A)[m, k] @ op(B)[k, n], row-major; item i: rows cut[i] .. cut[i + 1] - 1 of C */
typedef struct {
    CBLAS_TRANSPOSE ta, tb;
    int m, n, k, lda, ldb, ldc;
    int cut[MAX_CUTS];
    const float *a, *b;
    float *c;
    float beta;
} gemm_job;

static void gemm_rows(void *ctx, int item, int worker) {
    (void)worker;
    const gemm_job *j = ctx;
    const int r0 = j->cut[item], m = j->cut[item + 1] - r0;
    const float *a = j->a + (j->ta == CblasNoTrans ? (size_t)r0 * j->lda : (size_t)r0);
    cblas_sgemm(CblasRowMajor, j->ta, j->tb, m, j->n, j->k, 1.0f, a, j->lda, j->b, j->ldb, j->beta,
                j->c + (size_t)r0 * j->ldc, j->ldc);
}

/* OpenBLAS held to one thread before its first use here (once, whichever thread comes first;
 * the others wait for it) */
static pthread_once_t blas_single_once = PTHREAD_ONCE_INIT;
static void blas_single_set(void) { openblas_set_num_threads(1); }
static void blas_single(void) { pthread_once(&blas_single_once, blas_single_set); }

/* C = op(A) @ op(B) + beta C as cblas_sgemm (row-major, alpha 1), on the kernel threads */
static void gemm_par(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, const float *a,
                     int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    if (m <= 0) return;
    blas_single();
    gemm_job j = {.ta = ta,
                  .tb = tb,
                  .m = m,
                  .n = n,
                  .k = k,
                  .lda = lda,
                  .ldb = ldb,
                  .ldc = ldc,
                  .a = a,
                  .b = b,
                  .c = c,
                  .beta = beta};
    const int blocks = (m + ROW_ALIGN - 1) / ROW_ALIGN;
    int workers = kv_parallel_workers(blocks, 2.0 * m * (double)n * k);
    if (workers > MAX_CUTS - 1) workers = MAX_CUTS - 1;
    kv_row_cuts(j.cut, m, workers, ROW_ALIGN);
    kv_parallel_for(workers, workers, gemm_rows, &j);
}

void kv_row_cuts(int *cut, int m, int parts, int align) {
    cut[0] = 0;
    for (int i = 1; i < parts; i++) {
        const double share = (double)m * i / parts; /* rows before part i at equal shares */
        int c = (int)(share / align + 0.5) * align;
        /* no empty part; the last may be short of align */
        const int lo = cut[i - 1] + align, hi = (m - 1 - (parts - i - 1) * align) / align * align;
        cut[i] = c < lo ? lo : c > hi ? hi : c;
    }
    cut[parts] = m;
}

/* out[T, n_out] (rows ld_out apart) = x @ W^T + beta * out */
static void gemm_xwt(float *out, int ld_out, const float *x, const float *W, int T, int n_in,
                     int n_out, float beta) {
    if (T == 1) {
        blas_single();
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n_out, n_in, 1.0f, W, n_in, x, 1, beta, out, 1);
    } else {
        gemm_par(CblasNoTrans, CblasTrans, T, n_out, n_in, x, n_in, W, n_in, beta, out, ld_out);
    }
}

static void add_bias(float *out, const float *bias, int T, int n_out) {
    for (int t = 0; t < T; t++) {
        float *row = out + (size_t)t * n_out;
        for (int o = 0; o < n_out; o++) row[o] += bias[o];
    }
}

void kv_matmul_strided(float *out, int ld_out, const float *x, const float *W, const float *bias,
                       int T, int n_in, int n_out) {
    if (bias) {
        for (int t = 0; t < T; t++) memcpy(out + (size_t)t * ld_out, bias, sizeof(float) * n_out);
        gemm_xwt(out, ld_out, x, W, T, n_in, n_out, 1.0f);
    } else {
        gemm_xwt(out, ld_out, x, W, T, n_in, n_out, 0.0f);
    }
}

void kv_matmul_serial(float *out, int ld_out, const float *x, const float *W, const float *bias,
                      int T, int n_in, int n_out) {
    if (T <= 0) return;
    blas_single();
    if (bias)
        for (int t = 0; t < T; t++) memcpy(out + (size_t)t * ld_out, bias, sizeof(float) * n_out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n_out, n_in, 1.0f, x, n_in, W, n_in,
                bias ? 1.0f : 0.0f, out, ld_out);
}

void kv_matmul(float *out, const float *x, const float *W, const float *bias, int T, int n_in,
               int n_out) {
    kv_matmul_strided(out, n_out, x, W, bias, T, n_in, n_out);
}

void kv_matmul_acc(float *out, const float *x, const float *W, const float *bias, int T, int n_in,
                   int n_out) {
    gemm_xwt(out, n_out, x, W, T, n_in, n_out, 1.0f);
    if (bias) add_bias(out, bias, T, n_out);
}

void kv_matmul_backward(float *dx, float *dW, float *dbias, const float *dout, const float *x,
                        const float *W, int T, int n_in, int n_out) {
    if (T == 1) blas_single();
    if (dx) {
        if (T == 1) /* dx[n_in] += W^T dout */
            cblas_sgemv(CblasRowMajor, CblasTrans, n_out, n_in, 1.0f, W, n_in, dout, 1, 1.0f, dx,
                        1);
        else /* dx[T, n_in] += dout[T, n_out] @ W[n_out, n_in] */
            gemm_par(CblasNoTrans, CblasNoTrans, T, n_in, n_out, dout, n_out, W, n_in, 1.0f, dx,
                     n_in);
    }
    if (dW) {
        if (T == 1) /* dW += dout x^T (rank one) */
            cblas_sger(CblasRowMajor, n_out, n_in, 1.0f, dout, 1, x, 1, dW, n_in);
        else /* dW[n_out, n_in] += dout^T @ x */
            gemm_par(CblasTrans, CblasNoTrans, n_out, n_in, T, dout, n_out, x, n_in, 1.0f, dW,
                     n_in);
    }
    if (dbias) {
        for (int o = 0; o < n_out; o++) {
            double s = 0.0;
            for (int t = 0; t < T; t++) s += dout[(size_t)t * n_out + o];
            dbias[o] += (float)s;
        }
    }
}
