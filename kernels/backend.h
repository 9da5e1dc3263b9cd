/* The backend seam: the one place where "which device runs this op" is decided.
 *
 * A backend is a context (CPU: worker threads; CUDA: device, stream, cuBLAS handle) and one table
 * of operations with the same signatures on every device. The runtime's forward pass and the
 * trainer's forward/backward are written once against this table; every buffer they touch is
 * allocated through it. kernels/cpu/backend_cpu.c wraps the reference kernels of kernels.h;
 * kernels/cuda/backend_cuda.cu wraps the CUDA twins in kernels/cuda/ (the CPU kernels are their
 * oracle: kernels/parity.h).
 *
 * Conventions
 *  - "Device" pointers are what alloc returns: host memory on CPU, GPU memory on CUDA. Every
 *    pointer an op takes is a device pointer unless its name starts with host_. When
 *    b->unified is set (CPU) device pointers are host pointers and callers may read them
 *    directly; otherwise only upload/download cross.
 *  - Shapes, layouts, masks and accumulate/overwrite rules are those of the kernel of the same
 *    name in kernels.h: forward ops overwrite their output (matmul adds when accumulate is set);
 *    backward ops ADD into every gradient buffer, and a NULL gradient means "not wanted".
 *  - Every op returns 0 or a negative KV_E* code with err filled (naming the op and its sizes):
 *    KV_ENOMEM (allocation), KV_EINVAL (bad argument, e.g. a token id outside the vocabulary),
 *    KV_EUNSUPPORTED (a dtype or size the backend does not handle), KV_EIO (a device failure).
 *  - Ops run in call order. Results that come back to the host (download, the losses' *loss,
 *    sumsq) are complete when the op returns; sync waits for everything queued.
 *  - Results do not depend on the CPU thread count (kernels.h). */
#ifndef KV_BACKEND_H
#define KV_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "base/dtype.h"
#include "base/error.h"
#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kv_backend kv_backend;

/* One AdamW step for every element (kernels.h conventions; kv_adamw in kernels.h):
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  w -= lr*wd*w;
 *   w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), per element in double. */
typedef struct {
    double beta1, beta2, eps, weight_decay;
    double lr; /* this step's learning rate */
    long t; /* 1-based step */
} kv_adamw_step;

