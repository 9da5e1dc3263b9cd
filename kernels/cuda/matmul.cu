// Linear layers, twin of kernels/cpu/matmul.c (and of the BF16-weight matmul in backend_cpu.c):
// out[T, n_out] (+)= x[T, n_in] @ W[n_out, n_in]^T + bias, and its gradients.
//
//  T == 1 (decode): matvec_kernel, one warp per output row, W read once (F32 or BF16, widened in
//    registers), x stays F32, F32 sums.
//  T > 1, F32 W: cublasGemmEx, all types CUDA_R_32F, CUBLAS_COMPUTE_32F (true FP32: the handle's
//    math mode is CUBLAS_DEFAULT_MATH, so no TF32).
//  T == 1, F16 W: the same kernel, halves widened by __half2float (exact).
//  T > 1, F16 W: x is not rounded to F16 (its range ends at 65504, activations can pass it): blocks
//    of W's rows are widened to F32 into scratch (exact) and multiplied by FP32 GemmEx, as the CPU
//    does for BF16 and F16.
//  T > 1, BF16 W: cublasGemmEx takes A and B of one type, so x is rounded to BF16 (nearest even)
//    into scratch: A = W CUDA_R_16BF, B = x CUDA_R_16BF, C = out CUDA_R_32F, CUBLAS_COMPUTE_32F
//    (tensor cores, FP32 accumulation). Rounding x costs about 2^-9 relative per product: the
//    parity cases allow for it (the CPU widens W and keeps x F32).
//  Backward (W is F32): two FP32 GemmEx with beta = 1 (the gradients add), dbias by a column-sum
//    kernel in double.
#include <cuda_fp16.h>
#include <type_traits>
#include <stdio.h>

#include "kernels/cuda/kv_cuda.h"

// Row-major out[T, n_out] = x[T, n_in] W[n_out, n_in]^T read column-major is
// out^T (n_out x T) = W^T' (W as stored is n_in x n_out, ld n_in; op T) * x^T (n_in x T, ld n_in).

#define MV_WARPS 8

__device__ __forceinline__ float mv_ld(const float *w, size_t i) { return w[i]; }
__device__ __forceinline__ float mv_ld(const uint16_t *w, size_t i) { return kv_bf16_widen(w[i]); }
__device__ __forceinline__ float mv_ld(const __half *w, size_t i) { return __half2float(w[i]); }

// a . (8 halves packed in p): the F16 twin of the BF16 sums below
__device__ __forceinline__ float mv_dot8(const float4 a, const float4 c, const uint4 p) {
    const __half2 *h = (const __half2 *)&p;
    const float2 f0 = __half22float2(h[0]), f1 = __half22float2(h[1]), f2 = __half22float2(h[2]),
                 f3 = __half22float2(h[3]);
    return a.x * f0.x + a.y * f0.y + a.z * f1.x + a.w * f1.y + c.x * f2.x + c.y * f2.y +
           c.z * f3.x + c.w * f3.y;
}

// vec: rows start 16-byte aligned and n_in is a multiple of 8 (BF16, F16) / 4 (F32)
template <typename WT, bool vec>
__global__ void matvec_kernel(float *out, const float *x, const WT *W, const float *bias, int n_in,
                              int n_out, int accumulate) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * MV_WARPS + warp;
    if (row >= n_out) return; // warp-uniform
    const WT *w = W + (size_t)row * n_in;
    float s = 0.0f;
    if (vec && std::is_same<WT, __half>::value) {
        const uint4 *w8 = (const uint4 *)w;
        const float4 *x4 = (const float4 *)x;
        for (int i = lane; i < n_in / 8; i += 32) s += mv_dot8(x4[2 * i], x4[2 * i + 1], w8[i]);
    } else if (vec && sizeof(WT) == 2) {
        const uint4 *w8 = (const uint4 *)w;
        const float4 *x4 = (const float4 *)x;
        for (int i = lane; i < n_in / 8; i += 32) {
            const uint4 p = w8[i];
            const float4 a = x4[2 * i], c = x4[2 * i + 1];
            s += a.x * __uint_as_float(p.x << 16) + a.y * __uint_as_float(p.x & 0xffff0000u) +
                 a.z * __uint_as_float(p.y << 16) + a.w * __uint_as_float(p.y & 0xffff0000u) +
                 c.x * __uint_as_float(p.z << 16) + c.y * __uint_as_float(p.z & 0xffff0000u) +
                 c.z * __uint_as_float(p.w << 16) + c.w * __uint_as_float(p.w & 0xffff0000u);
        }
    } else if (vec) {
        const float4 *w4 = (const float4 *)w, *x4 = (const float4 *)x;
        for (int i = lane; i < n_in / 4; i += 32) {
            const float4 p = w4[i], a = x4[i];
            s += a.x * p.x + a.y * p.y + a.z * p.z + a.w * p.w;
        }
    } else {
        for (int i = lane; i < n_in; i += 32) s += x[i] * mv_ld(w, i);
    }
    s = kv_warp_sum(s);
    if (lane == 0) {
        float y = accumulate ? out[row] + s : s;
        if (bias) y += bias[row];
        out[row] = y;
    }
}

