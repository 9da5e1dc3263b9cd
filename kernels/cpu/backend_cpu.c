/* The CPU backend (kernels/backend.h): host memory, the reference kernels of kernels.h, row-wise
 * kernels threaded over blocks of rows (rows.h), matrix-vector products for one token (gemv.h).
 * Device pointers are host pointers. */
#include "kernels/backend.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/arena.h"
#include "kernels/cpu/gemv.h"
#include "kernels/cpu/rows.h"

/* kv_arena's block: 64-byte aligned, zeroed; from 4 MiB on 2 MiB aligned with transparent huge
 * pages advised (the forward's activation block: prefill ran about 10% slower on 4 KiB pages) */
static int cpu_alloc(kv_backend *b, void **dptr, size_t bytes, kv_error *err) {
    (void)b;
    kv_arena a;
    int rc = kv_arena_init(&a, bytes ? bytes : 1, "cpu", err);
    *dptr = rc ? NULL : a.base;
    return rc;
}

static void cpu_free(kv_backend *b, void *dptr) {
    (void)b;
    free(dptr);
}

static int cpu_map(kv_backend *b, const void **dptr, const void *host_src, size_t bytes,
                   kv_error *err) {
    (void)b, (void)bytes, (void)err;
    *dptr = host_src;
    return 0;
}

static void cpu_unmap(kv_backend *b, const void *dptr) { (void)b, (void)dptr; }

static int cpu_copy(kv_backend *b, void *dst, const void *src, size_t bytes, kv_error *err) {
    (void)b, (void)err;
    if (bytes && dst != src) memcpy(dst, src, bytes);
    return 0;
}

static int cpu_zero(kv_backend *b, void *dst, size_t bytes, kv_error *err) {
    (void)b, (void)err;
    if (bytes) memset(dst, 0, bytes);
    return 0;
}

static int cpu_convert(kv_backend *b, void *dst, kv_dtype dst_type, const void *src,
                       kv_dtype src_type, size_t n, kv_error *err) {
    (void)b;
    if (kv_dtype_cast(dst, dst_type, src, src_type, n))
        return kv_fail(err, KV_EUNSUPPORTED, "cpu: convert %s -> %s is not supported",
                       kv_dtype_name(src_type), kv_dtype_name(dst_type));
    return 0;
}

/* rows of src [T, n_heads, head_dim] into a head-major cache: head g's row t at
 * (g head_pitch + t head_dim) elements of dst; items are (head, block of STORE_TOKENS tokens), so
 * a prompt's rows go over the kernel threads (each element is cast alone: the same bits) */
enum { STORE_TOKENS = 64 };

typedef struct {
    char *dst;
    kv_dtype dst_type;
    size_t head_pitch;
    const float *src;
    int T, n_heads, head_dim, t_blocks;
} store_job;

static void store_item(void *ctx, int item, int worker) {
    (void)worker;
    const store_job *j = ctx;
    const int g = item / j->t_blocks, t0 = item % j->t_blocks * STORE_TOKENS;
    const int t1 = j->T - t0 < STORE_TOKENS ? j->T : t0 + STORE_TOKENS;
    const size_t es = kv_dtype_size(j->dst_type), hd = (size_t)j->head_dim;
    for (int t = t0; t < t1; t++)
        (void)kv_dtype_cast(j->dst + ((size_t)g * j->head_pitch + (size_t)t * hd) * es, j->dst_type,
                            j->src + ((size_t)t * j->n_heads + g) * hd, KV_F32, hd);
}

static int cpu_store_heads(kv_backend *b, void *dst, kv_dtype dst_type, size_t head_pitch,
                           const float *src, int T, int n_heads, int head_dim, kv_error *err) {
    (void)b;
    if (dst_type != KV_F32 && dst_type != KV_BF16)
        return kv_fail(err, KV_EUNSUPPORTED, "cpu: store_heads into %s (F32 or BF16)",
                       kv_dtype_name(dst_type));
    store_job j = {.dst = dst,
                   .dst_type = dst_type,
                   .head_pitch = head_pitch,
                   .src = src,
                   .T = T,
                   .n_heads = n_heads,
                   .head_dim = head_dim,
                   .t_blocks = (T + STORE_TOKENS - 1) / STORE_TOKENS};
    const int items = n_heads * j.t_blocks;
    /* about 4 operations an element by the work estimate: one token's rows stay on the caller */
    kv_parallel_for(items, kv_parallel_workers(items, 4.0 * T * n_heads * (double)head_dim),
                    store_item, &j);
    return 0;
}

