// The CUDA backend (kernels/backend.h), twin of kernels/cpu/backend_cpu.c: device memory on one
// stream, F32/F16/BF16 conversion, and the table of ops whose kernels live in kernels/cuda/X.cu
// beside their CPU references kernels/cpu/X.c. Device pointers are GPU pointers (unified = 0).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kv_cuda.h"

int kv_cuda_scratch(kv_backend *b, void **p, size_t bytes, const char *what, kv_error *err) {
    kv_cuda_impl *c = kv_cuda(b);
    if (bytes <= c->scratch_bytes && c->scratch) {
        *p = c->scratch;
        return 0;
    }
    *p = NULL;
    int rc = kv_cuda_status(cudaStreamSynchronize(c->stream), what, err); // old scratch in use
    if (rc) return rc;
    cudaFree(c->scratch);
    c->scratch = NULL;
    c->scratch_bytes = 0;
    cudaError_t e = cudaMalloc(&c->scratch, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        c->scratch = NULL;
        return kv_fail(err, KV_ENOMEM, "cuda %s: scratch of %zu bytes: %s", what, bytes,
                       cudaGetErrorString(e));
    }
    c->scratch_bytes = bytes;
    *p = c->scratch;
    return 0;
}

unsigned kv_cuda_partial_blocks(size_t n) {
    size_t blocks = (n + KV_CUDA_BLOCK - 1) / KV_CUDA_BLOCK;
    return (unsigned)(blocks < 1 ? 1 : blocks > 1024 ? 1024 : blocks);
}

int kv_cuda_partials_sum(kv_backend *b, double *sum, const double *dev_partials, unsigned n,
                         const char *what, kv_error *err) {
    double *host = (double *)malloc(sizeof(double) * n);
    if (!host) return kv_fail(err, KV_ENOMEM, "cuda %s: %u partial sums", what, n);
    int rc = kv_cuda_status(cudaMemcpyAsync(host, dev_partials, sizeof(double) * n,
                                            cudaMemcpyDeviceToHost, kv_cuda_stream(b)),
                            what, err);
    if (!rc) rc = kv_cuda_status(cudaStreamSynchronize(kv_cuda_stream(b)), what, err);
    if (!rc) {
        double s = 0.0;
        for (unsigned i = 0; i < n; i++) s += host[i];
        *sum = s;
    }
    free(host);
    return rc;
}

// ---- memory ----------------------------------------------------------------------------------

static int cuda_alloc(kv_backend *b, void **dptr, size_t bytes, kv_error *err) {
    *dptr = NULL;
    cudaError_t e = cudaMalloc(dptr, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *dptr = NULL;
        return kv_fail(err, e == cudaErrorMemoryAllocation ? KV_ENOMEM : KV_EIO,
                       "cuda: allocating %zu bytes: %s", bytes, cudaGetErrorString(e));
    }
    e = cudaMemsetAsync(*dptr, 0, bytes, kv_cuda_stream(b));
    if (e != cudaSuccess) {
        cudaFree(*dptr);
        *dptr = NULL;
        return kv_fail(err, KV_EIO, "cuda: zeroing %zu new bytes: %s", bytes,
                       cudaGetErrorString(e));
    }
    return 0;
}

// waits for the stream: queued kernels may still read the buffer
static void cuda_free(kv_backend *b, void *dptr) {
    if (!dptr) return;
    cudaStreamSynchronize(kv_cuda_stream(b));
    cudaFree(dptr);
}

static int cuda_upload(kv_backend *b, void *dst, const void *host_src, size_t bytes,
                       kv_error *err) {
    if (!bytes) return 0;
    cudaStream_t s = kv_cuda_stream(b);
    cudaError_t e = cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s); // host_src may go away after the call
    if (e != cudaSuccess)
        return kv_fail(err, KV_EIO, "cuda: upload of %zu bytes: %s", bytes, cudaGetErrorString(e));
    return 0;
}

