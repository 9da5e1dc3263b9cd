// Linear layer on cuBLAS (the shared handle lives here) plus a bias kernel.
#include <cublas_v2.h>

#include "kernels/cuda/cuda_util.h"

static cublasHandle_t blas;

extern "C" int kv_cuda_init(kv_error *err) {
    if (blas) return 0;
    if (kv_cuda_device_count() <= 0) return kv_fail(err, KV_EUNSUPPORTED, "cuda: no CUDA device");
    cudaError_t e = cudaSetDevice(0);
    if (e != cudaSuccess)
        return kv_fail(err, KV_EUNSUPPORTED, "cuda: device 0: %s", cudaGetErrorString(e));
    cublasStatus_t s = cublasCreate(&blas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        blas = NULL;
        return kv_fail(err, KV_EIO, "cublas: creating a handle: %s", cublasGetStatusString(s));
    }
    cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH); // plain FP32, no TF32
    return 0;
}

extern "C" void kv_cuda_shutdown(void) {
    if (blas) cublasDestroy(blas);
    blas = NULL;
}

__global__ void add_bias_kernel(float *out, const float *bias, size_t n, int n_out) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] += bias[i % n_out];
}

// Row-major out[T, n_out] = x[T, n_in] W[n_out, n_in]^T is, read column-major,
// out^T (n_out x T) = op(W^T as stored: n_in x n_out)^T * x^T (n_in x T): gemm(T, N).
extern "C" int kv_cuda_matmul(float *out, const float *x, const float *W, const float *bias,
                              int T, int n_in, int n_out, int accumulate, kv_error *err) {
    int rc = kv_cuda_init(err);
    if (rc) return rc;
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t s = cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, T, n_in, &one, W, n_in,
                                   x, n_in, &beta, out, n_out);
    if (s != CUBLAS_STATUS_SUCCESS)
        return kv_fail(err, KV_EIO, "cublas: sgemm %dx%d by %dx%d: %s", T, n_in, n_out, n_in,
                       cublasGetStatusString(s));
    if (bias) {
        const size_t n = (size_t)T * n_out;
        size_t blocks = (n + KV_CUDA_BLOCK - 1) / KV_CUDA_BLOCK;
        add_bias_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), KV_CUDA_BLOCK>>>(out, bias,
                                                                                       n, n_out);
        return kv_cuda_check_launch("matmul bias", err);
    }
    return 0;
}