static int cpu_sync(kv_backend *b, kv_error *err) {
    (void)b, (void)err;
    return 0;
}

/* BF16 or F16 weights, T > 1: blocks of rows of W widened into F32 scratch (exact), then sgemm
 * of the block's outputs. Blocks of about HALF_BLOCK_FLOATS (1 MiB of F32, at least 128 rows):
 * prefill of 512 tokens ran as fast as with 16 MiB blocks of at least 256 rows on the 110M and
 * 1.1B shapes, in 1.7 MiB of scratch where those took 10.5 at 110M (docs/RESULTS.md, round 10).
 *
 * The work, (block, token) in block-major order, is cut into one contiguous part per worker of
 * about equal products, the cuts at multiples of KV_GEMM_ROW_ALIGN tokens within a block; each
 * worker widens the blocks its part touches into scratch of its own and runs their sgemm over
 * its tokens. So each block is widened and packed by OpenBLAS once (twice for a block two parts
 * share), on the core that reads it, with no wait between the widening and the product; the
 * tokens' rows are split as matmul.c splits them, so every output has the bits of one sgemm of
 * its block over all T tokens: the same at any thread count (not across block sizes). Each
 * thread's scratch is kept and grows as needed (no page faults per call; freed when the thread
 * ends). */
enum { HALF_BLOCK_FLOATS = 1 << 18, HALF_MIN_ROWS = 128, HALF_MAX_PARTS = 256 };

static _Thread_local float *half_scratch;
static _Thread_local size_t half_scratch_floats;
static pthread_key_t half_scratch_key; /* its destructor frees a thread's scratch at its end */
static int half_scratch_keyed;
static pthread_once_t half_scratch_once = PTHREAD_ONCE_INIT;

static void half_scratch_key_make(void) {
    half_scratch_keyed = pthread_key_create(&half_scratch_key, free) == 0;
}

/* the calling thread's scratch of at least `floats` floats, NULL when out of memory */
static float *half_space(size_t floats) {
    if (floats <= half_scratch_floats) return half_scratch;
    pthread_once(&half_scratch_once, half_scratch_key_make);
    float *p = realloc(half_scratch, sizeof(float) * floats);
    if (!p) return NULL;
    half_scratch = p;
    half_scratch_floats = floats;
    if (half_scratch_keyed) pthread_setspecific(half_scratch_key, p);
    return p;
}

typedef struct {
    float *out;
    const float *x, *bias;
    const uint16_t *W;
    kv_dtype w_type; /* KV_BF16 or KV_F16 */
    int T, n_in, n_out, rows, accumulate; /* rows: a block's (the last may be short) */
    int granules; /* KV_GEMM_ROW_ALIGN-token steps a block's tokens take: ceil(T / align) */
    int cut[HALF_MAX_PARTS + 1]; /* part i: units cut[i] .. cut[i+1] - 1, unit = block * granules
                                    + granule */
    atomic_int failed; /* a worker found no memory for its scratch */
} half_job;

/* the rows of W in block b (the last may be short) */
static int half_width(const half_job *j, int b) {
    return j->n_out - b * j->rows < j->rows ? j->n_out - b * j->rows : j->rows;
}

/* cut[0..parts] over the (block, granule) units: the products' sizes (block width x tokens)
 * before each cut as near as the granules allow to equal shares, never decreasing */
static void half_cuts(half_job *j, int parts) {
    const int blocks = (j->n_out + j->rows - 1) / j->rows, G = j->granules;
    const double total = (double)j->n_out * j->T;
    int b = 0;
    double before = 0; /* products of the blocks before b */
    j->cut[0] = 0;
    for (int i = 1; i < parts; i++) {
        const double target = total * i / parts;
        while (b < blocks - 1 && before + (double)half_width(j, b) * j->T <= target)
            before += (double)half_width(j, b++) * j->T;
        int g = (int)((target - before) / half_width(j, b) / KV_GEMM_ROW_ALIGN + 0.5);
        if (g > G) g = G;
        int unit = b * G + g;
        if (unit < j->cut[i - 1]) unit = j->cut[i - 1];
        j->cut[i] = unit;
    }
    j->cut[parts] = blocks * G;
}

