/* CUDA twins of the forward kernels in kernels/kernels.h, callable from C (built when KV_CUDA).
 *
 * Every float/int pointer passed to a kv_cuda_* kernel is a DEVICE pointer with exactly the
 * shape and layout of the CPU kernel of the same name, and the same overwrite/accumulate
 * behaviour. Kernels are queued on the default stream in call order; kv_cuda_download and
 * kv_cuda_sync wait for them. Each returns 0, or a negative KV_E* code with err filled
 * (KV_EUNSUPPORTED: no usable device or an unsupported size; KV_EIO: a CUDA/cuBLAS failure;
 * KV_ENOMEM: device allocation failed). One host thread at a time (a shared cuBLAS handle). */
#ifndef KV_CUDA_H
#define KV_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* number of CUDA devices; 0 when there is none, no driver, or the query fails */
int kv_cuda_device_count(void);
/* name of device 0 into buf[n]; 0 or KV_EUNSUPPORTED */
int kv_cuda_device_name(char *buf, size_t n, kv_error *err);
/* selects device 0 and creates the cuBLAS handle (kernels call it themselves when needed) */
int kv_cuda_init(kv_error *err);
/* destroys the cuBLAS handle; device buffers stay valid */
void kv_cuda_shutdown(void);

/* device buffers */
int kv_cuda_alloc(void **dptr, size_t bytes, kv_error *err);
void kv_cuda_free(void *dptr); /* NULL is fine */
int kv_cuda_upload(void *dst_dev, const void *src_host, size_t bytes, kv_error *err);
int kv_cuda_download(void *dst_host, const void *src_dev, size_t bytes, kv_error *err);
int kv_cuda_sync(kv_error *err);

/* kv_matmul (accumulate = 0) or kv_matmul_acc (accumulate = 1): cublasSgemm, FP32 math */
int kv_cuda_matmul(float *out, const float *x, const float *W, const float *bias, int T,
                   int n_in, int n_out, int accumulate, kv_error *err);
int kv_cuda_rmsnorm(float *out, const float *x, const float *w, int T, int dim, float eps,
                    kv_error *err);
/* kv_rope: pos [T] int32, cos/sin [max_pos, hd/2] = a kv_rope_table's arrays, uploaded */
int kv_cuda_rope(float *x, int T, int n_heads, int head_dim, const int32_t *pos,
                 const float *cos, const float *sin, kv_error *err);
/* kv_attention: one warp per (query, head), online softmax; head_dim <= 256 */
int kv_cuda_attention(float *out, const float *q, const float *k, const float *v, int T,
                      int pos0, int S, int n_heads, int n_kv_heads, int head_dim,
                      kv_attn_mask mask, kv_error *err);
int kv_cuda_swiglu(float *h, const float *gate, const float *up, size_t n, kv_error *err);
int kv_cuda_softmax(float *x, int rows, int n, kv_error *err);
/* kv_distill_kl: *loss (HOST double, may be NULL) = the averaged loss; dstudent (device, may be
 * NULL) += grad_scale * d(loss)/d(student). Synchronizes when loss is wanted. */
int kv_cuda_distill_kl(double *loss, float *dstudent, const float *student,
                       const float *teacher, int T, int V, float temp, float grad_scale,
                       kv_error *err);

#ifdef __cplusplus
}
#endif

#endif
