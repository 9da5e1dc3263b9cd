/* A backend for tests that is not unified: the CPU backend's kernels, but its memory is off
 * limits to the host. map copies the host data and the backend declares that device pointers
 * are not host pointers, so its callers take every non-unified path (device copies of weights
 * and RoPE tables, uploads, downloads). Device memory is readable and writable only while an
 * op of the table runs (mprotect PROT_NONE otherwise): a caller that
 * reads or writes device memory on the host crashes, and one that forgets a transfer keeps stale
 * copies, so its results stop matching the CPU backend's (which they must equal bit for bit).
 * One such backend per process at a time. */
#ifndef KV_TESTS_SPLIT_BACKEND_H
#define KV_TESTS_SPLIT_BACKEND_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels/backend.h"

/* Device memory: one reserved range of address space, allocations carved from its start
 * (whole pages, zero-filled), given back all at once when the last one is freed; open and closed
 * with one mprotect each. */
#define SPLIT_RESERVE ((size_t)1 << 36)
static kv_backend_ops split_ops, split_cpu;
static char *split_base;
static size_t split_top; /* bytes carved */
static int split_live; /* allocations not yet freed */

/* the carved part, in whole 2 MiB blocks: with transparent huge pages an mprotect is a few
 * page-table entries, not one per 4 KiB page */
#define SPLIT_BLOCK ((size_t)2 << 20)
static void split_protect(int prot) {
    const size_t len = (split_top + SPLIT_BLOCK - 1) / SPLIT_BLOCK * SPLIT_BLOCK;
    if (len && mprotect(split_base, len, prot)) abort();
}
#define SPLIT_OPEN()  split_protect(PROT_READ | PROT_WRITE)
#define SPLIT_CLOSE() split_protect(PROT_NONE)

static int split_alloc(kv_backend *b, void **dptr, size_t bytes, kv_error *err) {
    (void)b;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t len = bytes ? (bytes + page - 1) / page * page : page;
    if (!split_base) {
        char *p = mmap(NULL, SPLIT_RESERVE + SPLIT_BLOCK, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) return kv_fail(err, KV_ENOMEM, "split: cannot reserve memory");
        split_base = p + (SPLIT_BLOCK - (uintptr_t)p % SPLIT_BLOCK) % SPLIT_BLOCK;
        madvise(split_base, SPLIT_RESERVE, MADV_HUGEPAGE); /* best effort */
    }
    if (len > SPLIT_RESERVE - split_top)
        return kv_fail(err, KV_ENOMEM, "split: cannot allocate %zu bytes", bytes);
    *dptr = split_base + split_top;
    split_top += len;
    split_live++;
    return 0;
}

static void split_free(kv_backend *b, void *dptr) {
    (void)b;
    if (!dptr || --split_live > 0) return;
    SPLIT_CLOSE(); /* the last one: every page back, zero when carved again */
    if (madvise(split_base, (split_top + SPLIT_BLOCK - 1) / SPLIT_BLOCK * SPLIT_BLOCK,
                MADV_DONTNEED))
        abort();
    split_top = 0;
}

static int split_map(kv_backend *b, const void **dptr, const void *host_src, size_t bytes,
                     kv_error *err) {
    void *p = NULL;
    int rc = split_alloc(b, &p, bytes, err);
    if (rc) return rc;
    SPLIT_OPEN();
    if (bytes) memcpy(p, host_src, bytes);
    SPLIT_CLOSE();
    *dptr = p;
    return 0;
}

static void split_unmap(kv_backend *b, const void *dptr) { split_free(b, (void *)dptr); }

/* every other op: the CPU backend's, with device memory open while it runs */
#define SPLIT_OP(name, params, args)                                                               \
    static int split_##name params {                                                               \
        SPLIT_OPEN();                                                                              \
        int rc = split_cpu.name args;                                                              \
        SPLIT_CLOSE();                                                                             \
        return rc;                                                                                 \
    }
SPLIT_OP(upload, (kv_backend * b, void *d, const void *s, size_t n, kv_error *e), (b, d, s, n, e))
SPLIT_OP(download, (kv_backend * b, void *d, const void *s, size_t n, kv_error *e), (b, d, s, n, e))
SPLIT_OP(zero, (kv_backend * b, void *d, size_t n, kv_error *e), (b, d, n, e))
SPLIT_OP(copy, (kv_backend * b, void *d, const void *s, size_t n, kv_error *e), (b, d, s, n, e))
SPLIT_OP(convert,
         (kv_backend * b, void *d, kv_dtype dt, const void *s, kv_dtype st, size_t n, kv_error *e),
         (b, d, dt, s, st, n, e))
SPLIT_OP(matmul,
         (kv_backend * b, float *o, const float *x, const void *W, kv_dtype wt, const float *bias,
          int T, int ni, int no, int acc, kv_error *e),
         (b, o, x, W, wt, bias, T, ni, no, acc, e))
SPLIT_OP(rmsnorm,
         (kv_backend * b, float *o, const float *x, const float *w, int T, int dim, float eps,
          kv_error *e),
         (b, o, x, w, T, dim, eps, e))