static void half_part(void *ctx, int part, int worker) {
    (void)worker;
    half_job *j = ctx;
    const int G = j->granules, u0 = j->cut[part], u1 = j->cut[part + 1];
    if (u0 >= u1) return;
    const int n_in = j->n_in;
    for (int b = u0 / G; b <= (u1 - 1) / G; b++) {
        const int o0 = b * j->rows, nr = half_width(j, b);
        const int g0 = b == u0 / G ? u0 % G : 0, g1 = b == (u1 - 1) / G ? (u1 - 1) % G + 1 : G;
        const int t0 = g0 * KV_GEMM_ROW_ALIGN;
        const int t1 = g1 * KV_GEMM_ROW_ALIGN < j->T ? g1 * KV_GEMM_ROW_ALIGN : j->T;
        const size_t wide_floats = (size_t)nr * (size_t)n_in;
        float *wide = half_space(wide_floats + (j->accumulate ? (size_t)(t1 - t0) * nr : 0));
        if (!wide) {
            atomic_store(&j->failed, 1);
            return;
        }
        kv_dtype_cast(wide, KV_F32, j->W + (size_t)o0 * n_in, j->w_type, wide_floats);
        const float *x = j->x + (size_t)t0 * n_in, *bias = j->bias ? j->bias + o0 : NULL;
        if (!j->accumulate) { /* straight into out's columns o0 .. o0 + nr - 1 */
            kv_matmul_serial(j->out + (size_t)t0 * j->n_out + o0, j->n_out, x, wide, bias, t1 - t0,
                             n_in, nr);
            continue;
        }
        /* the block's product apart, then added: out + (x W^T + bias), as the F32 path rounds */
        float *prod = wide + wide_floats;
        kv_matmul_serial(prod, nr, x, wide, bias, t1 - t0, n_in, nr);
        for (int t = t0; t < t1; t++) {
            float *dst = j->out + (size_t)t * j->n_out + o0;
            const float *src = prod + (size_t)(t - t0) * nr;
            for (int o = 0; o < nr; o++) dst[o] += src[o];
        }
    }
}

static int matmul_half(float *out, const float *x, const uint16_t *W, kv_dtype w_type,
                       const float *bias, int T, int n_in, int n_out, int accumulate,
                       kv_error *err) {
    int rows = HALF_BLOCK_FLOATS / (n_in > 0 ? n_in : 1);
    if (rows < HALF_MIN_ROWS) rows = HALF_MIN_ROWS;
    if (rows > n_out) rows = n_out;
    half_job j = {.out = out,
                  .x = x,
                  .bias = bias,
                  .W = W,
                  .w_type = w_type,
                  .T = T,
                  .n_in = n_in,
                  .n_out = n_out,
                  .rows = rows,
                  .accumulate = accumulate,
                  .granules = (T + KV_GEMM_ROW_ALIGN - 1) / KV_GEMM_ROW_ALIGN};
    atomic_init(&j.failed, 0);
    const int units = (n_out + rows - 1) / rows * j.granules;
    int parts = kv_parallel_workers(units, 2.0 * T * (double)n_out * n_in);
    if (parts > HALF_MAX_PARTS) parts = HALF_MAX_PARTS;
    half_cuts(&j, parts);
    kv_parallel_for(parts, parts, half_part, &j);
    if (atomic_load(&j.failed))
        return kv_fail(err, KV_ENOMEM, "cpu: matmul %s [%d x %d]: out of memory",
                       kv_dtype_name(w_type), n_out, n_in);
    return 0;
}