template <typename WT>
static void matvec(cudaStream_t st, float *out, const float *x, const WT *W, const float *bias,
                   int n_in, int n_out, int accumulate) {
    const unsigned blocks = (unsigned)((n_out + MV_WARPS - 1) / MV_WARPS);
    const int per16 = 16 / (int)sizeof(WT);
    const bool vec = n_in % per16 == 0 && ((uintptr_t)W % 16) == 0 && ((uintptr_t)x % 16) == 0;
    if (vec)
        matvec_kernel<WT, true>
            <<<blocks, 32 * MV_WARPS, 0, st>>>(out, x, W, bias, n_in, n_out, accumulate);
    else
        matvec_kernel<WT, false>
            <<<blocks, 32 * MV_WARPS, 0, st>>>(out, x, W, bias, n_in, n_out, accumulate);
}

__global__ void f16_widen_kernel(float *dst, const __half *src, size_t n) {
    KV_CUDA_FOR(i, n) dst[i] = __half2float(src[i]);
}

__global__ void add_bias_kernel(float *out, const float *bias, size_t n, int n_out) {
    KV_CUDA_FOR(i, n) out[i] += bias[i % n_out];
}

// x rounded to BF16, nearest even (base/dtype.c's rule; x is finite in practice, NaN stays NaN)
__global__ void to_bf16_kernel(uint16_t *dst, const float *src, size_t n) {
    KV_CUDA_FOR(i, n) {
        const uint32_t u = __float_as_uint(src[i]);
        dst[i] = (u & 0x7fffffffu) > 0x7f800000u
                     ? (uint16_t)((u >> 16) | 0x0040u)
                     : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}

int kv_cuda_matmul(kv_backend *b, float *out, const float *x, const void *W, kv_dtype w_type,
                   const float *bias, int T, int n_in, int n_out, int accumulate, kv_error *err) {
    char what[96];
    snprintf(what, sizeof what, "matmul %s [%d x %d] x [%d x %d]^T", kv_dtype_name(w_type), T, n_in,
             n_out, n_in);
    if (w_type != KV_F32 && w_type != KV_BF16 && w_type != KV_F16)
        return kv_fail(err, KV_EUNSUPPORTED, "cuda %s: weights must be F32, BF16 or F16", what);
    if (T <= 0 || n_out <= 0) return 0;
    if (n_in <= 0) return kv_fail(err, KV_EINVAL, "cuda %s: n_in must be positive", what);
    cudaStream_t st = kv_cuda_stream(b);
    if (T == 1) {
        if (w_type == KV_F32) matvec(st, out, x, (const float *)W, bias, n_in, n_out, accumulate);
        else if (w_type == KV_F16)
            matvec(st, out, x, (const __half *)W, bias, n_in, n_out, accumulate);
        else matvec(st, out, x, (const uint16_t *)W, bias, n_in, n_out, accumulate);
        return kv_cuda_launched(what, err);
    }
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    if (w_type == KV_F16) {
        // blocks of at least F16_MIN_ROWS rows of W, about F16_BLOCK_FLOATS widened at a time
        const size_t F16_BLOCK_FLOATS = (size_t)1 << 24;
        const int F16_MIN_ROWS = 256;
        int rows = (int)(F16_BLOCK_FLOATS / (size_t)n_in);
        if (rows < F16_MIN_ROWS) rows = F16_MIN_ROWS;
        if (rows > n_out) rows = n_out;
        void *wide = NULL;
        int rc = kv_cuda_scratch(b, &wide, sizeof(float) * (size_t)rows * n_in, what, err);
        for (int o0 = 0; !rc && o0 < n_out; o0 += rows) {
            const int nr = n_out - o0 < rows ? n_out - o0 : rows;
            const size_t n = (size_t)nr * n_in;
            f16_widen_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, st>>>(
                (float *)wide, (const __half *)W + (size_t)o0 * n_in, n);
            rc = kv_cuda_launched(what, err);
            if (!rc)
                rc = kv_cublas_status(
                    kv_cublas.gemm_ex(kv_cuda(b)->blas, CUBLAS_OP_T, CUBLAS_OP_N, nr, T, n_in, &one,
                                      wide, CUDA_R_32F, n_in, x, CUDA_R_32F, n_in, &beta, out + o0,
                                      CUDA_R_32F, n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                    what, err);
        }
        if (rc || !bias) return rc;
        const size_t n = (size_t)T * n_out;
        add_bias_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, st>>>(out, bias, n, n_out);
        return kv_cuda_launched(what, err);
    }
    const void *B = x;
    cudaDataType ab_type = CUDA_R_32F;
    if (w_type == KV_BF16) {
        void *xb = NULL;
        const size_t n = (size_t)T * n_in;
        int rc = kv_cuda_scratch(b, &xb, n * sizeof(uint16_t), what, err);
        if (rc) return rc;
        to_bf16_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, st>>>((uint16_t *)xb, x, n);
        rc = kv_cuda_launched(what, err);
        if (rc) return rc;
        B = xb;
        ab_type = CUDA_R_16BF;
    }
    int rc = kv_cublas_status(kv_cublas.gemm_ex(kv_cuda(b)->blas, CUBLAS_OP_T, CUBLAS_OP_N, n_out,
                                                T, n_in, &one, W, ab_type, n_in, B, ab_type, n_in,
                                                &beta, out, CUDA_R_32F, n_out, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT),
                              what, err);
    if (rc || !bias) return rc;
    const size_t n = (size_t)T * n_out;
    add_bias_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, st>>>(out, bias, n, n_out);
    return kv_cuda_launched(what, err);
}

// dbias[o] += sum over t of dout[t, o], summed in double in t order (the CPU's order)
__global__ void bias_grad_kernel(float *dbias, const float *dout, int T, int n_out) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= n_out) return;
    double s = 0.0;
    for (int t = 0; t < T; t++) s += dout[(size_t)t * n_out + o];
    dbias[o] += (float)s;
}