static int cuda_download(kv_backend *b, void *host_dst, const void *src, size_t bytes,
                         kv_error *err) {
    if (!bytes) return 0;
    cudaStream_t s = kv_cuda_stream(b);
    cudaError_t e = cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess)
        return kv_fail(err, KV_EIO, "cuda: download of %zu bytes: %s", bytes,
                       cudaGetErrorString(e));
    return 0;
}

static int cuda_map(kv_backend *b, const void **dptr, const void *host_src, size_t bytes,
                    kv_error *err) {
    void *d = NULL;
    *dptr = NULL;
    int rc = cuda_alloc(b, &d, bytes, err);
    if (!rc) rc = cuda_upload(b, d, host_src, bytes, err);
    if (rc) {
        cuda_free(b, d);
        return kv_wrap(err, "cuda: map of %zu bytes", bytes);
    }
    *dptr = d;
    return 0;
}

static void cuda_unmap(kv_backend *b, const void *dptr) { cuda_free(b, (void *)dptr); }

static int cuda_zero(kv_backend *b, void *dst, size_t bytes, kv_error *err) {
    if (!bytes) return 0;
    cudaError_t e = cudaMemsetAsync(dst, 0, bytes, kv_cuda_stream(b));
    if (e != cudaSuccess)
        return kv_fail(err, KV_EIO, "cuda: zero of %zu bytes: %s", bytes, cudaGetErrorString(e));
    return 0;
}

static int cuda_copy(kv_backend *b, void *dst, const void *src, size_t bytes, kv_error *err) {
    if (!bytes || dst == src) return 0;
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, kv_cuda_stream(b));
    if (e != cudaSuccess)
        return kv_fail(err, KV_EIO, "cuda: copy of %zu bytes: %s", bytes, cudaGetErrorString(e));
    return 0;
}

static int cuda_sync(kv_backend *b, kv_error *err) {
    return kv_cuda_status(cudaStreamSynchronize(kv_cuda_stream(b)), "sync", err);
}

// ---- convert: the bit-level rules of base/dtype.c (round to nearest even, NaN stays quiet NaN)

__device__ __forceinline__ uint16_t cv_f32_to_bf16(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); // quiet NaN
    const uint32_t round = 0x7fffu + ((u >> 16) & 1u); // nearest even
    return (uint16_t)((u + round) >> 16);
}