static int cpu_matmul(kv_backend *b, float *out, const float *x, const void *W, kv_dtype w_type,
                      const float *bias, int T, int n_in, int n_out, int accumulate,
                      kv_error *err) {
    (void)b;
    const int half = w_type == KV_BF16 || w_type == KV_F16;
    if (w_type != KV_F32 && !half)
        return kv_fail(err, KV_EUNSUPPORTED, "cpu: matmul with %s weights (F32, BF16 or F16)",
                       kv_dtype_name(w_type));
    /* decode: own matrix-vector kernels (gemv.h) */
    if (T == 1) {
        kv_gemv(out, x, W, w_type, bias, n_in, n_out, accumulate);
        return 0;
    }
    if (half) return matmul_half(out, x, W, w_type, bias, T, n_in, n_out, accumulate, err);
    if (accumulate) kv_matmul_acc(out, x, W, bias, T, n_in, n_out);
    else kv_matmul(out, x, W, bias, T, n_in, n_out);
    return 0;
}

static int cpu_rmsnorm(kv_backend *b, float *out, const float *x, const float *w, int T, int dim,
                       float eps, kv_error *err) {
    (void)b, (void)err;
    rows_rmsnorm(out, x, w, T, dim, eps);
    return 0;
}

static int cpu_rope(kv_backend *b, float *x, int T, int n_heads, const int32_t *pos,
                    const kv_rope_table *table, kv_error *err) {
    (void)b, (void)err;
    rows_rope(x, T, n_heads, pos, table);
    return 0;
}

static int cpu_attention(kv_backend *b, float *out, const float *q, const void *k, const void *v,
                         kv_dtype cache_type, int head_rows, int T, int pos0, int S, int n_heads,
                         int n_kv_heads, int head_dim, kv_attn_mask mask, int window, int ring,
                         kv_error *err) {
    (void)b;
    if (cache_type != KV_F32 && cache_type != KV_BF16)
        return kv_fail(err, KV_EUNSUPPORTED, "cpu: attention over a %s cache (F32 or BF16)",
                       kv_dtype_name(cache_type));
    const int rc = kv_attention_cache(out, q, k, v, cache_type, head_rows, T, pos0, S, n_heads,
                                      n_kv_heads, head_dim, mask, window, ring);
    if (rc == KV_EINVAL)
        return kv_fail(err, rc,
                       "cpu: attention (T %d, S %d): window %d with a ring of %d rows, %d rows "
                       "per head",
                       T, S, window, ring, head_rows);
    if (rc) return kv_fail(err, rc, "cpu: attention (T %d, S %d): out of memory", T, S);
    return 0;
}

static int cpu_swiglu(kv_backend *b, float *h, const float *gate, const float *up, int T, int n,
                      kv_error *err) {
    (void)b, (void)err;
    rows_swiglu(h, gate, up, T, n);
    return 0;
}

static int cpu_embedding(kv_backend *b, float *out, const float *table, int vocab, int dim,
                         const int32_t *host_ids, int T, kv_error *err) {
    (void)b;
    return kv_embedding(out, table, vocab, dim, host_ids, T, err);
}

static int cpu_distill_kl(kv_backend *b, double *host_loss, float *dstudent, const float *student,
                          const float *teacher, const float *weights, int T, int V, float temp,
                          float grad_scale, kv_error *err) {
    (void)b, (void)err;
    double loss = kv_distill_kl(dstudent, student, teacher, weights, T, V, temp, grad_scale);
    if (host_loss) *host_loss = loss;
    return 0;
}

static int cpu_next_token_ce(kv_backend *b, double *host_loss, float *dlogits, const float *logits,
                             const int32_t *tokens, int B, int T, int V, float grad_scale,
                             kv_error *err) {
    (void)b, (void)err;
    double loss = kv_next_token_ce(dlogits, logits, tokens, B, T, V, grad_scale);
    if (host_loss) *host_loss = loss;
    return 0;
}

static int cpu_mse(kv_backend *b, double *host_loss, float *dstudent, const float *student,
                   const float *teacher, size_t n, float grad_scale, kv_error *err) {
    (void)b, (void)err;
    double loss = kv_mse(dstudent, student, teacher, n, grad_scale);
    if (host_loss) *host_loss = loss;
    return 0;
}

