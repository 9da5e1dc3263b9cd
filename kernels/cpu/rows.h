/* Row-wise kernels (rmsnorm, SwiGLU, RoPE) split over threads by blocks of rows when there is
 * enough work (kv_parallel_workers); each row is computed by the kernels/ function, so results
 * do not depend on the split. Used by the CPU backend (backend_cpu.c). */
#ifndef KV_CPU_ROWS_H
#define KV_CPU_ROWS_H

#include <stdint.h>

#include "kernels/kernels.h"

void rows_rmsnorm(float *out, const float *x, const float *w, int T, int dim, float eps);
void rows_swiglu(float *h, const float *gate, const float *up, int T, int n);
void rows_rope(float *x, int T, int n_heads, const int32_t *pos, const kv_rope_table *table);

#endif
