/* Baselines a benchmark measures in the same run as the thing it rates (kvrun --bench): the
 * memory bandwidth of a plain read loop and the speed of a large F32 GEMM, both on the kernel
 * threads (kernels.h: kv_kernels_threads). */
#ifndef KV_CPU_BASELINE_H
#define KV_CPU_BASELINE_H

#include <stddef.h>
#include <stdint.h>

#include "base/error.h"

/* best GB/s (1e9 bytes/s) of `passes` passes summing a buffer of `bytes` (huge pages advised,
 * written once first) split over the kernel threads; 0, or KV_ENOMEM */
int kv_read_loop_gbps(double *gbps, size_t bytes, int passes, kv_error *err);

/* The same loop kept for samples of any length: init writes the buffer once; kv_read_loop_run
 * times `sweeps` passes over it back to back and gives their GB/s (one figure for the whole
 * stretch, as a decode run of as many bytes gives one); free releases it. */
typedef struct kv_read_loop kv_read_loop;
int kv_read_loop_init(kv_read_loop **rl, size_t bytes, kv_error *err);
double kv_read_loop_run(kv_read_loop *rl, int sweeps);
/* A loop over memory the caller owns and keeps (the weights a decode step reads, say): the
 * whole 128-byte blocks of each span from its first 32-byte boundary, in items of at most
 * 1 MiB split over the kernel threads; kv_read_loop_run and _best as above, kv_read_loop_free
 * leaves the spans alone. 0, or KV_ENOMEM / KV_EINVAL. */
typedef struct {
    const void *p;
    size_t bytes;
} kv_span;
int kv_read_loop_init_spans(kv_read_loop **rl, const kv_span *spans, int n_spans, kv_error *err);
/* bytes one sweep reads, and the wrapping sum of the 64-bit words the last sweep read (what
 * keeps the loads; tests check which bytes were read) */
size_t kv_read_loop_bytes(const kv_read_loop *rl);
uint64_t kv_read_loop_sum(const kv_read_loop *rl);
/* the best GB/s of `passes` runs of one sweep each */
double kv_read_loop_best(kv_read_loop *rl, int passes);
void kv_read_loop_free(kv_read_loop *rl);

/* best GFLOP/s (2 n^3 per product) of `passes` F32 products [n, n] x [n, n]^T through kv_matmul
 * (OpenBLAS sgemm on the kernel threads); 0, or KV_ENOMEM */
int kv_gemm_gflops(double *gflops, int n, int passes, kv_error *err);

#endif
