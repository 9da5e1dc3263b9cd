/* Read-loop and GEMM baselines (baseline.h). */
#include "kernels/cpu/baseline.h"

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "base/arena.h"
#include "kernels/cpu/gemv.h"
#include "kernels/kernels.h"

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

enum { READ_ITEMS = 64 }; /* parts of an owned buffer handed to the threads */
#define READ_CHUNK_WORDS ((size_t)1 << 17) /* a caller's span is read in items of <= 1 MiB */

typedef struct {
    const uint64_t *p;
    size_t n; /* words, a multiple of 16 except in an owned buffer's last part */
} read_chunk;

typedef struct {
    read_chunk *chunks;
    int n_chunks;
    uint64_t *sums; /* [n_chunks]: keeps the loads */
} read_job;

typedef uint64_t u64x4 __attribute__((vector_size(32)));

/* one chunk's sum; inlined into a portable and an AVX2 build of the item (32-byte adds in one
 * instruction rather than two SSE2 halves), picked at run time */
static inline __attribute__((always_inline)) void read_part(read_job *j, int item) {
    const uint64_t *p = j->chunks[item].p;
    const size_t n = j->chunks[item].n;
    const u64x4 *v = (const u64x4 *)p;
    u64x4 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    const size_t blocks = n / 16;
    for (size_t i = 0; i < blocks; i++) {
        /* as the gemv loops do: a read loop without it understated what decode reaches */
        __builtin_prefetch((const char *)(v + 4 * i) + KV_STREAM_PREFETCH_BYTES);
        __builtin_prefetch((const char *)(v + 4 * i) + KV_STREAM_PREFETCH_BYTES + 64);
        s0 += v[4 * i];
        s1 += v[4 * i + 1];
        s2 += v[4 * i + 2];
        s3 += v[4 * i + 3];
    }
    const u64x4 s = s0 + s1 + s2 + s3;
    uint64_t sum = s[0] + s[1] + s[2] + s[3];
    for (size_t i = blocks * 16; i < n; i++) sum += p[i];
    j->sums[item] = sum;
}

static void read_item(void *ctx, int item, int worker) {
    (void)worker;
    read_part(ctx, item);
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2"))) static void read_item_avx2(void *ctx, int item, int worker) {
    (void)worker;
    read_part(ctx, item);
}
#else
#define read_item_avx2 read_item
#endif

struct kv_read_loop {
    kv_arena arena; /* the owned buffer (empty over a caller's spans) */
    read_job job;
    size_t bytes; /* one sweep's */
    int workers;
    void (*item_fn)(void *, int, int);
};

/* rl with room for n_chunks chunks, the threads and the variant set */
static int read_loop_new(kv_read_loop **out, int n_chunks, kv_error *err) {
    kv_read_loop *rl = calloc(1, sizeof *rl);
    if (rl) {
        rl->job.chunks = calloc((size_t)(n_chunks > 0 ? n_chunks : 1), sizeof *rl->job.chunks);
        rl->job.sums = calloc((size_t)(n_chunks > 0 ? n_chunks : 1), sizeof *rl->job.sums);
    }
    if (!rl || !rl->job.chunks || !rl->job.sums) {
        kv_read_loop_free(rl);
        return kv_fail(err, KV_ENOMEM, "read loop: out of memory");
    }
    rl->workers = kv_kernels_threads() < READ_ITEMS ? kv_kernels_threads() : READ_ITEMS;
    rl->item_fn = kv_gemv_isa_supported(KV_GEMV_AVX2) ? read_item_avx2 : read_item;
    *out = rl;
    return 0;
}

int kv_read_loop_init(kv_read_loop **out, size_t bytes, kv_error *err) {
    *out = NULL;
    kv_read_loop *rl;
    int rc = read_loop_new(&rl, READ_ITEMS, err);
    if (rc) return rc;
    const size_t n = bytes / sizeof(uint64_t);
    if ((rc = kv_arena_init(&rl->arena, n * sizeof(uint64_t), "read loop", err))) {
        kv_read_loop_free(rl);
        return rc;
    }
    uint64_t *p = (uint64_t *)rl->arena.base;
    for (size_t i = 0; i < n; i++) p[i] = i;
    for (int item = 0; item < READ_ITEMS; item++) { /* part boundaries on 32-word multiples */
        const size_t a = (n * (size_t)item / READ_ITEMS) & ~(size_t)31,
                     b = item == READ_ITEMS - 1
                             ? n
                             : (n * (size_t)(item + 1) / READ_ITEMS) & ~(size_t)31;
        rl->job.chunks[item] = (read_chunk){p + a, b - a};
    }
    rl->job.n_chunks = READ_ITEMS;
    rl->bytes = n * sizeof(uint64_t);
    *out = rl;
    return 0;
}