static int cpu_matmul_backward(kv_backend *b, float *dx, float *dW, float *dbias, const float *dout,
                               const float *x, const float *W, int T, int n_in, int n_out,
                               kv_error *err) {
    (void)b, (void)err;
    kv_matmul_backward(dx, dW, dbias, dout, x, W, T, n_in, n_out);
    return 0;
}

static int cpu_rmsnorm_backward(kv_backend *b, float *dx, float *dw, const float *dout,
                                const float *x, const float *w, int T, int dim, float eps,
                                kv_error *err) {
    (void)b, (void)err;
    kv_rmsnorm_backward(dx, dw, dout, x, w, T, dim, eps);
    return 0;
}

static int cpu_rope_backward(kv_backend *b, float *dx, int T, int n_heads, const int32_t *pos,
                             const kv_rope_table *table, kv_error *err) {
    (void)b, (void)err;
    kv_rope_backward(dx, T, n_heads, pos, table);
    return 0;
}

static int cpu_attention_backward(kv_backend *b, float *dq, float *dk, float *dv, const float *dout,
                                  const float *q, const float *k, const float *v, int T, int pos0,
                                  int S, int n_heads, int n_kv_heads, int head_dim,
                                  kv_attn_mask mask, int window, kv_error *err) {
    (void)b;
    int rc = kv_attention_backward(dq, dk, dv, dout, q, k, v, T, pos0, S, n_heads, n_kv_heads,
                                   head_dim, mask, window);
    if (rc == KV_EINVAL) return kv_fail(err, rc, "cpu: attention backward: window %d", window);
    if (rc) return kv_fail(err, rc, "cpu: attention backward (T %d, S %d): out of memory", T, S);
    return 0;
}

static int cpu_swiglu_backward(kv_backend *b, float *dgate, float *dup, const float *dh,
                               const float *gate, const float *up, size_t n, kv_error *err) {
    (void)b, (void)err;
    kv_swiglu_backward(dgate, dup, dh, gate, up, n);
    return 0;
}

static int cpu_sumsq(kv_backend *b, double *host_sumsq, const float *x, size_t n, kv_error *err) {
    (void)b, (void)err;
    *host_sumsq = kv_sumsq(*host_sumsq, x, n);
    return 0;
}

static int cpu_scale(kv_backend *b, float *x, float k, size_t n, kv_error *err) {
    (void)b, (void)err;
    kv_scale(x, k, n);
    return 0;
}

static int cpu_add(kv_backend *b, float *dst, const float *src, size_t n, kv_error *err) {
    (void)b, (void)err;
    kv_add(dst, src, n);
    return 0;
}

static int cpu_adamw(kv_backend *b, float *w, const float *g, float *m, float *v, size_t n,
                     const kv_adamw_step *s, kv_error *err) {
    (void)b, (void)err;
    kv_adamw(w, g, m, v, n, s->beta1, s->beta2, s->eps, s->weight_decay, s->t, s->lr);
    return 0;
}

static const kv_backend_ops cpu_ops = {
    .alloc = cpu_alloc,
    .free = cpu_free,
    .map = cpu_map,
    .unmap = cpu_unmap,
    .upload = cpu_copy,
    .download = cpu_copy,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .convert = cpu_convert,
    .store_heads = cpu_store_heads,
    .sync = cpu_sync,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .embedding = cpu_embedding,
    .distill_kl = cpu_distill_kl,
    .next_token_ce = cpu_next_token_ce,
    .mse = cpu_mse,
    .matmul_backward = cpu_matmul_backward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_backward = cpu_rope_backward,
    .attention_backward = cpu_attention_backward,
    .swiglu_backward = cpu_swiglu_backward,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .add = cpu_add,
    .adamw = cpu_adamw,
};

int kv_backend_cpu_init(kv_backend *b, int threads, kv_error *err) {
    (void)err;
    if (threads >= 1) kv_kernels_set_threads(threads);
    *b = (kv_backend){
        .ops = &cpu_ops, .device = KV_DEVICE_CPU, .unified = 1, .threads = kv_kernels_threads()};
    snprintf(b->name, sizeof b->name, "cpu (%d thread%s)", b->threads, b->threads == 1 ? "" : "s");
    return 0;
}