typedef struct {
    /* ---- memory ---- */
    int (*alloc)(kv_backend *b, void **dptr, size_t bytes, kv_error *err); /* zero-filled */
    void (*free)(kv_backend *b, void *dptr); /* NULL is fine */
    /* A device view of read-only host data that outlives it (weights): CPU returns host_src
     * itself (no copy); CUDA allocates and copies. Released with unmap. */
    int (*map)(kv_backend *b, const void **dptr, const void *host_src, size_t bytes, kv_error *err);
    void (*unmap)(kv_backend *b, const void *dptr);
    int (*upload)(kv_backend *b, void *dst, const void *host_src, size_t bytes, kv_error *err);
    int (*download)(kv_backend *b, void *host_dst, const void *src, size_t bytes, kv_error *err);
    int (*zero)(kv_backend *b, void *dst, size_t bytes, kv_error *err);
    int (*copy)(kv_backend *b, void *dst, const void *src, size_t bytes, kv_error *err);
    /* n elements between F32, F16 and BF16 (round to nearest even when narrowing) */
    int (*convert)(kv_backend *b, void *dst, kv_dtype dst_type, const void *src, kv_dtype src_type,
                   size_t n, kv_error *err);
    /* src F32 [T, n_heads, hd] into dst head by head: row t of head g at element g * head_pitch +
     * t * hd of dst, as dst_type (F32, or BF16 rounded as convert rounds); the KV cache's write */
    int (*store_heads)(kv_backend *b, void *dst, kv_dtype dst_type, size_t head_pitch,
                       const float *src, int T, int n_heads, int head_dim, kv_error *err);
    int (*sync)(kv_backend *b, kv_error *err);
    /* tears down the backend's context (kv_backend_free calls it); NULL when there is none */
    void (*release)(kv_backend *b);

    /* ---- forward ---- */
    /* out[T, n_out] (+)= x[T, n_in] @ W[n_out, n_in]^T + bias; W is F32 or BF16 (w_type) */
    int (*matmul)(kv_backend *b, float *out, const float *x, const void *W, kv_dtype w_type,
                  const float *bias, int T, int n_in, int n_out, int accumulate, kv_error *err);
    int (*rmsnorm)(kv_backend *b, float *out, const float *x, const float *w, int T, int dim,
                   float eps, kv_error *err);
    /* table: a device table from kv_backend_rope_table */
    int (*rope)(kv_backend *b, float *x, int T, int n_heads, const int32_t *pos,
                const kv_rope_table *table, kv_error *err);
    /* k, v [S, nkv, hd] as cache_type (F32 or BF16), or [ring, nkv, hd] with a ring; or, with
     * head_rows > 0, [nkv, head_rows, hd] (a head's rows contiguous, the KV cache's layout);
     * window, ring and head_rows as kv_attention_cache's (kernels.h) */
    int (*attention)(kv_backend *b, float *out, const float *q, const void *k, const void *v,
                     kv_dtype cache_type, int head_rows, int T, int pos0, int S, int n_heads,
                     int n_kv_heads, int head_dim, kv_attn_mask mask, int window, int ring,
                     kv_error *err);
    /* h[T, n] = silu(gate) * up; h may alias gate or up */
    int (*swiglu)(kv_backend *b, float *h, const float *gate, const float *up, int T, int n,
                  kv_error *err);
    /* ids: host ids, checked against vocab (KV_EINVAL naming the position and id) */
    int (*embedding)(kv_backend *b, float *out, const float *table, int vocab, int dim,
                     const int32_t *host_ids, int T, kv_error *err);

    /* ---- losses: *host_loss gets the value (as the kernels.h function returns it) ---- */
    /* weights: device [T] per-row weights or NULL (kv_distill_kl) */
    int (*distill_kl)(kv_backend *b, double *host_loss, float *dstudent, const float *student,
                      const float *teacher, const float *weights, int T, int V, float temp,
                      float grad_scale, kv_error *err);
    /* tokens: device ids [B*T] */
    int (*next_token_ce)(kv_backend *b, double *host_loss, float *dlogits, const float *logits,
                         const int32_t *tokens, int B, int T, int V, float grad_scale,
                         kv_error *err);
    int (*mse)(kv_backend *b, double *host_loss, float *dstudent, const float *student,
               const float *teacher, size_t n, float grad_scale, kv_error *err);

    /* ---- backward ---- */
    int (*matmul_backward)(kv_backend *b, float *dx, float *dW, float *dbias, const float *dout,
                           const float *x, const float *W, int T, int n_in, int n_out,
                           kv_error *err);
    int (*rmsnorm_backward)(kv_backend *b, float *dx, float *dw, const float *dout, const float *x,
                            const float *w, int T, int dim, float eps, kv_error *err);
    /* in place, the inverse rotation (kernels.h: the one backward that does not add) */
    int (*rope_backward)(kv_backend *b, float *dx, int T, int n_heads, const int32_t *pos,
                         const kv_rope_table *table, kv_error *err);
    int (*attention_backward)(kv_backend *b, float *dq, float *dk, float *dv, const float *dout,
                              const float *q, const float *k, const float *v, int T, int pos0,
                              int S, int n_heads, int n_kv_heads, int head_dim, kv_attn_mask mask,
                              int window, kv_error *err);
    int (*swiglu_backward)(kv_backend *b, float *dgate, float *dup, const float *dh,
                           const float *gate, const float *up, size_t n, kv_error *err);

    /* ---- optimiser ---- */
    /* *host_sumsq += sum of x[i]^2 in double (gradient norms) */
    int (*sumsq)(kv_backend *b, double *host_sumsq, const float *x, size_t n, kv_error *err);
    int (*scale)(kv_backend *b, float *x, float k, size_t n, kv_error *err);
    /* dst[i] += src[i] (gradients from several paths) */
    int (*add)(kv_backend *b, float *dst, const float *src, size_t n, kv_error *err);
    int (*adamw)(kv_backend *b, float *w, const float *g, float *m, float *v, size_t n,
                 const kv_adamw_step *step, kv_error *err);
} kv_backend_ops;

typedef enum { KV_DEVICE_CPU = 0, KV_DEVICE_CUDA = 1 } kv_device;

struct kv_backend {
    const kv_backend_ops *ops;
    kv_device device;
    int unified; /* device pointers are host pointers */
    int threads; /* CPU worker threads (CUDA: the host threads it may use, 1) */
    char name[128]; /* "cpu (2 threads)", the GPU's name */
    void *impl; /* the backend's own state */
};

/* threads < 1: every online CPU */
int kv_backend_cpu_init(kv_backend *b, int threads, kv_error *err);
/* CUDA device `ordinal`; KV_EUNSUPPORTED when built without CUDA or no device is found */
int kv_backend_cuda_init(kv_backend *b, int ordinal, kv_error *err);
/* cuBLAS is loaded (dlopen) when a CUDA backend first starts, so tools that never use the GPU
 * never pay for it; this loads it now. 0, or KV_EUNSUPPORTED naming the library (and always in
 * builds without CUDA). */
int kv_cuda_blas_load(kv_error *err);
/* "cpu" or "cuda" (KV_EINVAL naming anything else) */
int kv_backend_init(kv_backend *b, const char *device, int threads, kv_error *err);
void kv_backend_free(kv_backend *b);
/* "cpu" | "cuda" -> kv_device; KV_EINVAL naming the string otherwise */
int kv_device_parse(kv_device *d, const char *s, kv_error *err);

/* A RoPE table the backend's rope ops read: host's cos/sin copied to the device (on a unified
 * backend the host arrays themselves). Freed with kv_backend_rope_table_free. */
int kv_backend_rope_table(kv_backend *b, kv_rope_table *dev, const kv_rope_table *host,
                          kv_error *err);
void kv_backend_rope_table_free(kv_backend *b, kv_rope_table *dev);

#ifdef __cplusplus
}
#endif

#endif
