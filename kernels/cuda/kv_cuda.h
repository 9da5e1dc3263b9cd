/* Internal to kernels/cuda (C++/CUDA only): the CUDA backend's state, its helpers, and the ops
 * each kernels/cuda/X.cu defines for the table in backend_cuda.cu.
 *
 * Every op here has exactly the signature of its member of kv_backend_ops (kernels/backend.h)
 * and the semantics of the CPU reference of the same name in kernels/cpu/X.c (kernels.h):
 * kernels/cuda/X.cu pairs with kernels/cpu/X.c. Work is queued on the backend's stream in call
 * order; ops returning values to the host (losses, sumsq, download) wait for it. */
#ifndef KV_CUDA_H
#define KV_CUDA_H

#ifndef __CUDACC__
#error "kernels/cuda/kv_cuda.h is internal to the .cu files"
#endif

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "kernels/backend.h"

/* b->impl of a CUDA backend */
struct kv_cuda_impl {
    int ordinal;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *scratch; /* device scratch shared by the ops (they run in stream order) */
    size_t scratch_bytes;
};

static inline kv_cuda_impl *kv_cuda(kv_backend *b) { return (kv_cuda_impl *)b->impl; }
static inline cudaStream_t kv_cuda_stream(kv_backend *b) { return kv_cuda(b)->stream; }

/* A device scratch of at least `bytes` (backend_cuda.cu), valid until the next call; growing it
 * waits for the stream first. 0 or KV_ENOMEM/KV_EIO naming `what`. */
int kv_cuda_scratch(kv_backend *b, void **p, size_t bytes, const char *what, kv_error *err);

/* 0, or KV_EIO naming `what` and the CUDA error (e.g. of the last launch) */
static inline int kv_cuda_status(cudaError_t e, const char *what, kv_error *err) {
    if (e == cudaSuccess) return 0;
    return kv_fail(err, e == cudaErrorMemoryAllocation ? KV_ENOMEM : KV_EIO, "cuda %s: %s", what,
                   cudaGetErrorString(e));
}
static inline int kv_cuda_launched(const char *what, kv_error *err) {
    return kv_cuda_status(cudaGetLastError(), what, err);
}
/* The cuBLAS entry points the backend uses, resolved by kv_cublas_load (cublas_load.cu: cuBLAS
 * is dlopen'ed on first use, not linked) */
struct kv_cublas_api {
    typedef cublasStatus_t (*create_fn)(cublasHandle_t *);
    typedef cublasStatus_t (*destroy_fn)(cublasHandle_t);
    typedef cublasStatus_t (*set_stream_fn)(cublasHandle_t, cudaStream_t);
    typedef cublasStatus_t (*set_math_mode_fn)(cublasHandle_t, cublasMath_t);
    typedef const char *(*status_string_fn)(cublasStatus_t);
    typedef cublasStatus_t (*gemm_ex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int,
                                         int, int, const void *, const void *, cudaDataType, int,
                                         const void *, cudaDataType, int, const void *, void *,
                                         cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
    create_fn create;
    destroy_fn destroy;
    set_stream_fn set_stream;
    set_math_mode_fn set_math_mode;
    status_string_fn status_string;
    gemm_ex_fn gemm_ex;
};
extern kv_cublas_api kv_cublas;
/* once per process; 0 or KV_EUNSUPPORTED naming the library or the missing symbol */
int kv_cublas_load(kv_error *err);

static inline int kv_cublas_status(cublasStatus_t s, const char *what, kv_error *err) {
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    return kv_fail(err, s == CUBLAS_STATUS_ALLOC_FAILED ? KV_ENOMEM : KV_EIO, "cublas %s: %s", what,
                   kv_cublas.status_string ? kv_cublas.status_string(s) : "error");
}

/* threads per block of the element-wise and row kernels (a multiple of 32, at most 1024) */
#define KV_CUDA_BLOCK 256

/* blocks for a grid-stride loop over n elements */
static inline unsigned kv_cuda_grid(size_t n) {
    size_t blocks = (n + KV_CUDA_BLOCK - 1) / KV_CUDA_BLOCK;
    return (unsigned)(blocks < 1 ? 1 : blocks > 65535 ? 65535 : blocks);
}

#define KV_CUDA_FOR(i, n)                                                                          \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                        \
         i += (size_t)gridDim.x * blockDim.x)

/* BF16 bits -> float (exact) */
__device__ __forceinline__ float kv_bf16_widen(uint16_t h) {
    return __uint_as_float((uint32_t)h << 16);
}

/* ---- warp and block reductions (blockDim.x a multiple of 32; call from every thread) ---- */