__device__ __forceinline__ float cv_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (mant << 13)); // Inf / NaN
    if (exp == 0) {
        if (mant == 0) return __uint_as_float(sign);
        int shift = 0; // subnormal: normalise
        while (!(mant & 0x400u)) {
            mant <<= 1;
            shift++;
        }
        mant &= 0x3ffu;
        return __uint_as_float(sign | ((uint32_t)(113 - shift) << 23) | (mant << 13));
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

__device__ __forceinline__ uint16_t cv_f32_to_f16(float f) {
    const uint32_t u = __float_as_uint(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((abs >> 13) & 0x3ffu); // NaN
    if (abs >= 0x477ff000u) return sign | 0x7c00u; // >= 65520 rounds to Inf
    const int32_t exp = (int32_t)(abs >> 23) - 127;
    uint32_t mant = abs & 0x7fffffu;
    if (exp >= -14) { // normal half
        uint32_t h = ((uint32_t)(exp + 15) << 10) | (mant >> 13);
        const uint32_t rest = mant & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
        return sign | (uint16_t)h;
    }
    if (exp < -25) return sign;
    mant |= 0x800000u; // subnormal half
    const int shift = -exp - 1;
    uint32_t h = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

__global__ void convert_kernel(void *dst, int dst_t, const void *src, int src_t, size_t n) {
    KV_CUDA_FOR(i, n) {
        const uint16_t *s16 = (const uint16_t *)src;
        const float v = src_t == KV_F32   ? ((const float *)src)[i]
                        : src_t == KV_F16 ? cv_f16_to_f32(s16[i])
                                          : kv_bf16_widen(s16[i]);
        if (dst_t == KV_F32) ((float *)dst)[i] = v;
        else ((uint16_t *)dst)[i] = dst_t == KV_F16 ? cv_f32_to_f16(v) : cv_f32_to_bf16(v);
    }
}

static int float_type(kv_dtype t) { return t == KV_F32 || t == KV_F16 || t == KV_BF16; }

static int cuda_convert(kv_backend *b, void *dst, kv_dtype dst_type, const void *src,
                        kv_dtype src_type, size_t n, kv_error *err) {
    if (!float_type(dst_type) || !float_type(src_type))
        return kv_fail(err, KV_EUNSUPPORTED, "cuda: convert %s -> %s is not supported",
                       kv_dtype_name(src_type), kv_dtype_name(dst_type));
    if (!n) return 0;
    if (dst_type == src_type) return cuda_copy(b, dst, src, n * kv_dtype_size(src_type), err);
    convert_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(dst, dst_type, src,
                                                                             src_type, n);
    char what[96];
    snprintf(what, sizeof what, "convert %s -> %s (%zu elements)", kv_dtype_name(src_type),
             kv_dtype_name(dst_type), n);
    return kv_cuda_launched(what, err);
}

// src [T, nh, hd] -> dst head by head (backend.h: store_heads); element i of src is (t, g, d)
__global__ void store_heads_kernel(void *dst, int bf16, size_t head_pitch, const float *src, int nh,
                                   int hd, size_t n) {
    KV_CUDA_FOR(i, n) {
        const size_t d = i % (size_t)hd, g = i / (size_t)hd % (size_t)nh,
                     t = i / ((size_t)hd * (size_t)nh);
        const size_t at = g * head_pitch + t * (size_t)hd + d;
        if (bf16) ((uint16_t *)dst)[at] = cv_f32_to_bf16(src[i]);
        else ((float *)dst)[at] = src[i];
    }
}

static int cuda_store_heads(kv_backend *b, void *dst, kv_dtype dst_type, size_t head_pitch,
                            const float *src, int T, int n_heads, int head_dim, kv_error *err) {
    if (dst_type != KV_F32 && dst_type != KV_BF16)
        return kv_fail(err, KV_EUNSUPPORTED, "cuda: store_heads into %s (F32 or BF16)",
                       kv_dtype_name(dst_type));
    if (T < 0 || n_heads < 0 || head_dim < 0)
        return kv_fail(err, KV_EINVAL, "cuda: store_heads of a negative size");
    const size_t n = (size_t)T * (size_t)n_heads * (size_t)head_dim;
    if (!n) return 0;
    store_heads_kernel<<<kv_cuda_grid(n), KV_CUDA_BLOCK, 0, kv_cuda_stream(b)>>>(
        dst, dst_type == KV_BF16, head_pitch, src, n_heads, head_dim, n);
    char what[96];
    snprintf(what, sizeof what, "store_heads %s (T %d, %d heads of %d)", kv_dtype_name(dst_type), T,
             n_heads, head_dim);
    return kv_cuda_launched(what, err);
}

// ---- lifetime -----------------------------------------------------------------------------------

static void cuda_release(kv_backend *b) {
    kv_cuda_impl *c = kv_cuda(b);
    if (!c) return;
    cudaSetDevice(c->ordinal);
    if (c->stream) cudaStreamSynchronize(c->stream);
    cudaFree(c->scratch);
    if (c->blas) kv_cublas.destroy(c->blas);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
    b->impl = NULL;
}

// by name: several members share a signature, so a positional table could swap them unseen
static constexpr kv_backend_ops cuda_ops_table(void) {
    kv_backend_ops o = {};
    o.alloc = cuda_alloc;
    o.free = cuda_free;
    o.map = cuda_map;
    o.unmap = cuda_unmap;
    o.upload = cuda_upload;
    o.download = cuda_download;
    o.zero = cuda_zero;
    o.copy = cuda_copy;
    o.convert = cuda_convert;
    o.store_heads = cuda_store_heads;
    o.sync = cuda_sync;
    o.release = cuda_release;
    o.matmul = kv_cuda_matmul;
    o.rmsnorm = kv_cuda_rmsnorm;
    o.rope = kv_cuda_rope;
    o.attention = kv_cuda_attention;
    o.swiglu = kv_cuda_swiglu;
    o.embedding = kv_cuda_embedding;
    o.distill_kl = kv_cuda_distill_kl;
    o.next_token_ce = kv_cuda_next_token_ce;
    o.mse = kv_cuda_mse;
    o.matmul_backward = kv_cuda_matmul_backward;
    o.rmsnorm_backward = kv_cuda_rmsnorm_backward;
    o.rope_backward = kv_cuda_rope_backward;
    o.attention_backward = kv_cuda_attention_backward;
    o.swiglu_backward = kv_cuda_swiglu_backward;
    o.sumsq = kv_cuda_sumsq;
    o.scale = kv_cuda_scale;
    o.add = kv_cuda_add;
    o.adamw = kv_cuda_adamw;
    return o;
}
static constexpr kv_backend_ops cuda_ops = cuda_ops_table(); // constant-initialised
// every member set above: a member added to kv_backend_ops must be added here (and a case to
// kernels/parity.c); the size check is the reminder
static_assert(sizeof(kv_backend_ops) == 30 * sizeof(void (*)(void)),
              "kv_backend_ops changed: update cuda_ops_table (and kernels/parity.c)");

int kv_backend_cuda_init(kv_backend *b, int ordinal, kv_error *err) {
    *b = kv_backend{};
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError(); // no driver / no device is an answer, not a failure
        return kv_fail(err, KV_EUNSUPPORTED, "cuda: no CUDA device found (%s)",
                       cudaGetErrorString(e));
    }
    if (count <= 0) return kv_fail(err, KV_EUNSUPPORTED, "cuda: no CUDA device found");
    if (ordinal < 0 || ordinal >= count)
        return kv_fail(err, KV_EINVAL, "cuda: device %d: there are %d CUDA devices", ordinal,
                       count);
    cudaDeviceProp prop;
    e = cudaSetDevice(ordinal);
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, ordinal);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return kv_fail(err, KV_EUNSUPPORTED, "cuda: device %d: %s", ordinal, cudaGetErrorString(e));
    }
    kv_cuda_impl *c = (kv_cuda_impl *)calloc(1, sizeof *c);
    if (!c) return kv_fail(err, KV_ENOMEM, "cuda: backend state");
    c->ordinal = ordinal;
    b->impl = c;
    b->ops = &cuda_ops;
    int rc = kv_cuda_status(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking),
                            "creating a stream", err);
    if (!rc) rc = kv_cublas_load(err);
    if (!rc) rc = kv_cublas_status(kv_cublas.create(&c->blas), "creating a handle", err);
    if (!rc) rc = kv_cublas_status(kv_cublas.set_stream(c->blas, c->stream), "set stream", err);
    // FP32 GEMMs stay FP32 (no TF32); BF16 GEMMs use tensor cores with FP32 accumulation
    if (!rc)
        rc = kv_cublas_status(kv_cublas.set_math_mode(c->blas, CUBLAS_DEFAULT_MATH), "math mode",
                              err);
    if (rc) {
        cuda_release(b);
        *b = kv_backend{};
        return rc;
    }
    b->device = KV_DEVICE_CUDA;
    b->unified = 0;
    b->threads = 1;
    memcpy(b->name, prop.name, sizeof b->name - 1); // both NUL-terminated; prop.name is longer
    b->name[sizeof b->name - 1] = 0;
    return 0;
}