int kv_cuda_matmul_backward(kv_backend *b, float *dx, float *dW, float *dbias, const float *dout,
                            const float *x, const float *W, int T, int n_in, int n_out,
                            kv_error *err) {
    char what[112];
    snprintf(what, sizeof what, "matmul_backward [%d x %d] x [%d x %d]^T", T, n_in, n_out, n_in);
    if (T <= 0 || n_in <= 0 || n_out <= 0) return 0;
    cublasHandle_t h = kv_cuda(b)->blas;
    const float one = 1.0f;
    int rc = 0;
    // dx[T, n_in] += dout[T, n_out] @ W[n_out, n_in]: column-major dx^T (n_in x T) +=
    // W^T' (n_in x n_out, ld n_in) * dout^T (n_out x T, ld n_out)
    if (dx)
        rc = kv_cublas_status(kv_cublas.gemm_ex(h, CUBLAS_OP_N, CUBLAS_OP_N, n_in, T, n_out, &one,
                                                W, CUDA_R_32F, n_in, dout, CUDA_R_32F, n_out, &one,
                                                dx, CUDA_R_32F, n_in, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT),
                              what, err);
    // dW[n_out, n_in] += dout^T @ x: column-major dW^T (n_in x n_out, ld n_in) +=
    // x^T (n_in x T, ld n_in) * dout (as stored n_out x T, ld n_out; op T)
    if (!rc && dW)
        rc = kv_cublas_status(kv_cublas.gemm_ex(h, CUBLAS_OP_N, CUBLAS_OP_T, n_in, n_out, T, &one,
                                                x, CUDA_R_32F, n_in, dout, CUDA_R_32F, n_out, &one,
                                                dW, CUDA_R_32F, n_in, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT),
                              what, err);
    if (!rc && dbias) {
        bias_grad_kernel<<<(unsigned)((n_out + KV_CUDA_BLOCK - 1) / KV_CUDA_BLOCK), KV_CUDA_BLOCK,
                           0, kv_cuda_stream(b)>>>(dbias, dout, T, n_out);
        rc = kv_cuda_launched(what, err);
    }
    return rc;
}