template <typename F> __device__ __forceinline__ F kv_warp_sum(F x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

template <typename F> __device__ __forceinline__ F kv_warp_max(F x) {
    for (int o = 16; o > 0; o >>= 1) x = fmax(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

/* every thread gets the block's sum / max; 32 values of shared memory, two barriers */
template <typename F> __device__ __forceinline__ F kv_block_sum(F x) {
    __shared__ F part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    x = kv_warp_sum(x);
    __syncthreads(); /* part may still be read by a previous reduction */
    if (lane == 0) part[warp] = x;
    __syncthreads();
    x = lane < nwarps ? part[lane] : (F)0;
    return kv_warp_sum(x);
}

template <typename F> __device__ __forceinline__ F kv_block_max(F x) {
    __shared__ F part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    x = kv_warp_max(x);
    __syncthreads();
    if (lane == 0) part[warp] = x;
    __syncthreads();
    x = lane < nwarps ? part[lane] : (F)-INFINITY;
    return kv_warp_max(x);
}

/* ---- the ops (kv_backend_ops signatures), by file ------------------------------------------ */

/* backend_cuda.cu <-> cpu/backend_cpu.c: memory, convert, sync, release (static there) */

/* matmul.cu <-> cpu/matmul.c */
int kv_cuda_matmul(kv_backend *b, float *out, const float *x, const void *W, kv_dtype w_type,
                   const float *bias, int T, int n_in, int n_out, int accumulate, kv_error *err);
int kv_cuda_matmul_backward(kv_backend *b, float *dx, float *dW, float *dbias, const float *dout,
                            const float *x, const float *W, int T, int n_in, int n_out,
                            kv_error *err);

/* norm.cu <-> cpu/norm.c */
int kv_cuda_rmsnorm(kv_backend *b, float *out, const float *x, const float *w, int T, int dim,
                    float eps, kv_error *err);
int kv_cuda_rmsnorm_backward(kv_backend *b, float *dx, float *dw, const float *dout, const float *x,
                             const float *w, int T, int dim, float eps, kv_error *err);
int kv_cuda_embedding(kv_backend *b, float *out, const float *table, int vocab, int dim,
                      const int32_t *host_ids, int T, kv_error *err);

/* rope.cu <-> cpu/rope.c */
int kv_cuda_rope(kv_backend *b, float *x, int T, int n_heads, const int32_t *pos,
                 const kv_rope_table *table, kv_error *err);
int kv_cuda_rope_backward(kv_backend *b, float *dx, int T, int n_heads, const int32_t *pos,
                          const kv_rope_table *table, kv_error *err);

/* attention.cu <-> cpu/attention.c */
int kv_cuda_attention(kv_backend *b, float *out, const float *q, const void *k, const void *v,
                      kv_dtype cache_type, int head_rows, int T, int pos0, int S, int n_heads,
                      int n_kv_heads, int head_dim, kv_attn_mask mask, int window, int ring,
                      kv_error *err);
int kv_cuda_attention_backward(kv_backend *b, float *dq, float *dk, float *dv, const float *dout,
                               const float *q, const float *k, const float *v, int T, int pos0,
                               int S, int n_heads, int n_kv_heads, int head_dim, kv_attn_mask mask,
                               int window, kv_error *err);

/* activation.cu <-> cpu/activation.c */
int kv_cuda_swiglu(kv_backend *b, float *h, const float *gate, const float *up, int T, int n,
                   kv_error *err);
int kv_cuda_swiglu_backward(kv_backend *b, float *dgate, float *dup, const float *dh,
                            const float *gate, const float *up, size_t n, kv_error *err);

/* loss.cu <-> cpu/loss.c */
int kv_cuda_distill_kl(kv_backend *b, double *host_loss, float *dstudent, const float *student,
                       const float *teacher, const float *weights, int T, int V, float temp,
                       float grad_scale, kv_error *err);
int kv_cuda_next_token_ce(kv_backend *b, double *host_loss, float *dlogits, const float *logits,
                          const int32_t *tokens, int B, int T, int V, float grad_scale,
                          kv_error *err);
int kv_cuda_mse(kv_backend *b, double *host_loss, float *dstudent, const float *student,
                const float *teacher, size_t n, float grad_scale, kv_error *err);

/* optim.cu <-> cpu/optim.c */
int kv_cuda_sumsq(kv_backend *b, double *host_sumsq, const float *x, size_t n, kv_error *err);
int kv_cuda_scale(kv_backend *b, float *x, float k, size_t n, kv_error *err);
int kv_cuda_add(kv_backend *b, float *dst, const float *src, size_t n, kv_error *err);
int kv_cuda_adamw(kv_backend *b, float *w, const float *g, float *m, float *v, size_t n,
                  const kv_adamw_step *step, kv_error *err);

/* Deterministic sums of per-block partials: a grid of kv_cuda_partial_blocks(n) blocks writes
 * one double per block; kv_cuda_partials_sum downloads them (waiting for the stream) and adds
 * them on the host in block order. */
unsigned kv_cuda_partial_blocks(size_t n);
int kv_cuda_partials_sum(kv_backend *b, double *sum, const double *dev_partials, unsigned n,
                         const char *what, kv_error *err);

#endif