/* the whole 128-byte blocks of [p, p + bytes): its first word and their count (16 words each) */
static size_t span_blocks(const void *p, size_t bytes, const uint64_t **first) {
    const uintptr_t a = ((uintptr_t)p + 31) & ~(uintptr_t)31, end = (uintptr_t)p + bytes;
    *first = (const uint64_t *)a;
    return end > a ? (end - a) / 128 : 0;
}

int kv_read_loop_init_spans(kv_read_loop **out, const kv_span *spans, int n_spans, kv_error *err) {
    *out = NULL;
    const size_t per_chunk = READ_CHUNK_WORDS / 16; /* blocks */
    size_t n_chunks = 0;
    for (int i = 0; i < n_spans; i++) {
        const uint64_t *first;
        n_chunks += (span_blocks(spans[i].p, spans[i].bytes, &first) + per_chunk - 1) / per_chunk;
    }
    if (n_chunks > (size_t)INT32_MAX)
        return kv_fail(err, KV_EINVAL, "read loop: %zu chunks, too many", n_chunks);
    kv_read_loop *rl;
    int rc = read_loop_new(&rl, (int)n_chunks, err);
    if (rc) return rc;
    for (int i = 0; i < n_spans; i++) {
        const uint64_t *first;
        size_t left = span_blocks(spans[i].p, spans[i].bytes, &first);
        for (; left > 0; first += 16 * per_chunk) {
            const size_t take = left < per_chunk ? left : per_chunk;
            rl->job.chunks[rl->job.n_chunks++] = (read_chunk){first, 16 * take};
            rl->bytes += 128 * take;
            left -= take;
        }
    }
    *out = rl;
    return 0;
}

size_t kv_read_loop_bytes(const kv_read_loop *rl) { return rl->bytes; }

uint64_t kv_read_loop_sum(const kv_read_loop *rl) {
    uint64_t sum = 0;
    for (int i = 0; i < rl->job.n_chunks; i++) sum += rl->job.sums[i];
    return sum;
}

double kv_read_loop_run(kv_read_loop *rl, int sweeps) {
    const double t = seconds();
    for (int s = 0; s < sweeps; s++)
        kv_parallel_for(rl->job.n_chunks, rl->workers, rl->item_fn, &rl->job);
    const double dt = seconds() - t;
    return dt > 0 ? (double)sweeps * (double)rl->bytes / dt / 1e9 : 0.0;
}

double kv_read_loop_best(kv_read_loop *rl, int passes) {
    double best = 0;
    for (int r = 0; r < passes; r++) {
        const double g = kv_read_loop_run(rl, 1);
        if (g > best) best = g;
    }
    return best;
}

void kv_read_loop_free(kv_read_loop *rl) {
    if (!rl) return;
    kv_arena_free(&rl->arena);
    free(rl->job.chunks);
    free(rl->job.sums);
    free(rl);
}

int kv_read_loop_gbps(double *gbps, size_t bytes, int passes, kv_error *err) {
    kv_read_loop *rl;
    int rc = kv_read_loop_init(&rl, bytes, err);
    if (rc) return rc;
    *gbps = kv_read_loop_best(rl, passes);
    kv_read_loop_free(rl);
    return 0;
}

int kv_gemm_gflops(double *gflops, int n, int passes, kv_error *err) {
    const size_t nn = (size_t)n * (size_t)n;
    float *x = malloc(sizeof(float) * nn), *w = malloc(sizeof(float) * nn),
          *out = malloc(sizeof(float) * nn);
    if (!x || !w || !out) {
        free(x), free(w), free(out);
        return kv_fail(err, KV_ENOMEM, "gemm baseline [%d x %d]: out of memory", n, n);
    }
    for (size_t i = 0; i < nn; i++) {
        x[i] = (float)(i % 97) * 0.01f;
        w[i] = (float)(i % 89) * 0.01f;
    }
    double best = 0;
    for (int r = 0; r < passes; r++) {
        const double t = seconds();
        kv_matmul(out, x, w, NULL, n, n, n);
        const double dt = seconds() - t;
        if (dt > 0 && 2.0 * (double)nn * n / dt / 1e9 > best)
            best = 2.0 * (double)nn * n / dt / 1e9;
    }
    free(x), free(w), free(out);
    *gflops = best;
    return 0;
}