SPLIT_OP(rope,
         (kv_backend * b, float *x, int T, int nh, const int32_t *pos, const kv_rope_table *t,
          kv_error *e),
         (b, x, T, nh, pos, t, e))
SPLIT_OP(store_heads,
         (kv_backend * b, void *d, kv_dtype dt, size_t hp, const float *s, int T, int nh, int hd,
          kv_error *e),
         (b, d, dt, hp, s, T, nh, hd, e))
SPLIT_OP(attention,
         (kv_backend * b, float *o, const float *q, const void *k, const void *v, kv_dtype ct,
          int hr, int T, int p0, int S, int nh, int nkv, int hd, kv_attn_mask m, int w, int r,
          kv_error *e),
         (b, o, q, k, v, ct, hr, T, p0, S, nh, nkv, hd, m, w, r, e))
SPLIT_OP(swiglu,
         (kv_backend * b, float *h, const float *g, const float *u, int T, int n, kv_error *e),
         (b, h, g, u, T, n, e))
SPLIT_OP(embedding,
         (kv_backend * b, float *o, const float *t, int V, int dim, const int32_t *ids, int T,
          kv_error *e),
         (b, o, t, V, dim, ids, T, e))
SPLIT_OP(distill_kl,
         (kv_backend * b, double *l, float *ds, const float *s, const float *t, const float *w,
          int T, int V, float temp, float gs, kv_error *e),
         (b, l, ds, s, t, w, T, V, temp, gs, e))
SPLIT_OP(next_token_ce,
         (kv_backend * b, double *l, float *dl, const float *lg, const int32_t *tk, int B, int T,
          int V, float gs, kv_error *e),
         (b, l, dl, lg, tk, B, T, V, gs, e))
SPLIT_OP(mse,
         (kv_backend * b, double *l, float *ds, const float *s, const float *t, size_t n, float gs,
          kv_error *e),
         (b, l, ds, s, t, n, gs, e))
SPLIT_OP(matmul_backward,
         (kv_backend * b, float *dx, float *dW, float *db, const float *dout, const float *x,
          const float *W, int T, int ni, int no, kv_error *e),
         (b, dx, dW, db, dout, x, W, T, ni, no, e))
SPLIT_OP(rmsnorm_backward,
         (kv_backend * b, float *dx, float *dw, const float *dout, const float *x, const float *w,
          int T, int dim, float eps, kv_error *e),
         (b, dx, dw, dout, x, w, T, dim, eps, e))
SPLIT_OP(rope_backward,
         (kv_backend * b, float *dx, int T, int nh, const int32_t *pos, const kv_rope_table *t,
          kv_error *e),
         (b, dx, T, nh, pos, t, e))
SPLIT_OP(attention_backward,
         (kv_backend * b, float *dq, float *dk, float *dv, const float *dout, const float *q,
          const float *k, const float *v, int T, int p0, int S, int nh, int nkv, int hd,
          kv_attn_mask m, int w, kv_error *e),
         (b, dq, dk, dv, dout, q, k, v, T, p0, S, nh, nkv, hd, m, w, e))
SPLIT_OP(swiglu_backward,
         (kv_backend * b, float *dg, float *du, const float *dh, const float *g, const float *u,
          size_t n, kv_error *e),
         (b, dg, du, dh, g, u, n, e))
SPLIT_OP(sumsq, (kv_backend * b, double *s, const float *x, size_t n, kv_error *e), (b, s, x, n, e))
SPLIT_OP(scale, (kv_backend * b, float *x, float k, size_t n, kv_error *e), (b, x, k, n, e))
SPLIT_OP(add, (kv_backend * b, float *d, const float *s, size_t n, kv_error *e), (b, d, s, n, e))
SPLIT_OP(adamw,
         (kv_backend * b, float *w, const float *g, float *m, float *v, size_t n,
          const kv_adamw_step *s, kv_error *e),
         (b, w, g, m, v, n, s, e))
#undef SPLIT_OP

/* split_allocations(): device allocations still alive (0 after every owner freed its own) */
static int split_allocations(void) { return split_live; }

static int split_backend_init(kv_backend *b, int threads, kv_error *err) {
    int rc = kv_backend_cpu_init(b, threads, err);
    if (rc) return rc;
    split_cpu = *b->ops;
    split_ops = split_cpu;
    split_ops.alloc = split_alloc;
    split_ops.free = split_free;
    split_ops.map = split_map;
    split_ops.unmap = split_unmap;
#define SET(name) split_ops.name = split_##name
    SET(upload), SET(download), SET(zero), SET(copy), SET(convert), SET(store_heads);
    SET(matmul), SET(rmsnorm);
    SET(rope), SET(attention), SET(swiglu), SET(embedding), SET(distill_kl), SET(next_token_ce);
    SET(mse), SET(matmul_backward), SET(rmsnorm_backward), SET(rope_backward);
    SET(attention_backward), SET(swiglu_backward), SET(sumsq), SET(scale), SET(add), SET(adamw);
#undef SET
    b->ops = &split_ops;
    b->unified = 0;
    snprintf(b->name, sizeof b->name, "split (cpu kernels, memory closed to the host)");
    return 0;
}

#endif
