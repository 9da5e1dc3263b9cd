#include "kernels/cpu/rows.h"

#include <stddef.h>

enum { ROWS_PER_ITEM = 16 };

typedef enum { ROW_RMSNORM, ROW_SWIGLU, ROW_ROPE } row_op;

typedef struct {
    row_op op;
    float *out;
    const float *a, *b; /* rmsnorm: x, w; swiglu: gate, up; rope: - */
    int T, n; /* rows, row length (rope: heads) */
    float eps;
    const int32_t *pos;
    const kv_rope_table *table;
} rows_job;

static void rows_item(void *ctx, int item, int worker) {
    (void)worker;
    const rows_job *j = ctx;
    const int t0 = item * ROWS_PER_ITEM;
    const int nt = j->T - t0 < ROWS_PER_ITEM ? j->T - t0 : ROWS_PER_ITEM;
    switch (j->op) {
    case ROW_RMSNORM: {
        const size_t off = (size_t)t0 * j->n;
        kv_rmsnorm(j->out + off, j->a + off, j->b, nt, j->n, j->eps);
        break;
    }
    case ROW_SWIGLU: {
        const size_t off = (size_t)t0 * j->n;
        kv_swiglu(j->out + off, j->a + off, j->b + off, (size_t)nt * j->n);
        break;
    }
    case ROW_ROPE: {
        const size_t off = (size_t)t0 * j->n * j->table->head_dim;
        kv_rope(j->out + off, nt, j->n, j->pos + t0, j->table);
        break;
    }
    }
}

static void rows_run(rows_job *j, double flops_per_row) {
    const int items = (j->T + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM;
    const int workers = kv_parallel_workers(items, flops_per_row * j->T);
    if (workers <= 1) {
        for (int i = 0; i < items; i++) rows_item(j, i, 0);
        return;
    }
    kv_parallel_for(items, workers, rows_item, j);
}

void rows_rmsnorm(float *out, const float *x, const float *w, int T, int dim, float eps) {
    rows_job j = {.op = ROW_RMSNORM, .out = out, .a = x, .b = w, .T = T, .n = dim, .eps = eps};
    rows_run(&j, 4.0 * dim);
}

void rows_swiglu(float *h, const float *gate, const float *up, int T, int n) {
    rows_job j = {.op = ROW_SWIGLU, .out = h, .a = gate, .b = up, .T = T, .n = n};
    rows_run(&j, 20.0 * n);
}

void rows_rope(float *x, int T, int n_heads, const int32_t *pos, const kv_rope_table *table) {
    rows_job j = {.op = ROW_ROPE, .out = x, .T = T, .n = n_heads, .pos = pos, .table = table};
    rows_run(&j, 6.0 * n_heads * table->head_dim);
}
