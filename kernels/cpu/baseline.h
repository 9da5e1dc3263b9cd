/* Baselines a benchmark measures in the same run as the thing it rates (kvrun --bench): the
 * memory bandwidth of a plain read loop and the speed of a large F32 GEMM, both on the kernel
 * threads (kernels.h: kv_kernels_threads). */
#ifndef KV_CPU_BASELINE_H
#define KV_CPU_BASELINE_H

#include <stddef.h>

#include "base/error.h"

/* best GB/s (1e9 bytes/s) of `passes` passes summing a buffer of `bytes` (huge pages advised,
 * written once first) split over the kernel threads; 0, or KV_ENOMEM */
int kv_read_loop_gbps(double *gbps, size_t bytes, int passes, kv_error *err);

/* best GFLOP/s (2 n^3 per product) of `passes` F32 products [n, n] x [n, n]^T through kv_matmul
 * (OpenBLAS sgemm on the kernel threads); 0, or KV_ENOMEM */
int kv_gemm_gflops(double *gflops, int n, int passes, kv_error *err);

#endif
